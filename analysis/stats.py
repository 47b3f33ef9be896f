"""The one place for statistics over seeds: mean, SEM, t intervals, and the verdict rule.

Every family's tables, figures and findings use these; no other analysis module computes a SEM,
an interval or a verdict. The rule (RULE) is stated once and printed once in a report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy

# Seeds, and fields that do not change results: never a reason to keep rows apart (a family
# passes its own as `ignore`).
NOT_SETTINGS = {"seed", "eval_seed", "data_root", "download", "device"}


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Only finished trials: diverged/error rows carry no meaningful accuracy."""
    if "status" not in df.columns:
        return df
    return df[df["status"] == "ok"]


def summarize(df: pd.DataFrame, by: list[str], metric: str = "accuracy") -> pd.DataFrame:
    """One row per setting in `by`: mean, sem (std ddof=1 / sqrt(count); NaN for one seed), count."""
    by = list(by)
    rows = ok_rows(df)
    rows = rows[rows[metric].notna()]
    if rows.empty:
        return pd.DataFrame(columns=[*by, "mean", "sem", "count"])
    values = rows[metric].astype(float)
    g = values.groupby([rows[c] for c in by], dropna=False)
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "count": g.count()})
    out["sem"] = np.where(out["count"] > 1, out["std"] / np.sqrt(out["count"]), np.nan)
    return out.drop(columns="std").reset_index()[[*by, "mean", "sem", "count"]]


def spread(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """summarize() plus the per-seed spread (std, min, max) of `metric` per setting in `by`."""
    rows = ok_rows(df)
    rows = rows[rows[metric].notna()]
    s = summarize(rows, by, metric)
    if rows.empty or not by:
        return s
    g = rows[metric].astype(float).groupby([rows[c] for c in by], dropna=False)
    extra = pd.DataFrame({"std": g.std(ddof=1), "min": g.min(), "max": g.max()}).reset_index()
    return s.merge(extra, on=by, how="left")


def _norm(s) -> str:
    return str(s).lower().replace("-", "").replace("_", "")


# Embedded subsets of a paper's data set: a number on one sits beside the paper's with the one
# remaining difference named (protocol_caveats), never silently as the same experiment.
SUBSETS = {"mnist5k": ("mnist", "a 5,000-image subset of MNIST's training set (4,000 train / 1,000 test images), "
                                "not MNIST's 60,000 / 10,000: accuracies are on another test set")}


def _same(value, want) -> bool:
    if not isinstance(want, str):
        return _close(value, want)
    parent = SUBSETS.get(_norm(value), (None,))[0]
    return _norm(value) == _norm(want) or (parent is not None and _norm(parent) == _norm(want))


def protocol_differences(df: pd.DataFrame, protocol: dict) -> list[str]:
    """The comparability rule: a published number sits beside ours only when every field that
    matters has the paper's value in every row (data-set names compared without case, '-', '_';
    an embedded subset of the paper's data set counts as it, and protocol_caveats names it).
    Returns what differs or is not recorded ("image_size=8 (paper 32)"); empty means comparable."""
    out = []
    for field, want in protocol.items():
        if field not in df.columns or df[field].isna().all():
            out.append(f"{field} not recorded (paper {want})")
            continue
        have = sorted({str(v) for v in df[field].dropna().unique()})
        ok = all(_same(v, want) for v in df[field].dropna())
        if not ok or df[field].isna().any():
            out.append(f"{field}={'/'.join(have)} (paper {PAPER_WORDS.get((field, want), want)})")
    return out


# A protocol value that reads wrong as a bare number: steps=0 is "train by epochs", not zero steps.
PAPER_WORDS = {("steps", 0): "none: it trains by epochs"}


def protocol_caveats(df: pd.DataFrame, protocol: dict) -> list[str]:
    """What still differs where protocol_differences finds none: an embedded subset in place of
    the paper's data set ("dataset=mnist5k: a 5,000-image subset ...")."""
    out = []
    for field, want in protocol.items():
        if field in df.columns and isinstance(want, str):
            for v in sorted({str(v) for v in df[field].dropna().unique()}):
                if _norm(v) != _norm(want) and _norm(v) in SUBSETS:
                    out.append(f"{field}={v}: {SUBSETS[_norm(v)][1]}")
    return out


def _close(value, want) -> bool:
    try:
        return abs(float(value) - float(want)) < 1e-9
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Never pool: a table, figure or finding keeps apart each configuration that varies.


def config_columns(d: pd.DataFrame, known=(), ignore=()) -> list[str]:
    """The configuration columns of the rows: named by the rows themselves (`config_columns`),
    plus `known` ones for hand-made or older frames; seeds and NOT_SETTINGS excluded."""
    names = list(known)
    if "config_columns" in d.columns:
        for text in d["config_columns"].dropna().unique():
            names += [n for n in json.loads(text) if n not in names]
    return [n for n in names if n in d.columns and n not in NOT_SETTINGS and n not in ignore]


def one_setting(d: pd.DataFrame, keep, preferred: dict | None = None, known=(), ignore=()) -> tuple[pd.DataFrame, dict]:
    """Rows of one configuration apart from the columns in `keep`: each other configuration
    column that varies is fixed to its preferred (or first) value. Returns (rows, what was fixed)
    so that the figure or table can say so; the seeds are what remains to average over."""
    preferred = preferred or {}
    fixed = {}
    for col in sorted(config_columns(d, known, ignore), key=lambda c: (c not in preferred, c)):
        if col in keep or col not in d.columns or d[col].nunique(dropna=False) < 2:
            continue
        values = list(d[col].dropna().unique())
        pick = preferred[col] if preferred.get(col) in values else sorted(values, key=str)[0]
        d = d[d[col] == pick]
        fixed[col] = pick
    return d, fixed


def fixed_text(fixed: dict) -> str:
    return ("fixed: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fixed.items())
            if fixed else "")


# ---------------------------------------------------------------------------------------------
# Mean ± SEM over seeds, and its text


def mean_sem(values) -> tuple[float, float, int]:
    """(mean, SEM, count) of the finite values; SEM is NaN for fewer than two."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), 0
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), sem, len(v)


def number(value, digits: int = 3) -> str:
    """One number as a reader wants it: 'n/a' for a missing or non-finite value, an integer as an
    integer, else `digits` significant digits (scientific only below 1e-3 or from 1e6 on)."""
    if value is None or isinstance(value, str):
        return "n/a" if value in (None, "") else value
    v = float(value)
    if not np.isfinite(v):
        return "n/a"
    if isinstance(value, (int, np.integer)) or (v == int(v) and 1 <= abs(v) < 1e6):
        return f"{int(value):d}"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 seed', '3 seeds' ('1 entry', '2 entries' with `many`)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def fmt(mean, sem, scale: float = 100, digits: int = 2, unit: str = "") -> str:
    """'mean ± SEM' (times `scale`, percent by default) with `unit` after the numbers; one seed has
    no SEM: '76.67% (1 seed)'. A missing mean is 'n/a'."""
    if mean is None or not np.isfinite(float(mean)):
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    if sem is None or not np.isfinite(float(sem)):
        return text + unit + " (1 seed)"
    return text + f" ± {sem * scale:.{digits}f}" + unit


def spread_cell(values, sig: int = 3) -> str:
    """Mean ± SEM over seeds (fmt) of a measurement whose size varies by orders of magnitude,
    the mean to `sig` significant digits and the SEM to two; scientific below 1e-3 and above 1e4;
    the non-finite are counted."""
    v = np.asarray(values, dtype=float)
    bad = int((~np.isfinite(v)).sum())
    m, s, n = mean_sem(v)
    note = f" ({bad} non-finite)" if bad else ""
    if not n:
        return "n/a" + note
    if m == 0 or 1e-3 <= abs(m) < 1e4:
        digits = 0 if m == 0 else max(0, min(8, sig - 1 - math.floor(math.log10(abs(m)))))
        if np.isfinite(s) and s > 0:  # and the SEM to two significant digits
            digits = max(digits, min(8, 1 - math.floor(math.log10(s))))
        return fmt(m, s, scale=1, digits=digits) + note
    # fmt's form, with the mean in scientific notation
    return f"{m:.{sig - 1}e}" + (f" ± {s:.1e}" if np.isfinite(s) else " (1 seed)") + note


CHANCE_MARGIN = 0.02  # an accuracy within this of chance (1 / classes) is flagged "at chance": a failed run


def cell(values, scale: float = 100, digits: int = 2, count: bool = False, chance: float | None = None,
         unit: str = "") -> str:
    """fmt() of the values' mean and SEM, with '(n=k)' when `count`, and ' [at chance]' when the
    mean is within CHANCE_MARGIN of `chance` or below it (a network that learned nothing)."""
    m, s, n = mean_sem(values)
    flag = " [at chance]" if chance is not None and n and m <= chance + CHANCE_MARGIN else ""
    return fmt(m, s, scale, digits, unit) + (f" (n={n})" if count and n > 1 else "") + flag


# ---------------------------------------------------------------------------------------------
# The verdict rule: one for every family

CONFIDENCE = 0.95
MARGIN = 0.01  # a non-inferiority claim's default margin: one point of accuracy
MAX_SEEDS = 1000  # beyond this, "what would decide it" says "more than MAX_SEEDS seeds"
RULE = ("Verdict rule: a claim's difference is estimated over seeds (paired differences of the seeds "
        "both arms share, else Welch's two-sample estimate) with a 95% t interval. It **holds** only "
        "when the interval excludes zero in the claimed direction; it **does not hold** when the "
        "interval excludes zero in the opposite direction (or, for a claim of a given size, lies "
        "wholly below that size); otherwise it is **undecided**, with the number of seeds at which "
        "the observed spread would decide it. A non-inferiority claim (\"keeps accuracy\") states "
        "its margin and holds only when the interval's lower end is above minus the margin. A claim "
        "over several cells (a curve over eps) is tested per cell. p is two-sided, against the "
        "value the interval is compared with. A claim about what an arm learned is **inert**, not "
        "undecided, when that arm did not do it (a noise generator that learned no noise).")


@dataclass(frozen=True)
class Estimate:
    """A difference (or a mean) over seeds: its mean, standard error, degrees of freedom.

    `sd` and `extra_se` let the rule project the standard error to more seeds:
    se(k) = sqrt(sd^2 / k + extra_se^2) (paired or one-sample; Welch: `sd` is the per-seed spread
    of one arm minus the other with equal arms)."""

    mean: float
    se: float
    dof: float
    n: int
    paired: bool
    sd: float
    extra_se: float = 0.0
    dropped: int = 0  # seeds of one arm only, left out of a paired difference

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        if self.n < 2 or not np.isfinite(self.se):
            return float("nan"), float("nan")
        half = _t_crit(self.dof, confidence) * self.se
        return self.mean - half, self.mean + half

    def p(self, null: float = 0.0) -> float:
        """Two-sided p of the t test of mean = null."""
        if self.n < 2 or not np.isfinite(self.se):
            return float("nan")
        if self.se == 0:
            return 0.0 if self.mean != null else 1.0
        return float(2 * _scipy.t.sf(abs(self.mean - null) / self.se, self.dof))

    def text(self, scale: float = 100, unit: str = " points", null: float = 0.0) -> str:
        """'+2.31 points, 95% CI [+0.52, +4.10], p = 0.033, 3 paired seeds'."""
        seeds = f"{self.n} {'paired ' if self.paired else ''}seed{'s' if self.n != 1 else ''}"
        if self.dropped:
            seeds += f" ({self.dropped} unpaired left out)"
        if self.n < 2 or not np.isfinite(self.se):
            return f"{self.mean * scale:+.2f}{unit}, {seeds}"
        lo, hi = self.interval()
        return (f"{self.mean * scale:+.2f}{unit}, 95% CI [{lo * scale:+.2f}, {hi * scale:+.2f}], "
                f"{_p_text(self.p(null))}, {seeds}")


def _t_crit(dof: float, confidence: float = CONFIDENCE) -> float:
    return float(_scipy.t.ppf(0.5 + confidence / 2, dof))


def _p_text(p: float) -> str:
    return "p n/a" if not np.isfinite(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def estimate(values, extra_se: float = 0.0) -> Estimate:
    """One-sample estimate over seeds (e.g. differences already paired by the caller)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    se = math.hypot(sd / math.sqrt(n), extra_se) if n > 1 else float("nan")
    return Estimate(float(v.mean()) if n else float("nan"), se, n - 1, n, False, sd, extra_se)


def difference(a: pd.Series, b: pd.Series, extra_se: float = 0.0) -> Estimate:
    """a - b over seeds; `a` and `b` are indexed by seed. Paired on the seeds both arms share
    (when at least two do), else Welch's unpaired estimate with Welch-Satterthwaite's degrees of
    freedom. `extra_se` (e.g. a fixed test set's error) is added in quadrature."""
    a, b = a.astype(float).dropna(), b.astype(float).dropna()
    shared = sorted(set(a.index) & set(b.index))
    if len(shared) >= 2 or (len(shared) == 1 and len(a) == len(b) == 1):
        d = a.loc[shared] - b.loc[shared]
        e = estimate(d.to_numpy(), extra_se)
        return Estimate(e.mean, e.se, e.dof, e.n, True, e.sd, extra_se,
                        dropped=len(set(a.index) ^ set(b.index)))
    na, nb = len(a), len(b)
    mean = float(a.mean() - b.mean()) if na and nb else float("nan")
    if na < 2 or nb < 2:
        return Estimate(mean, float("nan"), 0, min(na, nb), False, float("nan"), extra_se)
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb + extra_se ** 2)
    dof = (va + vb) ** 2 / ((va ** 2 / (na - 1) if na > 1 else 0) + (vb ** 2 / (nb - 1) if nb > 1 else 0)) \
        if va + vb > 0 else float(na + nb - 2)
    sd = math.sqrt(a.var(ddof=1) + b.var(ddof=1))  # one seed more in each arm
    return Estimate(mean, se, dof, min(na, nb), False, sd, extra_se)


def compare(d: pd.DataFrame, arm: str, a, b, metric: str = "accuracy", seed: str = "seed",
            extra_se: float = 0.0) -> Estimate:
    """difference() of `metric` between the rows whose `arm` column is `a` and those where it is
    `b` (each seed's rows of an arm averaged first: one cell, never a band of cells)."""
    per = d[d[arm].isin([a, b])].groupby([arm, seed])[metric].mean()
    pick = lambda k: per.xs(k, level=arm) if k in per.index.get_level_values(arm) else pd.Series(dtype=float)
    return difference(pick(a), pick(b), extra_se)


@dataclass(frozen=True)
class Verdict:
    """'holds', 'does not hold' or 'undecided', why, and the estimate it read."""

    word: str
    reason: str
    estimate: Estimate | None = None

    def __str__(self) -> str:
        return f"{self.word} ({self.reason})" if self.reason else self.word

    @property
    def holds(self) -> bool:
        return self.word == "holds"


def verdict(est: Estimate, direction: int = 1, margin: float | None = None, size: float | None = None,
            blocked: str = "", scale: float = 100, unit: str = " points", inert: str = "") -> Verdict:
    """The one rule (RULE). `direction` +1 claims a > b, -1 claims a < b. `margin` makes it a
    non-inferiority claim: a is not worse than b by more than `margin` (in the claimed direction).
    `size` is the paper's own gap (positive, in the claimed direction). `blocked` is a reason the
    comparison cannot decide anything (a failed fairness check, an unconverged run). `inert` says
    why the arm under test did not do what the claim is about (a generator that learned no
    noise): the verdict is then "inert", its own word, never "undecided" or "holds"."""
    if inert:
        return Verdict("inert", inert, est)
    if blocked:
        return Verdict("undecided", blocked, est)
    if est.n < 2 or not np.isfinite(est.se):
        return Verdict("undecided", f"{est.n} seed{'s' if est.n != 1 else ''} per arm gives no interval; "
                                    "run at least 3 seeds", est)
    lo, hi = est.interval()
    # In the claimed direction: the effect is direction * (a - b).
    lo, hi = (lo, hi) if direction > 0 else (-hi, -lo)
    mean = direction * est.mean
    show = lambda x: f"{x * scale:+.2f}{unit}"
    if est.se == 0 and est.mean == 0:
        return Verdict("undecided", "the two arms are equal on every seed: the setting changed nothing", est)
    if margin is not None:
        null = -abs(margin)
        if lo > null:
            return Verdict("holds", f"lower end {show(lo)} above -{abs(margin) * scale:g}{unit}", est)
        if hi < null:
            return Verdict("does not hold", f"the whole interval is below -{abs(margin) * scale:g}{unit}", est)
        return Verdict("undecided", f"the interval reaches below -{abs(margin) * scale:g}{unit}; "
                                    + _seeds_to_decide(est, mean, null), est)
    if hi < 0:
        return Verdict("does not hold", "the interval excludes zero in the opposite direction", est)
    if size is not None and hi < abs(size):
        return Verdict("does not hold", f"the interval lies below the paper's gap of {show(abs(size))}", est)
    if lo > 0:
        return Verdict("holds", "the interval excludes zero in the claimed direction", est)
    return Verdict("undecided", "the interval includes zero; " + _seeds_to_decide(est, mean, 0.0), est)


def _seeds_to_decide(est: Estimate, mean: float, null: float) -> str:
    """How many seeds at the observed spread (and mean) would move the interval off `null`."""
    distance = abs(mean - null)
    if not np.isfinite(est.sd) or distance == 0:
        return "no number of seeds decides a mean of exactly that value"
    for k in range(est.n + 1, MAX_SEEDS + 1):
        se = math.hypot(est.sd / math.sqrt(k), est.extra_se)
        if _t_crit(k - 1) * se < distance:
            return f"about {k} seeds at this spread would decide it"
    if est.extra_se * _t_crit(MAX_SEEDS) >= distance:
        return "no number of seeds decides it: the test set's error alone is too large"
    return f"more than {MAX_SEEDS} seeds at this spread"


# ---------------------------------------------------------------------------------------------
# A fixed test set's share of a difference's error, and counts in words


def image_se(p: float, q: float, images, correct_a=None, correct_b=None) -> tuple[float, bool]:
    """The standard error that a fixed test set of `images` images adds to a difference of two
    mean accuracies (pass it to difference() as `extra_se`); returns (se, paired).

    Paired when `correct_a` and `correct_b` are given: arrays seeds x images of 1 where a model
    was right (the same images in the same order, the seeds aligned): per image, the mean over
    seeds of (a right) - (b right); its std over images / sqrt(images). Otherwise the binomial
    error of a difference of the accuracies `p` and `q` as if unpaired,
    sqrt((p(1-p) + q(1-q)) / images): an upper bound on the paired error unless the two models
    tend to fail on different images. NaN when the number of images is not known."""
    if correct_a is not None and correct_b is not None:
        a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
        if a.ndim == 2 and a.shape == b.shape and a.shape[1] >= 2:
            per_image = (a - b).mean(0)
            return float(per_image.std(ddof=1) / math.sqrt(per_image.size)), True
    try:
        images = float(images)
    except (TypeError, ValueError):
        return float("nan"), False
    if not np.isfinite(images) or images <= 0:
        return float("nan"), False
    return float(math.sqrt((p * (1 - p) + q * (1 - q)) / images)), False


def seed_count(k: int) -> str:
    """'1 seed', '3 seeds'."""
    return f"{k} seed" + "s" * (k != 1)

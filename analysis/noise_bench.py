"""noise_bench's report section: which kind of noise helps against which problem (issue 36).

One table: a row per arm (method and how its knob was set), a column per problem: clean accuracy,
each shift (accuracy under it, each seed's mean over the shift's strengths), CW-L2 and training
under 40% label noise (clean test accuracy). A cell is the mean over seeds with the 95% t
interval of that mean (stats.estimate); the best arm of a column is marked only where the verdict
rule (stats.compare, paired on shared seeds, then stats.verdict) separates it from the runner-up.
One figure: accuracy against strength, a panel per shift, one line per arm. The "which noise for which
problem" paragraph is written from the same comparisons, "undecided" where they do not separate.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import stats
from analysis.figures import draw, lines, need, plt, save

FAMILY = "noise_bench"
SHIFTS = ("gaussian_noise", "impulse_noise", "blur", "contrast", "rotation", "fgsm")
NAMES = {"clean": "clean", "gaussian_noise": "Gaussian noise", "impulse_noise": "impulse noise", "blur": "blur",
         "contrast": "contrast", "rotation": "rotation", "fgsm": "FGSM", "cw_l2": "CW-L2",
         "label_noise": "label noise"}
POINT = ["arm", "tuning", "label_noise", "shift", "strength"]  # what the table keeps apart; other config is fixed
BEST = " (best)"


def _rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The ok rows of one configuration apart from the bench's own axes, each with its arm's name."""
    d = stats.ok_rows(df)
    d = d[d["accuracy"].notna()] if "accuracy" in d.columns else d.iloc[0:0]
    d, fixed = stats.one_setting(d, keep=POINT, ignore=("label",))
    name = d["label"] if "label" in d.columns and d["label"].astype(str).ne("").all() else \
        d["arm"].astype(str) + " (" + d["tuning"].astype(str) + ")"
    return d.assign(arm_name=name.astype(str)), fixed


def per_seed(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(long frame arm_name, problem, seed, value, fixed config): a seed's accuracy per problem;
    a shift's value is the seed's mean over the shift's strengths (each strength one test)."""
    d, fixed = _rows(df)
    clean_trained = d[d["label_noise"] == 0]
    parts = []
    for problem in ("clean", *SHIFTS, "cw_l2"):
        rows = clean_trained[clean_trained["shift"] == problem]
        parts.append(rows.groupby(["arm_name", "arm", "seed"])["accuracy"].mean().rename("value").reset_index()
                     .assign(problem=problem))
    noisy = d[(d["label_noise"] > 0) & (d["shift"] == "clean")]
    if not noisy.empty:
        level = sorted(noisy["label_noise"].unique())[-1]
        noisy = noisy[noisy["label_noise"] == level]
        parts.append(noisy.groupby(["arm_name", "arm", "seed"])["accuracy"].mean().rename("value").reset_index()
                     .assign(problem="label_noise"))
        fixed = fixed | {"label noise column": f"trained at {level:g}"}
    return pd.concat(parts, ignore_index=True), fixed


def separation(long: pd.DataFrame, problem: str) -> dict | None:
    """The best arm of a problem by mean and the verdict of best > runner-up, the runner-up being the
    best of the OTHER methods (the same method's other tuning says nothing about which noise);
    None with fewer than two methods."""
    d = long[long["problem"] == problem]
    means = d.groupby("arm_name")["value"].mean().sort_values(ascending=False)
    method = d.drop_duplicates("arm_name").set_index("arm_name")["arm"]
    best = means.index[0] if len(means) else None
    others = [name for name in means.index if method[name] != method.get(best)]
    if not others:
        return None
    runner = others[0]
    est = stats.compare(d, "arm_name", best, runner, metric="value")
    return {"best": best, "runner": runner, "estimate": est, "verdict": stats.verdict(est, direction=1)}


def _cell(values) -> str:
    est = stats.estimate(values)
    if not est.n:
        return "n/a"
    lo, hi = est.interval()
    interval = f" [{lo * 100:.1f}, {hi * 100:.1f}]" if np.isfinite(lo) else f" ({stats.seed_count(est.n)})"
    return f"{est.mean * 100:.1f}{interval}"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Arms x problems: mean accuracy % over seeds [95% t interval of the mean], the best marked
    where the rule separates it from the runner-up. attrs: `separations` (problem -> separation),
    `fixed` (configuration held fixed)."""
    long, fixed = per_seed(df)
    if long.empty:
        return pd.DataFrame()
    problems = [p for p in ("clean", *SHIFTS, "cw_l2", "label_noise") if (long["problem"] == p).any()]
    out = pd.DataFrame(index=sorted(long["arm_name"].unique()))
    out.index.name = "arm"
    seps = {}
    for p in problems:
        d = long[long["problem"] == p]
        out[NAMES[p]] = [_cell(d[d["arm_name"] == a]["value"]) for a in out.index]
        seps[p] = separation(long, p)
        if seps[p] is not None and seps[p]["verdict"].holds:
            out.loc[seps[p]["best"], NAMES[p]] += BEST
    out = out.fillna("n/a")
    out.attrs = {"separations": seps, "fixed": fixed}
    return out


def which_noise(df: pd.DataFrame) -> list[str]:
    """One sentence per problem, from the table's comparisons: the arm the rule separates, or
    'undecided' between the two best with the rule's reason."""
    t = table(df)
    if t.empty:
        return []
    out = []
    for problem, sep in t.attrs["separations"].items():
        if sep is None:
            continue
        est, v = sep["estimate"], sep["verdict"]
        if v.holds:
            out.append(f"Which noise for {NAMES[problem]}: {sep['best']}, ahead of the runner-up {sep['runner']} "
                       f"by {est.text()} ({v.word}).")
        else:
            out.append(f"Which noise for {NAMES[problem]}: undecided between {sep['best']} and {sep['runner']} "
                       f"({est.text()}; {v.reason}).")
    return out


def accuracy_vs_strength(df: pd.DataFrame, out=None):
    """Accuracy against shift strength (clean at 0), one panel per shift, one line per arm, label noise 0."""
    d, fixed = _rows(df)
    d = d[d["label_noise"] == 0]
    shifts = [s for s in SHIFTS if (d["shift"] == s).any()]
    need(d[d["shift"].isin(shifts)], "shifted rows")
    arms = sorted(d["arm_name"].unique())  # every panel draws every arm, so an arm keeps its colour
    cols = min(3, len(shifts))
    rows = -(-len(shifts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    plotted = []
    for i, (shift, ax) in enumerate(zip(shifts, axes.flat)):
        s = stats.summarize(d[d["shift"].isin(["clean", shift])], ["arm_name", "strength"])
        s = s[s["arm_name"].isin(arms)]
        lines(s, "arm_name", "strength", str, f"{NAMES[shift]} strength (0: clean)", NAMES[shift],
              legend_title="arm (knob)", ax=ax, legend=i == cols - 1)
        plotted.append(s.assign(shift=shift))
    for ax in list(axes.flat)[len(shifts):]:
        ax.set_visible(False)
    fig.suptitle("Accuracy against shift strength, one line per arm")
    fig.tight_layout()
    fig.plotted = pd.concat(plotted, ignore_index=True)
    note = stats.fixed_text(fixed)
    fig.caption = ("One panel per shift (trainables/corruptions.py), x its strength, 0 the clean test; one line per "
                   "arm, trained without label noise, the same colour in every panel. Points: mean over seeds; "
                   "bars: ± SEM (none with one seed)." + (f" {note}." if note else ""))
    return save(fig, out)


DATA_AXES = ["dataset", "base"]  # the paper preset runs several: each gets its own tables, figure and findings


def section(df: pd.DataFrame, out) -> dict:
    """The table, one figure per shift and the 'which noise for which problem' paragraph; one such
    block per (data set, base model) the rows hold, never pooled across them."""
    axes = [c for c in DATA_AXES if c in df.columns]
    groups = [(None, df)] if not axes or len(df[axes].drop_duplicates()) < 2 else \
        [(", ".join(str(v) for v in (key if isinstance(key, tuple) else (key,))), part)
         for key, part in df.groupby(axes, sort=True)]
    tables, made, skipped, captions, findings = [], [], [], {}, []
    for name, part in groups:
        tag = "" if name is None else f"{name}: "
        t = table(part)
        if not t.empty:
            fixed = stats.fixed_text(t.attrs["fixed"])
            tables.append((f"{tag}Accuracy % per arm and problem: mean over seeds [95% t interval of the mean]; a "
                           "shift's cell averages each seed over the shift's strengths; CW-L2 is accuracy on the "
                           "attacked images; label noise is clean accuracy after training on flipped labels;"
                           f"{BEST} marks the column's best arm where the verdict rule separates it from the best "
                           "other method (paired on seeds)" + (f"; {fixed}" if fixed else ""), t.reset_index()))
            attacks = attack_table(part)
            if not attacks.empty:
                tables.append((f"{tag}Attacks on the models trained without label noise: success rate (of the images "
                               "the arm classifies right, the share the attack turns wrong) and mean L2 of the "
                               "successful perturbations (over the seeds with one), mean ± SEM over seeds; FGSM at "
                               "its largest budget", attacks))
            costs = cost_table(part)
            if not costs.empty:
                tables.append((f"{tag}Cost per arm: training seconds (tuning included) and inference passes per test "
                               "image, mean ± SEM over seeds", costs))
        figure = "accuracy_vs_strength" if name is None else \
            "accuracy_vs_strength_" + "_".join(str(v) for v in part[axes].iloc[0])
        got = draw({figure: accuracy_vs_strength}, part, out)
        made += got[0]
        skipped += got[1]
        captions |= {k: tag + v for k, v in got[2].items()}
        findings += [tag + line for line in which_noise(part)]
    return {"title": "noise_bench: which noise for which problem", "tables": tables, "figures": made,
            "captions": captions, "skipped": skipped, "findings": findings}


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Training seconds and inference passes per test image, per arm (clean rows)."""
    d, _ = _rows(df)
    d = d[d["shift"] == "clean"]
    if d.empty or "train_seconds" not in d.columns:
        return pd.DataFrame()
    out = []
    for name, g in d.groupby("arm_name"):
        out.append({"arm": name, "training seconds": stats.spread_cell(g["train_seconds"]),
                    "passes per test image": stats.number(g["passes_per_image"].max())
                    if "passes_per_image" in g.columns else "n/a"})
    return pd.DataFrame(out)


def attack_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm: FGSM (largest budget) and CW-L2 success rate and mean L2, mean ± SEM over seeds."""
    d, _ = _rows(df)
    d = d[d["label_noise"] == 0]
    if "attack_success_rate" not in d.columns or not d["shift"].isin(["fgsm", "cw_l2"]).any():
        return pd.DataFrame()
    fgsm = d[d["shift"] == "fgsm"]
    parts = {"FGSM": fgsm[fgsm["strength"] == fgsm["strength"].max()], "CW-L2": d[d["shift"] == "cw_l2"]}
    out = []
    for name in sorted(d["arm_name"].unique()):
        row = {"arm": name}
        for attack, rows in parts.items():
            g = rows[rows["arm_name"] == name]
            row[f"{attack} success %"] = stats.cell(g["attack_success_rate"]) if len(g) else "n/a"
            row[f"{attack} mean L2"] = stats.cell(g["mean_l2"], scale=1, digits=3) if len(g) else "n/a"
        row["CW-L2 draws"] = "; ".join(sorted({cw_draws_text(r) for r in parts["CW-L2"][
            parts["CW-L2"]["arm_name"] == name].to_dict("records")})) or "n/a"
        out.append(row)
    return pd.DataFrame(out)


def cw_draws_text(row: dict) -> str:
    """Which CW-L2 attack a row's arm met: with the same draws on every call (fixed), new draws on
    every call (fresh), both with an image broken by either (worst case), or one attack on a
    deterministic arm (one pass per image). Rows from before `cw_fresh_draws` existed ran one."""
    fixed, fresh = bool(row.get("cw_fixed_draws")), row.get("cw_fresh_draws")
    if fresh is None or (isinstance(fresh, float) and math.isnan(fresh)):  # older rows: one attack
        fresh = not fixed and row.get("passes_per_image", 1) > 1
    return {(True, True): "worst of fixed and fresh", (True, False): "fixed", (False, True): "fresh",
            (False, False): "deterministic"}[(fixed, bool(fresh))]

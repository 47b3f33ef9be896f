"""The EBM paper's qualitative findings, recomputed from data as sentences with numbers.

Published numbers (PROTOCOLS.md section 1, Anchors) are printed beside ours only when the
run matches the paper's protocol (CIFAR-10, Gaussian, full placement, preset paper);
otherwise the sentence says why it is not comparable.
"""

from __future__ import annotations

import pandas as pd

from analysis.stats import ok_rows, summarize

# (alpha_train, alpha_test, n or None for any n) -> published accuracy in %.
ANCHORS = {(0.0, 0.0, None): 20.48, (0.9, 0.9, 1000): 64.55, (0.9, 0.9, 10000): 65.88}


def _norm(s) -> str:
    return str(s).lower().replace("-", "").replace("_", "")


def _pct(x) -> str:
    return f"{x * 100:.2f}%"


def _cells(d: pd.DataFrame) -> dict:
    s = summarize(d, ["alpha_train", "alpha_test"])
    return {(float(r.alpha_train), float(r.alpha_test)): (r.mean, r.sem, int(r.count)) for r in s.itertuples()}


def _setting(d: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """Matched train/test distribution and placement; Gaussian/full when present."""
    dist = place = ""
    if "distribution_train" in d.columns:
        d = d[d["distribution_train"] == d["distribution_test"]]
        vals = sorted(d["distribution_train"].dropna().astype(str).unique())
        dist = "gaussian" if "gaussian" in vals else (vals[0] if vals else "")
        d = d[d["distribution_train"] == dist]
    if "placement_train" in d.columns:
        d = d[d["placement_train"] == d["placement_test"]]
        vals = sorted(d["placement_train"].dropna().astype(str).unique())
        place = "full" if "full" in vals else (vals[0] if vals else "")
        d = d[d["placement_train"] == place]
    return d, dist, place


SYMMETRIC = {"gaussian", "cauchy", "uniform", "student_t"}  # the paper's Fig. 5 grouping


def _law_findings(d: pd.DataFrame, where: str) -> list[str]:
    """(v) symmetric laws against asymmetric ones, train law = test law, same alphas for both."""
    if not {"distribution_train", "distribution_test"} <= set(d.columns):
        return []
    m = d[(d["distribution_train"] == d["distribution_test"]) & (d["alpha_train"] == d["alpha_test"])
          & (d["alpha_train"] > 0)]
    sym = m[m["distribution_train"].isin(SYMMETRIC)]
    asym = m[~m["distribution_train"].isin(SYMMETRIC)]
    if sym.empty or asym.empty:
        return []
    a, b = sym["accuracy"].mean(), asym["accuracy"].mean()
    return [f"{where} Symmetric laws ({', '.join(sorted(sym['distribution_train'].unique()))}) average "
            f"{_pct(a)} vs asymmetric ({', '.join(sorted(asym['distribution_train'].unique()))}) {_pct(b)} "
            f"with train law = test law ({(a - b) * 100:+.2f} points; the paper expects symmetric higher)."]


def _placement_findings(d: pd.DataFrame, where: str) -> list[str]:
    """(vi) matched against mismatched train/test placements, and which matched placement wins."""
    if not {"placement_train", "placement_test"} <= set(d.columns) or d["placement_train"].nunique() < 2:
        return []
    same = d["placement_train"] == d["placement_test"]
    if not same.any() or same.all():
        return []
    a, b = d[same]["accuracy"].mean(), d[~same]["accuracy"].mean()
    per = d[same].groupby("placement_train")["accuracy"].mean()
    return [f"{where} Matched placements average {_pct(a)} vs mismatched {_pct(b)} ({(a - b) * 100:+.2f} points); "
            f"best matched placement: {per.idxmax()} ({_pct(per.max())}; the paper expects full)."]


def findings(df: pd.DataFrame) -> list[str]:
    """Sentences, one per finding, per data set; empty when there are no ok rows."""
    out: list[str] = []
    d0 = ok_rows(df)
    if "arch" in d0.columns:
        d0 = d0[d0["arch"].isna()]  # discriminative rows are not the EBM grid
    if d0.empty or "alpha_train" not in d0.columns:
        return out
    for dataset in sorted(d0["dataset"].dropna().astype(str).unique()):
        d = d0[(d0["dataset"] == dataset)]
        d = d[d["n"] == d["n"].max()]
        where = f"[{dataset}, n={int(d['n'].max())}]"
        out += _law_findings(d, where) + _placement_findings(d, where)
    for dataset in sorted(d0["dataset"].dropna().astype(str).unique()):
        d, dist, place = _setting(d0[d0["dataset"] == dataset])
        if d.empty:
            continue
        n = int(d["n"].max())
        c = _cells(d[d["n"] == n])
        where = f"[{dataset}, {dist}, {place}, n={n}]"
        presets = sorted(d["preset"].dropna().astype(str).unique()) if "preset" in d.columns else []
        preset = ",".join(presets) or "?"
        # (i) balanced noise vs none
        balanced = {k: v for k, v in c.items() if k[0] == k[1] and k[0] > 0}
        if (0.0, 0.0) in c and balanced:
            best = max(balanced, key=lambda k: balanced[k][0])
            gain = (balanced[best][0] - c[(0.0, 0.0)][0]) * 100
            out.append(f"{where} Best balanced cell ({best[0]:g}, {best[1]:g}) reaches "
                       f"{_pct(balanced[best][0])} vs {_pct(c[(0.0, 0.0)][0])} without noise: "
                       f"a gain of {gain:+.2f} points.")
        # (ii) best alpha_test per alpha_train
        for at in sorted({k[0] for k in c}):
            row = {k[1]: v[0] for k, v in c.items() if k[0] == at}
            if len(row) < 2:
                continue
            be = max(row, key=row.get)
            out.append(f"{where} alpha_train={at:g}: best alpha_test={be:g} ({_pct(row[be])}), "
                       f"{abs(be - at):.2f} from the diagonal.")
        # (iii) asymmetry
        if (0.5, 0.0) in c and (0.0, 0.5) in c:
            a, b = c[(0.5, 0.0)][0], c[(0.0, 0.5)][0]
            out.append(f"{where} Asymmetry: acc(0.5, 0) = {_pct(a)} vs acc(0, 0.5) = {_pct(b)} "
                       f"({(a - b) * 100:+.2f} points; the paper expects the first well above).")
        # anchors
        comparable = (_norm(dataset) == "cifar10" and dist == "gaussian" and place == "full"
                      and presets == ["paper"])
        for (at, ae, an), paper in ANCHORS.items():
            if an is None:
                rows = d[(d["alpha_train"] == at) & (d["alpha_test"] == ae)]
                if rows.empty:
                    continue
                an_used = n if (rows["n"] == n).any() else int(rows["n"].max())
            else:
                an_used = an
                rows = d[(d["alpha_train"] == at) & (d["alpha_test"] == ae) & (d["n"] == an)]
                if rows.empty:
                    continue
            ours = _cells(rows[rows["n"] == an_used])[(at, ae)][0]
            label = f"acc({at:g}, {ae:g}) at n={an_used}"
            if comparable:
                out.append(f"{where} {label}: ours {_pct(ours)}, paper {paper:.2f}% "
                           f"(difference {ours * 100 - paper:+.2f} points).")
            else:
                out.append(f"{where} {label}: ours {_pct(ours)}; paper's {paper:.2f}% is not comparable "
                           f"(dataset {dataset}, preset {preset}).")
    return out

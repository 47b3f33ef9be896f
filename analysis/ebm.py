"""The EBM family's analysis (activation-noise-ebm): its figures, Table 1 and findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "ebm" (the
autoencoder bank and the Appendix E classifiers); every function also works on its own, on any
DataFrame from analysis.load.
"""

from __future__ import annotations

import pandas as pd

from analysis import tables
from analysis.figures import has, heatmap, lines, need, one_dataset, plt, same, save
from analysis.stats import ok_rows, protocol_matches, summarize

FAMILY = "ebm"

# ---------------------------------------------------------------------------------------------
# Table 1: (alpha_train, alpha_test) cells x data sets, "mean ± SEM" in %

PAPER_CELLS = [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5), (0.5, 0.9), (0.5, 1.5),
               (0.9, 0.5), (0.9, 0.9), (0.9, 1.5), (1.5, 1.5)]


def cell_label(alpha_train, alpha_test) -> str:
    return f"({alpha_train:g}, {alpha_test:g})"


def table1(df: pd.DataFrame, n=None, cells=None) -> pd.DataFrame:
    """Table 1 layout at n (default: the largest n present); cells default to the paper's
    cells that are present, else every (alpha_train, alpha_test) pair present.

    Returns strings; `.attrs["summary"]` keeps the numbers (mean, sem, count per cell)."""
    d = ok_rows(df)
    if "distribution_train" in d.columns and "distribution_test" in d.columns:
        d = d[d["distribution_train"] == d["distribution_test"]]
    if "placement_train" in d.columns and "placement_test" in d.columns:
        d = d[d["placement_train"] == d["placement_test"]]
    if d.empty:
        return pd.DataFrame()
    n = int(d["n"].max()) if n is None else int(n)
    d = d[d["n"] == n]
    s = summarize(d, ["alpha_train", "alpha_test", "dataset"])
    present = sorted({(float(a), float(b)) for a, b in zip(s["alpha_train"], s["alpha_test"])})
    if cells is None:
        cells = [c for c in PAPER_CELLS if c in present] or present
    table = pd.DataFrame(index=[cell_label(*c) for c in cells],
                         columns=sorted(s["dataset"].astype(str).unique()), dtype=object)
    table.index.name = "(alpha_train, alpha_test)"
    for _, r in s.iterrows():
        label = cell_label(r["alpha_train"], r["alpha_test"])
        if label in table.index:
            table.loc[label, str(r["dataset"])] = tables.fmt(r["mean"], r["sem"])
    table = table.fillna("")
    table.attrs["summary"] = s
    table.attrs["n"] = n
    return table



# ---------------------------------------------------------------------------------------------
# Figures (Figs. 2-4, 6-11)


def largest_n(df: pd.DataFrame, n) -> tuple[pd.DataFrame, int]:
    """Rows at n (default: the largest n present)."""
    n = int(df["n"].max()) if n is None else int(n)
    return df[df["n"] == n], n



def heatmap_alpha(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Fig. 3: accuracy over alpha_train (rows) x alpha_test (columns) at one n."""
    d, name = one_dataset(ok_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d = need(d, "heatmap_alpha")
    d, n = largest_n(d, n)
    s = need(summarize(d, ["alpha_train", "alpha_test"]), "heatmap_alpha")
    pivot = s.pivot(index="alpha_train", columns="alpha_test", values="mean").sort_index().sort_index(axis=1)
    fig = heatmap(pivot, f"{name} accuracy (%), n={n}", "alpha_test", "alpha_train", diagonal=True)
    fig.plotted = s
    fig.pivot = pivot
    return save(fig, out)


def accuracy_vs_n(df: pd.DataFrame, dataset=None, out=None):
    """Fig. 7: accuracy against the number of draws n (log axis), one line per alpha cell."""
    d, name = one_dataset(ok_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    s = need(summarize(d, ["alpha_train", "alpha_test", "n"]), "accuracy_vs_n")
    fig, ax = lines(s, ["alpha_train", "alpha_test"], "n", lambda k: f"({k[0]:g}, {k[1]:g})",
                     "n (noise draws at inference)", f"{name}: accuracy vs n",
                     legend_title="(alpha_train, alpha_test)")
    ax.set_xscale("log")
    ns = sorted(s["n"].unique())
    ax.set_xticks(ns, [f"{v:g}" for v in ns])
    ax.minorticks_off()
    fig.tight_layout()
    return save(fig, out)


def accuracy_vs_alpha(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Figs. 4/6: accuracy against alpha (train = test) for each distribution."""
    d, name = one_dataset(ok_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d = need(d[d["alpha_train"] == d["alpha_test"]], "accuracy_vs_alpha")
    d, n = largest_n(d, n)
    s = need(summarize(d, ["distribution_train", "alpha_train"]), "accuracy_vs_alpha")
    if s["alpha_train"].nunique() < 2:
        raise ValueError("only one alpha on the diagonal")
    fig, _ = lines(s, ["distribution_train"], "alpha_train", lambda k: str(k[0]), "alpha (train = test)",
                    f"{name}: accuracy vs alpha, n={n}")
    fig.tight_layout()
    return save(fig, out)


def _train_test_heatmap(df, axis: str, held: str, alpha, n, dataset, out, title: str):
    """Train x test heatmap over `axis` (distribution or placement), `held` matched, at one alpha."""
    d, name = one_dataset(ok_rows(df), dataset)
    d = same(d, f"{held}_train", f"{held}_test")
    d = need(d[(d["alpha_train"] == alpha) & (d["alpha_test"] == alpha)], title)
    d, n = largest_n(d, n)
    s = summarize(d, [f"{axis}_train", f"{axis}_test"])
    pivot = s.pivot(index=f"{axis}_train", columns=f"{axis}_test", values="mean")
    if max(pivot.shape) < 2:
        raise ValueError(f"only one {axis} present")
    fig = heatmap(pivot, f"{name}: {axis}s, alpha={alpha:g}, n={n}",
                   f"test {axis}", f"train {axis}", diagonal=True)
    fig.plotted = s
    return save(fig, out)


def heatmap_distributions(df: pd.DataFrame, alpha=1.0, n=None, dataset=None, out=None):
    """Fig. 8: train distribution x test distribution at alpha_train = alpha_test = alpha."""
    return _train_test_heatmap(df, "distribution", "placement", alpha, n, dataset, out, "heatmap_distributions")


def heatmap_placements(df: pd.DataFrame, alpha=1.0, n=None, dataset=None, out=None):
    """Fig. 9: train placement x test placement, same distribution, alpha = 1."""
    return _train_test_heatmap(df, "placement", "distribution", alpha, n, dataset, out, "heatmap_placements")


def noise_vs_dropout(df: pd.DataFrame, n=None, out=None):
    """Fig. 2: activation noise (alpha, train = test, no dropout) against dropout rate c (no noise)."""
    d = ok_rows(df)
    if not has(d, "dropout_rate"):
        raise ValueError("no dropout_rate column")
    d = same(d, "placement_train", "placement_test")
    d, n = largest_n(need(d, "noise_vs_dropout"), n)
    noise = d[(d["dropout_rate"].fillna(0) == 0) & (d["alpha_train"] == d["alpha_test"])]
    drop = d[(d["dropout_rate"] > 0) & (d["alpha_train"] == 0) & (d["alpha_test"] == 0)]
    if drop.empty:
        raise ValueError("no dropout rows")
    parts = [summarize(noise, ["dataset", "alpha_train"]).rename(columns={"alpha_train": "strength"}).assign(kind="noise"),
             summarize(drop, ["dataset", "dropout_rate"]).rename(columns={"dropout_rate": "strength"}).assign(kind="dropout")]
    s = pd.concat(parts, ignore_index=True)
    fig, _ = lines(s, ["dataset", "kind"], "strength", lambda k: f"{k[0]} {k[1]}",
                    "alpha (noise) or c (dropout rate)", f"activation noise vs dropout, n={n}",
                    style=lambda k: "-" if k[1] == "noise" else "--")
    fig.tight_layout()
    return save(fig, out)


def discriminative(df: pd.DataFrame, n=None, out=None):
    """Figs. 10/11: discriminative classifiers, accuracy against alpha (train = test) per arch."""
    d = ok_rows(df)
    d = d[d["method"] == "discriminative"] if "method" in d.columns else d[d["arch"].notna()] if has(d, "arch") else d.iloc[:0]
    if d.empty:
        raise ValueError("no discriminative rows")
    d = d[d["alpha_train"] == d["alpha_test"]]
    d, n = largest_n(need(d, "discriminative"), n)
    s = need(summarize(d, ["dataset", "arch", "alpha_train"]), "discriminative")
    fig, _ = lines(s, ["dataset", "arch"], "alpha_train", lambda k: f"{k[0]} {k[1]}", "alpha (train = test)",
                    f"discriminative models, n={n}")
    fig.tight_layout()
    return save(fig, out)


FIGURES = {
    "heatmap_alpha": heatmap_alpha,
    "accuracy_vs_n": accuracy_vs_n,
    "accuracy_vs_alpha": accuracy_vs_alpha,
    "heatmap_distributions": heatmap_distributions,
    "heatmap_placements": heatmap_placements,
    "noise_vs_dropout": noise_vs_dropout,
    "discriminative": discriminative,
}


# ---------------------------------------------------------------------------------------------
# Findings: the paper's qualitative claims, recomputed from data as sentences with numbers.
# Published numbers (PROTOCOLS.md section 1, Anchors) are printed beside ours only when the run
# matches the paper's protocol (CIFAR-10, Gaussian, full placement, preset paper); otherwise the
# sentence says why it is not comparable.

# (alpha_train, alpha_test, n or None for any n) -> published accuracy in %.
ANCHORS = {(0.0, 0.0, None): 20.48, (0.9, 0.9, 1000): 64.55, (0.9, 0.9, 10000): 65.88}


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
    if "method" in d0.columns:
        d0 = d0[d0["method"] == "ebm"]  # the discriminative classifiers' rows are not the EBM grid
    elif "arch" in d0.columns:
        d0 = d0[d0["arch"].isna()]
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
        comparable = protocol_matches(dataset, presets, "cifar10") and dist == "gaussian" and place == "full"
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


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: Table 1, every figure with data, the findings."""
    table = table1(df)
    made, skipped = [], []
    for name, fn in FIGURES.items():
        try:
            fig = fn(df, out=out / name)
        except (ValueError, KeyError) as exc:
            skipped.append(f"{name} ({exc})")
            continue
        plt.close(fig)
        made.append(name)
    caption = f"Table 1 layout: accuracy % mean ± SEM over seeds, n={table.attrs.get('n', '?')}"
    return {"title": "Activation noise in EBM classification (activation-noise-ebm)",
            "tables": [(caption, table)], "figures": made, "skipped": skipped, "findings": findings(df)}

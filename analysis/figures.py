"""The papers' figures, drawn from a results DataFrame.

Each function returns the Figure, saves `<stem>.png` and `<stem>.svg` when given `out`, and
keeps the summary it drew as `fig.plotted` so tests check values, not pixels. A function
whose data is absent raises ValueError (the report then leaves that figure out).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import ok_rows, summarize  # noqa: E402


def _save(fig, out):
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out.with_suffix(".png"), dpi=100, bbox_inches="tight")
        fig.savefig(out.with_suffix(".svg"), bbox_inches="tight")
    return fig


def _need(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"no ok rows for {what}")
    return df


def _has(df, col):
    return col in df.columns and df[col].notna().any()


def _one_dataset(df: pd.DataFrame, dataset: str | None) -> tuple[pd.DataFrame, str]:
    """Figures are per data set: the given one, else the first present."""
    if not _has(df, "dataset"):
        return df, ""
    name = dataset if dataset is not None else sorted(df["dataset"].dropna().unique())[0]
    return df[df["dataset"] == name], str(name)


def _largest_n(df: pd.DataFrame, n) -> tuple[pd.DataFrame, int]:
    """Rows at n (default: the largest n present)."""
    n = int(df["n"].max()) if n is None else int(n)
    return df[df["n"] == n], n


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


def _heatmap(pivot: pd.DataFrame, title: str, xlabel: str, ylabel: str, diagonal: bool):
    """Annotated heatmap in %, rows = train setting, columns = test setting."""
    cells = pivot.to_numpy(dtype=float) * 100
    size = max(4.0, 0.55 * max(pivot.shape) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cells, cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), [_fmt(c) for c in pivot.columns])
    ax.set_yticks(range(pivot.shape[0]), [_fmt(r) for r in pivot.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    small = max(pivot.shape) > 10
    for i in range(pivot.shape[0]):
        for j in range(pivot.shape[1]):
            if not np.isnan(cells[i, j]):
                light = im.norm(cells[i, j]) > 0.6  # dark text on the bright end of viridis
                ax.text(j, i, f"{cells[i, j]:.1f}", ha="center", va="center",
                        fontsize=5 if small else 8, color="k" if light else "w")
            if diagonal and pivot.index[i] == pivot.columns[j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    return fig


def _same(df, a, b):
    """Rows where two columns agree (or are both absent)."""
    if a in df.columns and b in df.columns:
        return df[df[a] == df[b]]
    return df


def heatmap_alpha(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Fig. 3: accuracy over alpha_train (rows) x alpha_test (columns) at one n."""
    d, name = _one_dataset(ok_rows(df), dataset)
    d = _same(_same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d = _need(d, "heatmap_alpha")
    d, n = _largest_n(d, n)
    s = _need(summarize(d, ["alpha_train", "alpha_test"]), "heatmap_alpha")
    pivot = s.pivot(index="alpha_train", columns="alpha_test", values="mean").sort_index().sort_index(axis=1)
    fig = _heatmap(pivot, f"{name} accuracy (%), n={n}", "alpha_test", "alpha_train", diagonal=True)
    fig.plotted = s
    fig.pivot = pivot
    return _save(fig, out)


def _lines(s: pd.DataFrame, groups, x: str, label, xlabel: str, title: str, style=None, legend_title=None):
    """Accuracy (%) with SEM bars against `x`, one line per group of `groups`."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, g in s.groupby(groups):
        g = g.sort_values(x)
        ax.errorbar(g[x], g["mean"] * 100, yerr=g["sem"].fillna(0) * 100, marker="o", capsize=2,
                    linestyle=style(key) if style else "-", label=label(key))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(title=legend_title, fontsize=6 if legend_title else 7, ncol=2 if legend_title else 1)
    fig.plotted = s
    return fig, ax


def accuracy_vs_n(df: pd.DataFrame, dataset=None, out=None):
    """Fig. 7: accuracy against the number of draws n (log axis), one line per alpha cell."""
    d, name = _one_dataset(ok_rows(df), dataset)
    d = _same(_same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    s = _need(summarize(d, ["alpha_train", "alpha_test", "n"]), "accuracy_vs_n")
    fig, ax = _lines(s, ["alpha_train", "alpha_test"], "n", lambda k: f"({k[0]:g}, {k[1]:g})",
                     "n (noise draws at inference)", f"{name}: accuracy vs n",
                     legend_title="(alpha_train, alpha_test)")
    ax.set_xscale("log")
    ns = sorted(s["n"].unique())
    ax.set_xticks(ns, [f"{v:g}" for v in ns])
    ax.minorticks_off()
    fig.tight_layout()
    return _save(fig, out)


def accuracy_vs_alpha(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Figs. 4/6: accuracy against alpha (train = test) for each distribution."""
    d, name = _one_dataset(ok_rows(df), dataset)
    d = _same(_same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d = _need(d[d["alpha_train"] == d["alpha_test"]], "accuracy_vs_alpha")
    d, n = _largest_n(d, n)
    s = _need(summarize(d, ["distribution_train", "alpha_train"]), "accuracy_vs_alpha")
    if s["alpha_train"].nunique() < 2:
        raise ValueError("only one alpha on the diagonal")
    fig, _ = _lines(s, ["distribution_train"], "alpha_train", lambda k: str(k[0]), "alpha (train = test)",
                    f"{name}: accuracy vs alpha, n={n}")
    fig.tight_layout()
    return _save(fig, out)


def _train_test_heatmap(df, axis: str, held: str, alpha, n, dataset, out, title: str):
    """Train x test heatmap over `axis` (distribution or placement), `held` matched, at one alpha."""
    d, name = _one_dataset(ok_rows(df), dataset)
    d = _same(d, f"{held}_train", f"{held}_test")
    d = _need(d[(d["alpha_train"] == alpha) & (d["alpha_test"] == alpha)], title)
    d, n = _largest_n(d, n)
    s = summarize(d, [f"{axis}_train", f"{axis}_test"])
    pivot = s.pivot(index=f"{axis}_train", columns=f"{axis}_test", values="mean")
    if max(pivot.shape) < 2:
        raise ValueError(f"only one {axis} present")
    fig = _heatmap(pivot, f"{name}: {axis}s, alpha={alpha:g}, n={n}",
                   f"test {axis}", f"train {axis}", diagonal=True)
    fig.plotted = s
    return _save(fig, out)


def heatmap_distributions(df: pd.DataFrame, alpha=1.0, n=None, dataset=None, out=None):
    """Fig. 8: train distribution x test distribution at alpha_train = alpha_test = alpha."""
    return _train_test_heatmap(df, "distribution", "placement", alpha, n, dataset, out, "heatmap_distributions")


def heatmap_placements(df: pd.DataFrame, alpha=1.0, n=None, dataset=None, out=None):
    """Fig. 9: train placement x test placement, same distribution, alpha = 1."""
    return _train_test_heatmap(df, "placement", "distribution", alpha, n, dataset, out, "heatmap_placements")


def noise_vs_dropout(df: pd.DataFrame, n=None, out=None):
    """Fig. 2: activation noise (alpha, train = test, no dropout) against dropout rate c (no noise)."""
    d = ok_rows(df)
    if not _has(d, "dropout_rate"):
        raise ValueError("no dropout_rate column")
    d = _same(d, "placement_train", "placement_test")
    d, n = _largest_n(_need(d, "noise_vs_dropout"), n)
    noise = d[(d["dropout_rate"].fillna(0) == 0) & (d["alpha_train"] == d["alpha_test"])]
    drop = d[(d["dropout_rate"] > 0) & (d["alpha_train"] == 0) & (d["alpha_test"] == 0)]
    if drop.empty:
        raise ValueError("no dropout rows")
    parts = [summarize(noise, ["dataset", "alpha_train"]).rename(columns={"alpha_train": "strength"}).assign(kind="noise"),
             summarize(drop, ["dataset", "dropout_rate"]).rename(columns={"dropout_rate": "strength"}).assign(kind="dropout")]
    s = pd.concat(parts, ignore_index=True)
    fig, _ = _lines(s, ["dataset", "kind"], "strength", lambda k: f"{k[0]} {k[1]}",
                    "alpha (noise) or c (dropout rate)", f"activation noise vs dropout, n={n}",
                    style=lambda k: "-" if k[1] == "noise" else "--")
    fig.tight_layout()
    return _save(fig, out)


def discriminative(df: pd.DataFrame, n=None, out=None):
    """Figs. 10/11: discriminative classifiers, accuracy against alpha (train = test) per arch."""
    d = ok_rows(df)
    if not _has(d, "arch"):
        raise ValueError("no discriminative rows (arch)")
    d = d[d["arch"].notna() & (d["alpha_train"] == d["alpha_test"])]
    d, n = _largest_n(_need(d, "discriminative"), n)
    s = _need(summarize(d, ["dataset", "arch", "alpha_train"]), "discriminative")
    fig, _ = _lines(s, ["dataset", "arch"], "alpha_train", lambda k: f"{k[0]} {k[1]}", "alpha (train = test)",
                    f"discriminative models, n={n}")
    fig.tight_layout()
    return _save(fig, out)


ALL = {
    "heatmap_alpha": heatmap_alpha,
    "accuracy_vs_n": accuracy_vs_n,
    "accuracy_vs_alpha": accuracy_vs_alpha,
    "heatmap_distributions": heatmap_distributions,
    "heatmap_placements": heatmap_placements,
    "noise_vs_dropout": noise_vs_dropout,
    "discriminative": discriminative,
}

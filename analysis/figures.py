"""Drawing helpers every family's figures share: saving, annotated heatmaps, lines with SEM bars.

A family's figure function (analysis/<family>.py) returns the Figure, saves `<stem>.png` and
`<stem>.svg` when given `out`, and keeps the summary it drew as `fig.plotted` so tests check
values, not pixels. One whose data is absent raises ValueError (the report then leaves it out).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.load import artefacts  # noqa: E402


def save(fig, out):
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out.with_suffix(".png"), dpi=100, bbox_inches="tight")
        fig.savefig(out.with_suffix(".svg"), bbox_inches="tight")
    return fig


def draw(figures: dict, df: pd.DataFrame, out) -> tuple[list[str], list[str], dict[str, str]]:
    """Draw each of a family's figures into `out`; (names drawn, "name (why not)" for the rest,
    name -> caption). A figure function explains every mark it draws in `fig.caption`."""
    made, skipped, captions = [], [], {}
    for name, fn in figures.items():
        try:
            fig = fn(df, out=out / name)
        except (ValueError, KeyError) as exc:
            skipped.append(f"{name} ({exc})")
            continue
        plt.close(fig)
        made.append(name)
        captions[name] = getattr(fig, "caption", "") or " ".join((fn.__doc__ or "").split("\n\n")[0].split())
    return made, skipped, captions


def need(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if df.empty:
        raise ValueError(f"no ok rows for {what}")
    return df


def has(df, col):
    return col in df.columns and df[col].notna().any()


def one_dataset(df: pd.DataFrame, dataset: str | None) -> tuple[pd.DataFrame, str]:
    """Figures are per data set: the given one, else the first present."""
    if not has(df, "dataset"):
        return df, ""
    name = dataset if dataset is not None else sorted(df["dataset"].dropna().unique())[0]
    return df[df["dataset"] == name], str(name)


def fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


def heatmap(pivot: pd.DataFrame, title: str, xlabel: str, ylabel: str, diagonal: bool,
            label: str = "accuracy (%)", scale: float = 100):
    """Annotated heatmap of values times `scale`, rows = train setting, columns = test setting."""
    cells = pivot.to_numpy(dtype=float) * scale
    size = max(4.0, 0.55 * max(pivot.shape) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cells, cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), [fmt_value(c) for c in pivot.columns])
    ax.set_yticks(range(pivot.shape[0]), [fmt_value(r) for r in pivot.index])
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
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    fig.caption = (f"Each cell: the mean over seeds of {label}, written in it; the colour bar maps colour to it."
                   + (" Red boxes: the diagonal, where the test setting equals the training setting." if diagonal else ""))
    return fig


def same(df, a, b):
    """Rows where two columns agree (or are both absent)."""
    if a in df.columns and b in df.columns:
        return df[df[a] == df[b]]
    return df


def lines(s: pd.DataFrame, groups, x: str, label, xlabel: str, title: str, style=None, legend_title=None,
          ylabel: str = "accuracy (%)", scale: float = 100, ax=None, legend: bool = True):
    """A summary's mean (times `scale`) with SEM bars against `x`, one line per group of `groups`.

    Every line has a colour of its own (tab10, or tab20 beyond ten lines, with a second marker and
    dash pattern for its second half) and the legend sits outside the axes, never over the data.
    An x axis with a single value keeps just that tick. `ax`: draw into this panel of a larger
    figure (a group keeps its colour across panels that show the same groups); `legend=False`
    leaves the legend to another panel."""
    keys = list(s.groupby(groups))
    colours = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20").colors
    fig, ax = plt.subplots(figsize=(7, 4.5)) if ax is None else (ax.figure, ax)
    for i, (key, g) in enumerate(keys):
        g = g.sort_values(x)
        second = i >= len(colours)
        ax.errorbar(g[x], g["mean"] * scale, yerr=g["sem"].fillna(0) * scale, marker="s" if second else "o",
                    capsize=2, color=colours[i % len(colours)],
                    linestyle=style(key) if style else ("--" if second else "-"), label=label(key))
    single_x(ax, s[x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(title=legend_title, fontsize=6 if legend_title else 7, title_fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.01, 1), ncol=2 if len(keys) > 12 else 1)
    fig.plotted = s
    fig.caption = "Points: mean over seeds; bars: ± SEM (none with one seed)."
    return fig, ax


def single_x(ax, xs) -> None:
    """With a single x value, show that value as the only tick (not a made-up range around it)."""
    values = pd.Series(xs).dropna().unique()
    if len(values) == 1 and isinstance(values[0], (int, float, np.integer, np.floating)):
        ax.set_xticks([values[0]], [fmt_value(values[0])])


def epoch_curves(df: pd.DataFrame, keys: list[str], names) -> pd.DataFrame:
    """The trials' per-epoch arrays `names` (artefacts beside their parts, df.attrs["source"]) as
    mean ± SEM over seeds (stats.summarize) per `keys` and epoch: one row per (keys, curve, epoch)."""
    source = df.attrs.get("source")
    if not source or df.empty:
        return pd.DataFrame()
    long = []
    for r in df.drop_duplicates("trial_key").to_dict("records"):
        a = artefacts(source, r["trial_key"])
        for name in names:
            if name in a:
                long += [{**{k: r[k] for k in keys}, "seed": r["seed"], "curve": name, "epoch": i + 1,
                          "value": float(v), "status": "ok"} for i, v in enumerate(a[name])]
    if not long:
        return pd.DataFrame()
    return stats.summarize(pd.DataFrame(long), [*keys, "curve", "epoch"], metric="value")

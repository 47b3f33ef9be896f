"""The VPN family's analysis (variational-pi-noise): Tables I/II and IV, Fig. 4, std maps, findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "vpn". The
configuration columns are the rows' own (`config_columns`); a table or finding reads one
configuration: configuration columns that vary and are not drawn (e.g. noise_draws in a Fig. 4
run) are fixed to one value and the caption says which. Fig. 4 draws accuracy against noise_draws.

Row names are the trials' `label` column (the paper's names, given by search_spaces/vpn.py), with
" (No Noise)" added here to a generator's rows scored by f alone (the `inference` test setting).
Every mean, SEM, interval and verdict comes from analysis.stats (its RULE).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import stats
from analysis.figures import draw, epoch_curves, lines, one_dataset, plt, save
from analysis.load import artefacts
from analysis.stats import fixed_text, ok_rows, protocol_differences, summarize

FAMILY = "vpn"

# Where a configuration column varies and is not drawn, the value read: the paper's m = 1 ("in all
# other experiments"), and one draw per hypothesis, abs() and no clean loss as in the authors' code.
PREFERRED = {"mode": "joint", "noise_draws": 1, "n_draws": 1, "std_activation": "abs", "clean_loss_weight": 0.0}
IGNORED = {"eval_batch_size", "std_map_images", "inert_std_ratio"}  # fields that do not change accuracy
DRAWN = {"dataset", "base", "generator", "augmentation", "inference", "mode"}  # a table's rows and columns
INERT = 0.01  # a generator whose learned std is below this share of the input's learned no noise
NO_NOISE = " (No Noise)"  # a generator's rows scored by f alone (inference="clean"), as the paper names them
BASE_LABELS = {"softmax_regression": "SR", "dnn3": "DNN3", "resnet18": "Res18", "resnet34": "Res34",
               "resnet50": "Res50", "vit_small": "ViT"}  # the tables' column headings

# Table I of the paper (%): (dataset, base) -> row label -> accuracy.
_T1_COLS = [("fashion_mnist", b) for b in ("softmax_regression", "dnn3", "resnet18", "resnet34")] + \
           [("cifar10", b) for b in ("softmax_regression", "dnn3", "resnet18", "resnet34", "vit_small")]
_T1 = {
    "Baseline": [74.97, 81.57, 93.60, 93.84, 39.08, 46.92, 94.77, 95.00, 79.91],
    "Random Rotation": [68.12, 77.92, 94.62, 94.53, 31.37, 32.62, 89.87, 92.48, 70.07],
    "Random Translation": [67.65, 78.12, 95.33, 95.04, 33.00, 34.97, 94.91, 85.20, 78.55],
    "Color Jitter": [74.98, 78.52, 93.79, 93.84, 34.40, 36.47, 95.04, 95.23, 81.01],
    "Gaussian Blur": [74.14, 81.95, 93.58, 93.31, 35.51, 37.96, 94.35, 94.71, 77.49],
    "Random Noise": [71.82, 79.45, 93.77, 93.39, 39.06, 48.15, 95.09, 95.20, 64.38],
    "DNN3": [76.34, 81.79, 93.84, 94.23, 39.36, 48.76, 95.35, 95.26, 81.07],
    "DNN3 (No Noise)": [76.34, 81.83, 93.84, 94.23, 39.47, 49.07, 95.35, 95.26, 81.06],
    "ResNet18": [67.63, 82.19, 93.85, 93.89, 39.34, 50.15, 95.12, 95.56, 82.26],
    "ResNet18 (No Noise)": [76.48, 82.19, 93.85, 93.89, 39.39, 50.11, 95.12, 95.56, 82.26],
}
PAPER_TABLE1 = {col: {label: values[i] for label, values in _T1.items()} for i, col in enumerate(_T1_COLS)}
# What must match for a Table I number to sit beside ours (dataset and base are the column itself).
PAPER_GEOMETRY = {"fashion_mnist": {"image_size": 28, "channels": 1}, "cifar10": {"image_size": 32, "channels": 3}}
# The paper's row order (Table I), for our tables.
ORDER = list(_T1)


def paper_protocol(dataset: str, base: str) -> dict:
    return {"dataset": dataset, **PAPER_GEOMETRY.get(dataset, {}), "epochs": 100 if base.startswith("resnet") else 40,
            "steps": 0, "batch_size": 256, "lr": 1e-3, "noise_draws": 1, "n_draws": 1}


def comparable(rows: pd.DataFrame, dataset: str, base: str) -> bool:
    """The paper's protocol in every field that matters, on the full data set (no subset limits)."""
    full = all(c not in rows.columns or rows[c].isna().all() for c in ("train_limit", "test_limit"))
    return full and not protocol_differences(rows, paper_protocol(dataset, base))


def vpn_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = ok_rows(df)
    return d[d["method"] == "vpn"] if "method" in d.columns else d


def vpn_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = ok_rows(df)
    return d[d["method"] == "vpn"] if "method" in d.columns else d


def _given(value) -> bool:
    return isinstance(value, str) and value != ""


def unlabelled(d: pd.DataFrame) -> int:
    """How many rows carry no `label` (rows written before search_spaces/vpn.py named them)."""
    if "label" not in d.columns:
        return len(d)
    return int(sum(not _given(v) for v in d["label"]))


def label_note(d: pd.DataFrame) -> str:
    """What the section says when some rows have no `label`: they are named by their fields."""
    missing = unlabelled(d)
    if not missing:
        return ""
    return (f"Labels: {missing} of {len(d)} rows carry no `label` column (written before search_spaces/vpn.py "
            "named the paper's rows); they are named here by their fields (augmentation=..., generator=...), "
            "and no paper number is matched to them.")


def is_generator(r) -> bool:
    g = r.get("generator")
    return g is not None and not pd.isna(g) and g != "none"


def row_label(r) -> str:
    """The paper's row name of a result row: the trial's `label`, with " (No Noise)" for a
    generator's rows scored by f alone. Rows without a label are named by their fields."""
    name = r.get("label")
    if not _given(name):
        name = f"generator={r['generator']}" if is_generator(r) else f"augmentation={r.get('augmentation')}"
    return name + (NO_NOISE if is_generator(r) and r.get("inference") == "clean" else "")


def labelled(d: pd.DataFrame) -> pd.DataFrame:
    d = d.copy()
    records = d.to_dict("records")
    d["row"] = [row_label(r) for r in records]
    d["column"] = [f"{r['dataset']} {BASE_LABELS.get(r['base'], r['base'])}" for r in records]
    return d


def _with_paper(d: pd.DataFrame, s: pd.DataFrame) -> pd.DataFrame:
    """Add the paper's number in brackets where the protocol of those rows matches it."""
    out = {}
    for (row, col), g in d.groupby(["row", "column"]):
        dataset, base = g["dataset"].iloc[0], g["base"].iloc[0]
        paper = PAPER_TABLE1.get((str(dataset), str(base)), {}).get(row)
        if paper is not None and comparable(g, str(dataset), str(base)):
            out[(row, col)] = paper
    cell = s.apply(lambda r: stats.fmt(r["mean"], r["sem"]) + (f" (paper {out[(r['row'], r['column'])]:.2f})"
                                                               if (r["row"], r["column"]) in out else ""), axis=1)
    return s.assign(cell=cell)


def one_setting(d: pd.DataFrame, keep=DRAWN) -> tuple[pd.DataFrame, dict]:
    """stats.one_setting over the rows' own configuration columns."""
    return stats.one_setting(d, keep, PREFERRED, ignore=IGNORED)


def table(df: pd.DataFrame, mode: str = "joint") -> pd.DataFrame:
    """Tables I/II (mode joint) or IV (mode frozen, beside the baselines): rows as the paper's,
    columns "dataset base", cells accuracy % mean ± SEM over seeds (paper's value in brackets
    where the protocol matches). attrs["fixed"] says what was fixed to read one configuration."""
    d = vpn_rows(df)
    if d.empty:
        return pd.DataFrame()
    d = d[(d["generator"] == "none") | (d["mode"] == mode)]
    d, fixed = one_setting(d)
    if d.empty:
        return pd.DataFrame()
    d = labelled(d)
    s = _with_paper(d, summarize(d, ["row", "column"]))
    t = s.pivot(index="row", columns="column", values="cell")
    t = t.reindex([r for r in ORDER if r in t.index] + sorted(r for r in t.index if r not in ORDER))
    t.index.name = "Table IV" if mode == "frozen" else "Table I/II"
    t.attrs["fixed"] = fixed
    return t


def _varying(d: pd.DataFrame, drawn) -> list[str]:
    """Configuration columns (the rows' own) that vary and are not among `drawn`."""
    return [c for c in stats.config_columns(d, ignore=IGNORED) if c not in drawn and d[c].nunique(dropna=False) > 1]


def diagnostics(df: pd.DataFrame) -> pd.DataFrame:
    """Per generator trial kind: the learned std relative to the input's std (inert below INERT),
    and the label-leak rate (chance: 1/C when f ignores the noise), mean over seeds, beside the
    VPN accuracy (mean ± SEM over seeds)."""
    d = vpn_rows(df)
    d = d[(d["inference"] == "vpn")] if "inference" in d.columns else d.iloc[:0]
    if d.empty:
        return pd.DataFrame()
    by = ["dataset", "base", "generator", "mode"]
    by += _varying(d, set(by) | {"inference"})
    rows = []
    for key, g in d.groupby(by, dropna=False):
        ratio = g["std_ratio"].mean()
        rows.append(dict(zip(by, key)) | {"accuracy %": stats.cell(g["accuracy"]), "std_ratio": round(ratio, 4),
                                           "inert": bool(ratio < inert_threshold(g)),
                                           "label_leak_rate": round(g["label_leak_rate"].mean(), 4),
                                           "seeds": g["seed"].nunique()})
    return pd.DataFrame(rows).set_index(by)


# ---------------------------------------------------------------------------------------------
# Figures


def _generator_trials(df: pd.DataFrame) -> pd.DataFrame:
    d = vpn_rows(df)
    return d[(d["inference"] == "vpn")].sort_values(["base", "generator", "mode", "seed"]) if not d.empty else d


def std_maps(df: pd.DataFrame, out=None, images: int = 4):
    """The paper's Fig. 1: test images beside the std the generator learnt for them (true label),
    one row per generator trial kind (first seed). Needs the trials' artefacts."""
    d = _generator_trials(df).drop_duplicates(["dataset", "base", "generator", "mode"])
    source = df.attrs.get("source")
    if d.empty or not source:
        raise ValueError("no VPN generator trials with a results folder to read artefacts from")
    got = [(r, artefacts(source, r["trial_key"])) for r in d.to_dict("records")]
    got = [(r, a) for r, a in got if "std_map" in a]
    if not got:
        raise ValueError("no std_map artefacts")
    k = min(images, min(len(a["std_map"]) for _, a in got))
    fig, axes = plt.subplots(len(got), 2 * k, figsize=(1.6 * 2 * k + 1, 1.8 * len(got)), squeeze=False)
    for i, (r, a) in enumerate(got):
        maps = [np.moveaxis(a["std_map"][j], 0, -1).mean(-1) for j in range(k)]
        top = max(float(np.max(m)) for m in maps) or 1.0  # one colour scale per row, so its maps compare
        for j in range(k):
            img = a["std_map_images"][j]
            axes[i, 2 * j].imshow(np.moveaxis(img, 0, -1).squeeze(), cmap="gray", vmin=0, vmax=1,
                                  interpolation="nearest")
            shown = axes[i, 2 * j + 1].imshow(maps[j], cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            axes[i, 2 * j].set_title(f"y={int(a['std_map_labels'][j])}", fontsize=7)
            axes[i, 2 * j + 1].set_title(f"σ max {stats.number(maps[j].max())}", fontsize=7)
        axes[i, 0].set_ylabel(f"{r['base']}\n{r['generator']} {r['mode']}", fontsize=7)
        fig.colorbar(shown, ax=axes[i, :].tolist(), fraction=0.02, pad=0.01).set_label("σ", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Learned std maps beside their images (true label; first seed)", fontsize=9, y=1.03)
    fig.caption = ("Per generator (rows): test images (grey, pixel values 0-1) each followed by the std the "
                   "generator learnt for it, averaged over channels (magma; the colour bar gives σ in the input's "
                   "units, one scale per row). Pixels are drawn as squares, unsmoothed.")
    save(fig, out)
    return fig


def std_history(df: pd.DataFrame, out=None):
    """Mean generated std per training epoch, per generator trial: does sigma collapse to 0?"""
    d = _generator_trials(df)
    source = df.attrs.get("source")
    if d.empty or not source:
        raise ValueError("no VPN generator trials with a results folder to read artefacts from")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = 0
    for r in d.drop_duplicates("trial_key").to_dict("records"):
        h = artefacts(source, r["trial_key"]).get("std_history")
        if h is None or not len(h):
            continue
        ax.plot(np.arange(1, len(h) + 1), h, lw=1,
                label=f"{r['base']} / {r['generator']} {r['mode']} m={r.get('noise_draws', 1)} s{r['seed']}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("no std_history artefacts")
    ax.set_yscale("log")
    ax.set(xlabel="epoch (of the generator's phase)", ylabel="mean generated std", title="Generated std while training")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.caption = "One line per generator trial (base / generator mode, draws m, seed s); log y axis."
    save(fig, out)
    return fig


def noise_size_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Fig. 4's rows: the generators' VPN-scored rows of one configuration apart from noise_draws
    (m), labelled; empty unless two or more m were run (a vpn_noise_size run)."""
    d = vpn_rows(df)
    if d.empty or "noise_draws" not in d.columns or "inference" not in d.columns:
        return d.iloc[:0], {}
    d = d[(d["inference"] == "vpn") & (d["generator"] != "none")]
    if d["noise_draws"].nunique() < 2:
        return d.iloc[:0], {}
    d, fixed = one_setting(d, DRAWN | {"noise_draws"})
    return labelled(d), fixed


def noise_size(df: pd.DataFrame, out=None, dataset: str | None = None):
    """The paper's Fig. 4 (final accuracy): VPN accuracy (mean ± SEM over seeds) against m, the
    draws per training example, one line per base model / generator (and mode)."""
    d, fixed = noise_size_rows(df)
    if d.empty:
        raise ValueError("needs generator rows at two or more noise_draws (a vpn_noise_size run)")
    d, name = one_dataset(d, dataset)
    s = summarize(d, ["base", "row", "mode", "noise_draws"])
    fixed = fixed_text(fixed)
    fig, ax = lines(s, ["base", "row", "mode"], "noise_draws",
                    label=lambda k: f"base {k[0]} / generator {k[1]} ({k[2]})",
                    xlabel="m (noise_draws: draws per training example)",
                    title=f"Fig. 4: accuracy against m ({name}; Algorithm 2, mean ± SEM over seeds)"
                          + (f"\n{fixed}" if fixed else ""))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(s["noise_draws"].unique()), [f"{m:g}" for m in sorted(s["noise_draws"].unique())])
    save(fig, out)
    return fig


CURVES = {"epoch_loss": "training loss", "epoch_train_accuracy": "training accuracy (%)",
          "epoch_test_accuracy": "test accuracy of f (%)"}


def training_curves(df: pd.DataFrame, out=None):
    """The paper's Fig. 3: training loss, training accuracy and f's test accuracy per epoch, mean ±
    SEM over seeds, for the Baseline and each joint generator (per base model)."""
    d = labelled(vpn_rows(df))
    d = d[(d["inference"] == "vpn") | ((d["generator"] == "none") & (d["augmentation"] == "none"))] \
        if not d.empty else d
    d = d[(d["generator"] == "none") | (d["mode"] == "joint")] if not d.empty else d
    s = epoch_curves(d.assign(arm=d["base"] + " / " + d["row"]) if not d.empty else d, ["arm"], CURVES)
    if s.empty:
        raise ValueError("no per-epoch artefacts (trials written before VPN recorded them)")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (curve, title) in zip(axes, CURVES.items()):
        scale = 1 if curve == "epoch_loss" else 100
        for arm, g in s[s["curve"] == curve].groupby("arm"):
            ax.plot(g["epoch"], scale * g["mean"], lw=1.2, label=arm, linestyle="-" if "Baseline" in arm else "--")
            ax.fill_between(g["epoch"], scale * (g["mean"] - g["sem"].fillna(0)),
                            scale * (g["mean"] + g["sem"].fillna(0)), alpha=0.2)
        ax.set(xlabel="epoch", ylabel=title, title=title)
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Fig. 3: training curves per epoch (mean ± SEM over seeds; band: SEM)", fontsize=9)
    fig.tight_layout()
    fig.plotted = s
    fig.caption = ("One line per arm (base / row), the mean over seeds per epoch; shaded band: ± SEM (none with one "
                   "seed); solid: the Baseline, dashed: the generators.")
    save(fig, out)
    return fig


def convergence_by_m(df: pd.DataFrame, out=None):
    """The paper's Fig. 4 as it means it: convergence against m, f's test accuracy per epoch for
    each m (draws per training example), mean ± SEM over seeds."""
    d, fixed = noise_size_rows(df)
    if d.empty:
        raise ValueError("no run over m (vpn_noise_size)")
    s = epoch_curves(d.assign(arm=d["base"] + " / " + d["row"] + " m=" + d["noise_draws"].astype(str)),
                     ["arm", "noise_draws"], {"epoch_test_accuracy": CURVES["epoch_test_accuracy"]})
    if s.empty:
        raise ValueError("no per-epoch test accuracy (trials written before VPN recorded it)")
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, g in s.groupby("arm"):
        ax.plot(g["epoch"], 100 * g["mean"], lw=1.2, label=arm)
        ax.fill_between(g["epoch"], 100 * (g["mean"] - g["sem"].fillna(0)), 100 * (g["mean"] + g["sem"].fillna(0)),
                        alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test accuracy of f (%)",
           title="Fig. 4: convergence against m (mean ± SEM over seeds)" + (f"\n{fixed_text(fixed)}" if fixed else ""))
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.plotted = s
    fig.caption = ("One line per number of draws m (base / generator m=...), f's test accuracy per epoch, the mean "
                   "over seeds; shaded band: ± SEM.")
    save(fig, out)
    return fig


FIGURES = {"std_maps": std_maps, "std_history": std_history, "noise_size": noise_size,
           "training_curves": training_curves, "convergence_by_m": convergence_by_m}


# ---------------------------------------------------------------------------------------------
# Findings


def std_on_object_and_background(std_map: np.ndarray, images: np.ndarray, dark: float = 0.1) -> tuple[float, float]:
    """Mean learned std on object pixels and on background pixels: background where the image's
    mean over channels is below `dark` (the data sets' black backgrounds)."""
    bg = np.broadcast_to(images.mean(1, keepdims=True) < dark, std_map.shape)
    return float(std_map[~bg].mean()), float(std_map[bg].mean())


def _background(df: pd.DataFrame) -> list[str]:
    """The std-map claim that applies to the data set, over seeds: on grayscale images (one
    channel) the noise "can only enhance the pixels related to objects" (more std on the object
    than on the background); on colour images it disturbs the background (more std there).
    Tested on log(std on the claimed region / std on the other) per seed."""
    out = []
    source = df.attrs.get("source")
    if not source:
        return out
    trials = _generator_trials(df)
    drawn = ["dataset", "base", "generator", "mode"]
    extra = _varying(trials, {*drawn, "augmentation", "inference"}) if not trials.empty else []
    for key, g in trials.groupby(drawn + extra, dropna=False):  # one configuration each: never pooled
        dataset, base, gen, mode = key[:4]
        where = "; ".join(f"{c}={stats.number(v) if isinstance(v, (int, float)) else v}" for c, v in zip(extra, key[4:]))
        grey = int(g["channels"].iloc[0]) == 1 if "channels" in g.columns else True
        ratios, shown = [], []
        for r in g.drop_duplicates("trial_key").to_dict("records"):
            a = artefacts(source, r["trial_key"])
            if "std_map" not in a:
                continue
            on_fg, on_bg = std_on_object_and_background(a["std_map"], a["std_map_images"])
            claimed, other = (on_fg, on_bg) if grey else (on_bg, on_fg)
            if claimed > 0 and other > 0:
                ratios.append(math.log(claimed / other))
                shown.append(f"{on_fg:.3g} / {on_bg:.3g}")
        if not ratios:
            continue
        claim = "more std on the object than on the background (grayscale: the noise \"can only enhance the " \
                "pixels related to objects\")" if grey else \
            "more std on the background than on the object (colour: the noise \"should blur the background\")"
        est = stats.estimate(np.array(ratios))
        inert = inert_reason(g["std_ratio"].mean(), inert_threshold(g))
        out.append(f"[{dataset}, {base}, {gen} {mode}{'; ' + where if where else ''}] Claim (Fig. 1): {claim}? "
                   f"Learned std on object / background "
                   f"per seed: {'; '.join(shown)}; log ratio (claimed region over the other) = "
                   f"{est.text(scale=1, unit='')}: {stats.verdict(est, scale=1, unit='', inert=inert)}.")
    return out


def inert_threshold(rows: pd.DataFrame) -> float:
    """The rows' own `inert_std_ratio` (an evaluation field; INERT for rows written before it)."""
    if "inert_std_ratio" in rows.columns and rows["inert_std_ratio"].notna().any():
        return float(rows["inert_std_ratio"].dropna().max())
    return INERT


def inert_reason(ratio: float, threshold: float = INERT) -> str:
    """Why a generator's claim is "inert", not undecided: it learned no noise ("" if it learned some)."""
    if not ratio < threshold:  # NaN (not recorded) is not inert
        return ""
    return (f"the generator learned no noise: its learned std is {ratio:.4f} of the input's (below "
            f"inert_std_ratio {threshold:g}), so there is no noise effect to decide")


def about_equal(est: stats.Estimate, margin: float = stats.MARGIN, inert: str = "", a: str = "a",
                b: str = "b") -> tuple[str, str]:
    """An equality claim ("about equal") of arms a and b (`est` is a - b) as two non-inferiority
    checks at `margin`, one each way: it holds only when both hold, i.e. the whole 95% interval
    of a - b lies inside ±margin (an equivalence test at 2.5% per side, stricter than the usual
    90% TOST); it does not hold when the interval lies wholly beyond one end. Returns (word, text)."""
    up = stats.verdict(est, +1, margin=margin, inert=inert)
    down = stats.verdict(est, -1, margin=margin, inert=inert)
    words = {up.word, down.word}
    word = "inert" if "inert" in words else "holds" if words == {"holds"} else \
        "does not hold" if "does not hold" in words else "undecided"
    if str(up) == str(down):
        return word, str(up)
    return word, f"{word} ({a} not below {b} by more than the margin: {up}; {b} not below {a} by more than it: {down})"


def _arm(rows: pd.DataFrame) -> str:
    return stats.cell(rows["accuracy"], unit="%")


def findings(df: pd.DataFrame, margin: float = stats.MARGIN) -> list[str]:
    """One sentence per claim and cell (dataset, base; generator, mode; m), each with the claim,
    the estimate over seeds (95% interval, p) and the verdict of analysis.stats: generator vs
    baseline ("inert" when the generator learned no noise), noise at test vs without (about equal, within
    ±margin both ways), Random Noise's seed-to-seed spread (descriptive), Fig. 4's accuracy at
    each m against the smallest m (about equal), and the std maps' background."""
    d = vpn_rows(df)
    if d.empty:
        return []
    note = label_note(d)
    out: list[str] = [note] if note else []
    d, fixed = one_setting(d)
    where_fixed = f"; {fixed_text(fixed)}" if fixed else ""
    d = labelled(d)
    pts = f"{100 * margin:g} point{'s' if 100 * margin != 1 else ''}"
    for (dataset, base), g in d.groupby(["dataset", "base"]):
        where = f"[{dataset}, {base}{where_fixed}]"
        baseline = g[(g["generator"] == "none") & (g["augmentation"] == "none")]
        generators = g[g["generator"] != "none"]
        for (gen, mode), rows in generators.groupby(["generator", "mode"]):
            scored, clean = rows[rows["inference"] == "vpn"], rows[rows["inference"] == "clean"]
            if scored.empty:
                continue
            name = scored["row"].iloc[0]
            ratio = scored["std_ratio"].mean()
            inert = inert_reason(ratio, inert_threshold(scored))
            kind = f"{name} ({mode}{', inert' if inert else ''})"
            if not baseline.empty:
                arms = pd.concat([scored.assign(arm="generator"), baseline.assign(arm="baseline")])
                est = stats.compare(arms, "arm", "generator", "baseline")
                verdict = stats.verdict(est, +1, inert=inert)
                out.append(f"{where} Claim: the generator {kind} beats the {baseline['row'].iloc[0]} "
                           f"(Algorithm 2 vs f trained without noise). {_arm(scored)} vs {_arm(baseline)}: "
                           f"{est.text()}: {verdict}. Learned std {ratio:.4g} of the input's; label-leak rate "
                           f"{scored['label_leak_rate'].mean():.3f} (chance 1/C).")
            if not clean.empty:
                est = stats.compare(rows, "inference", "vpn", "clean")
                _, text = about_equal(est, margin, inert, "with noise", "without")
                out.append(f"{where} Claim (the paper: test-time noise is not necessary): {kind} scores about the "
                           f"same with noise at test as without it, within ±{pts} both ways (two non-inferiority "
                           f"checks). {_arm(scored)} vs {_arm(clean)} ({clean['row'].iloc[0]}): {est.text()}: "
                           f"{text}.")
        out += _random_noise(g, where)
    out += noise_size_findings(df, margin)
    return out + clean_term_findings(df) + _background(df)


def clean_term_findings(df: pd.DataFrame) -> list[str]:
    """Eq. 13 as the paper writes it (a clean cross-entropy term, clean_loss_weight lambda > 0)
    against the authors' lambda 0: the generator's accuracy (paired over seeds) and its learned
    std, per (dataset, base, generator, mode)."""
    d = vpn_rows(df)
    if d.empty or "clean_loss_weight" not in d.columns or d["clean_loss_weight"].nunique() < 2:
        return []
    d, fixed = one_setting(d[(d["generator"] != "none") & (d["inference"] == "vpn")], DRAWN | {"clean_loss_weight"})
    out = []
    for (dataset, base, gen, mode), g in d.groupby(["dataset", "base", "generator", "mode"]):
        weights = sorted(g["clean_loss_weight"].unique())
        if len(weights) < 2 or weights[0] != 0:
            continue
        where = f"[{dataset}, {base}" + (f"; {fixed_text(fixed)}" if fixed else "") + "]"
        zero = g[g["clean_loss_weight"] == 0]
        for w in weights[1:]:
            at = g[g["clean_loss_weight"] == w]
            est = stats.compare(g, "clean_loss_weight", w, 0.0)
            out.append(f"{where} The clean term of Eq. 13 (lambda {w:g} against the authors' 0), {gen} generator "
                       f"({mode}): accuracy {_arm(at)} vs {_arm(zero)}, lambda {w:g} - 0 = {est.text()} (measured, "
                       f"no claim of the paper to test); learned std {at['std_ratio'].mean():.4g} vs "
                       f"{zero['std_ratio'].mean():.4g} of the input's"
                       + ("; both below inert_std_ratio: neither generator learned noise"
                          if max(at["std_ratio"].mean(), zero["std_ratio"].mean()) < inert_threshold(g) else "") + ".")
    return out


def _random_noise(g: pd.DataFrame, where: str) -> list[str]:
    """Random Noise's seed-to-seed spread beside the joint generators' (stats.spread); no verdict."""
    rn = g[(g["generator"] == "none") & (g["augmentation"] == "pixel_noise")]
    gens = g[(g["generator"] != "none") & (g["inference"] == "vpn") & (g["mode"] == "joint")]
    if rn["seed"].nunique() < 2 or gens.empty:
        return []
    s = stats.spread(pd.concat([rn, gens]), ["row"], "accuracy").set_index("row")
    show = lambda r: (f"{r.name} {100 * r['std']:.2f} (range {100 * r['min']:.2f}-{100 * r['max']:.2f}, "
                      f"{int(r['count'])} seeds)")
    first = s.loc[rn["row"].iloc[0]]
    others = [show(r) for name, r in s.iterrows() if name != first.name and np.isfinite(r["std"])]
    if not others:
        return []
    return [f"{where} Claim (the paper): random noise is unstable, the generators stable. Seed-to-seed std of "
            f"accuracy in points: {show(first)} vs {', '.join(others)}. Reported as measured, no verdict: the rule "
            "tests differences of means, and a std over so few seeds is itself uncertain by a large factor."]


def noise_size_findings(df: pd.DataFrame, margin: float = stats.MARGIN) -> list[str]:
    """Fig. 4's claim, per cell: the accuracy at each m is about that at the smallest m (within
    ±margin both ways; "inert" where either arm's generator learned no noise)."""
    d, fixed = noise_size_rows(df)
    out: list[str] = []
    if d.empty:
        return out
    pts = f"{100 * margin:g} point{'s' if 100 * margin != 1 else ''}"
    for (dataset, base, mode, name), g in d.groupby(["dataset", "base", "mode", "row"]):
        ms = sorted(g["noise_draws"].unique())
        ref = g[g["noise_draws"] == ms[0]]
        where = f"[{dataset}, {base}" + (f"; {fixed_text(fixed)}" if fixed else "") + "]"
        for m in ms[1:]:
            at = g[g["noise_draws"] == m]
            est = stats.compare(g, "noise_draws", m, ms[0])
            inert = inert_reason(min(at["std_ratio"].mean(), ref["std_ratio"].mean()), inert_threshold(g))
            _, text = about_equal(est, margin, inert, f"m={m:g}", f"m={ms[0]:g}")
            out.append(f"{where} Claim (Fig. 4): the {name} generator ({mode}) reaches about the same accuracy with "
                       f"m={m:g} noise draws per example as with m={ms[0]:g}, within ±{pts} both ways. {_arm(at)} vs "
                       f"{_arm(ref)}: {est.text()}: {text}.")
    return out


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: Tables I/II and IV, diagnostics, figures, findings."""
    tables_ = []
    d = vpn_rows(df)
    note = f"; {label_note(d)}" if not d.empty and unlabelled(d) else ""
    for mode in ("joint", "frozen"):
        if d.empty or (mode == "frozen" and not (d["mode"] == "frozen").any()):
            continue
        t = table(df, mode)
        if t.empty:
            continue
        fixed = fixed_text(t.attrs.get("fixed", {}))
        tables_.append((f"{t.index.name} layout ({mode} generators): accuracy % mean ± SEM over seeds; paper's "
                        "value in brackets only where the protocol matches" + (f"; {fixed}" if fixed else "")
                        + note, t))
    diag = diagnostics(df)
    if not diag.empty:
        tables_.append((f"Diagnostics of the VPN rows: accuracy % mean ± SEM, learned std / input std (inert below "
                        f"{INERT:g}), label-leak rate (chance 1/C)", diag.reset_index()))
    made, skipped, captions = draw(FIGURES, df, out)
    return {"title": "Variational positive-incentive noise (variational-pi-noise)", "tables": tables_,
            "figures": made, "captions": captions, "skipped": skipped, "findings": findings(df)}

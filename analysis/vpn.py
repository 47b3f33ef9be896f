"""The VPN family's analysis (variational-pi-noise): Tables I/II and IV, std maps, findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "vpn". A table
reads one configuration: configuration columns that vary and are not drawn (e.g. noise_draws in
a Fig. 4 run) are fixed to one value and the caption says which.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import stats
from analysis.figures import draw, plt, save
from analysis.load import artefacts
from analysis.stats import fixed_text, ok_rows, protocol_differences, summarize

FAMILY = "vpn"

KNOWN_CONFIG = ("dataset", "image_size", "channels", "base", "generator", "mode", "augmentation", "noise_draws",
                "std_activation", "std_cap", "label_coeff", "generator_init_std", "clean_loss_weight", "epochs",
                "steps", "batch_size", "lr", "scheduler", "n_draws", "inference")
PREFERRED = {"mode": "joint", "noise_draws": 1, "n_draws": 1, "std_activation": "abs", "clean_loss_weight": 0.0}
IGNORED = {"eval_batch_size", "std_map_images"}  # fields that do not change accuracy
DRAWN = {"dataset", "base", "generator", "augmentation", "inference", "mode"}  # a table's rows and columns

BASELINE_LABELS = {"none": "Baseline", "rotation": "Random Rotation", "translation": "Random Translation",
                   "color_jitter": "Color Jitter", "blur": "Gaussian Blur", "pixel_noise": "Random Noise"}
GENERATOR_LABELS = {"dnn3": "DNN3", "resnet18": "ResNet18"}
ORDER = [*BASELINE_LABELS.values(), *(f"{g}{s}" for g in GENERATOR_LABELS.values() for s in ("", " (No Noise)"))]
BASE_LABELS = {"softmax_regression": "SR", "dnn3": "DNN3", "resnet18": "Res18", "resnet34": "Res34",
               "resnet50": "Res50", "vit_small": "ViT"}

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


def row_label(r) -> str:
    """The paper's row name of a result row."""
    if r.get("generator", "none") in (None, "none") or pd.isna(r.get("generator")):
        return BASELINE_LABELS.get(r.get("augmentation"), str(r.get("augmentation")))
    name = GENERATOR_LABELS.get(r["generator"], str(r["generator"]))
    return name + (" (No Noise)" if r.get("inference") == "clean" else "")


def labelled(d: pd.DataFrame) -> pd.DataFrame:
    d = d.copy()
    d["row"] = [row_label(r) for r in d.to_dict("records")]
    d["column"] = [f"{r['dataset']} {BASE_LABELS.get(r['base'], r['base'])}" for r in d.to_dict("records")]
    return d


def _with_paper(d: pd.DataFrame, s: pd.DataFrame) -> pd.DataFrame:
    """Add the paper's number in brackets where the protocol of those rows matches it."""
    out = {}
    for (row, col), g in d.groupby(["row", "column"]):
        dataset, base = g["dataset"].iloc[0], g["base"].iloc[0]
        paper = PAPER_TABLE1.get((str(dataset), str(base)), {}).get(row)
        if paper is not None and comparable(g, str(dataset), str(base)):
            out[(row, col)] = paper
    cell = s.apply(lambda r: stats_fmt(r["mean"], r["sem"]) + (f" (paper {out[(r['row'], r['column'])]:.2f})"
                                                               if (r["row"], r["column"]) in out else ""), axis=1)
    return s.assign(cell=cell)


def stats_fmt(mean, sem) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * sem:.2f}" if not (sem is None or math.isnan(sem)) else "")


def table(df: pd.DataFrame, mode: str = "joint") -> pd.DataFrame:
    """Tables I/II (mode joint) or IV (mode frozen, beside the baselines): rows as the paper's,
    columns "dataset base", cells accuracy % mean ± SEM over seeds (paper's value in brackets
    where the protocol matches). attrs["fixed"] says what was fixed to read one configuration."""
    d = vpn_rows(df)
    if d.empty:
        return pd.DataFrame()
    d = d[(d["generator"] == "none") | (d["mode"] == mode)]
    d, fixed = stats.one_setting(d, DRAWN, PREFERRED, KNOWN_CONFIG, IGNORED)
    if d.empty:
        return pd.DataFrame()
    d = labelled(d)
    s = _with_paper(d, summarize(d, ["row", "column"]))
    t = s.pivot(index="row", columns="column", values="cell")
    t = t.reindex([r for r in ORDER if r in t.index] + [r for r in t.index if r not in ORDER])
    t.index.name = "Table IV" if mode == "frozen" else "Table I/II"
    t.attrs["fixed"] = fixed
    return t


def diagnostics(df: pd.DataFrame) -> pd.DataFrame:
    """Per generator trial kind: the learned std relative to the input's std, and the label-leak
    rate (chance: 1/C when f ignores the noise), mean over seeds, beside the VPN accuracy."""
    d = vpn_rows(df)
    d = d[(d["inference"] == "vpn")] if "inference" in d.columns else d.iloc[:0]
    if d.empty:
        return pd.DataFrame()
    by = [c for c in ("dataset", "base", "generator", "mode", "noise_draws") if c in d.columns]
    g = d.groupby(by, dropna=False)
    return pd.DataFrame({"accuracy %": 100 * g["accuracy"].mean(), "std_ratio": g["std_ratio"].mean(),
                         "label_leak_rate": g["label_leak_rate"].mean(), "seeds": g["seed"].nunique()}).round(4)


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
    fig, axes = plt.subplots(len(got), 2 * k, figsize=(1.4 * 2 * k, 1.6 * len(got)), squeeze=False)
    for i, (r, a) in enumerate(got):
        for j in range(k):
            img, sd = a["std_map_images"][j], a["std_map"][j]
            axes[i, 2 * j].imshow(np.moveaxis(img, 0, -1).squeeze(), cmap="gray", vmin=0, vmax=1)
            axes[i, 2 * j + 1].imshow(np.moveaxis(sd, 0, -1).mean(-1), cmap="magma")
            axes[i, 2 * j].set_title(f"y={int(a['std_map_labels'][j])}", fontsize=7)
            axes[i, 2 * j + 1].set_title(f"σ max {sd.max():.3g}", fontsize=7)
        axes[i, 0].set_ylabel(f"{r['base']}\n{r['generator']} {r['mode']}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Learned std maps beside their images (true label; first seed)", fontsize=9)
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
    ax.legend(fontsize=6)
    save(fig, out)
    return fig


FIGURES = {"std_maps": std_maps, "std_history": std_history}


# ---------------------------------------------------------------------------------------------
# Findings


def _msem(values) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"), len(v)


def _background(df: pd.DataFrame) -> list[str]:
    """Does the std map light up the background? Mean std on dark pixels (< 0.1) vs the rest."""
    out = []
    source = df.attrs.get("source")
    if not source:
        return out
    for r in _generator_trials(df).drop_duplicates(["dataset", "base", "generator", "mode"]).to_dict("records"):
        a = artefacts(source, r["trial_key"])
        if "std_map" not in a:
            continue
        bg = a["std_map_images"].mean(1, keepdims=True) < 0.1
        bg = np.broadcast_to(bg, a["std_map"].shape)
        on_bg, on_fg = a["std_map"][bg].mean(), a["std_map"][~bg].mean()
        out.append(f"[{r['dataset']}, {r['base']}, {r['generator']} {r['mode']}, seed {r['seed']}] Learned std on "
                   f"background pixels {on_bg:.3g} vs on the object {on_fg:.3g} (ratio {on_bg / max(on_fg, 1e-12):.2f}; "
                   "the paper's Fig. 1 shows the background lit up).")
    return out


def findings(df: pd.DataFrame) -> list[str]:
    """One sentence per claim and (dataset, base): generator vs baseline (with SEM over seeds;
    "undecided" within 2 SEM or when the noise is negligible), Random Noise's instability, and
    the two diagnostics."""
    d = vpn_rows(df)
    out: list[str] = []
    if d.empty:
        return out
    d, fixed = stats.one_setting(d, DRAWN | {"mode"}, PREFERRED, KNOWN_CONFIG, IGNORED)
    note = f" ({fixed_text(fixed)})" if fixed else ""
    d = labelled(d)
    for (dataset, base), g in d.groupby(["dataset", "base"]):
        where = f"[{dataset}, {base}{note}]"
        acc = {label: gg.sort_values("seed")["accuracy"].tolist() for label, gg in g.groupby("row")}
        if "Baseline" not in acc:
            continue
        b, bs, bn = _msem(acc["Baseline"])
        for gen in GENERATOR_LABELS.values():
            for mode in ("joint", "frozen"):
                rows = g[(g["row"] == gen) & (g["mode"] == mode)]
                if rows.empty:
                    continue
                m, s, n = _msem(rows["accuracy"])
                diff = m - b
                se = math.hypot(s, bs) if not (math.isnan(s) or math.isnan(bs)) else float("nan")
                ratio = rows["std_ratio"].mean()
                leak = rows["label_leak_rate"].mean()
                if math.isnan(se):
                    verdict = "undecided (one seed: no SEM)"
                elif abs(diff) <= 2 * se:
                    verdict = f"undecided (within 2 SEM = {200 * se:.2f} points)"
                else:
                    verdict = "holds" if diff > 0 else "does not hold"
                if ratio < 0.01:
                    verdict += f"; the learned noise is negligible (std {ratio:.4f} of the input's), so any difference is not the noise's"
                out.append(f"{where} Generator {gen} ({mode}) vs Baseline: {100 * m:.2f} ± {100 * s:.2f}% vs "
                           f"{100 * b:.2f} ± {100 * bs:.2f}% ({100 * diff:+.2f} points, {n} vs {bn} seeds): {verdict}. "
                           f"Label-leak rate {leak:.3f} (chance 1/C).")
                clean = g[(g["row"] == f"{gen} (No Noise)") & (g["mode"] == mode)]
                if not clean.empty:
                    c, cs, _ = _msem(clean["accuracy"])
                    out.append(f"{where} {gen} ({mode}) with noise at test vs without: {100 * m:.2f}% vs {100 * c:.2f}% "
                               f"({100 * (m - c):+.2f} points; the paper finds them about equal).")
        if "Random Noise" in acc and len(acc["Random Noise"]) > 1:
            rn = np.std(acc["Random Noise"], ddof=1)
            gens = [np.std(gg["accuracy"], ddof=1) for label, gg in g[g["mode"] == "joint"].groupby("row")
                    if label in GENERATOR_LABELS.values() and len(gg) > 1]
            if gens:
                out.append(f"{where} Seed-to-seed std: Random Noise {100 * rn:.2f} points vs generators "
                           f"{', '.join(f'{100 * v:.2f}' for v in gens)} (the paper calls random noise unstable).")
    return out + _background(df)


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: Tables I/II and IV, diagnostics, figures, findings."""
    tables_ = []
    d = vpn_rows(df)
    for mode in ("joint", "frozen"):
        if d.empty or (mode == "frozen" and not (d["mode"] == "frozen").any()):
            continue
        t = table(df, mode)
        if t.empty:
            continue
        fixed = fixed_text(t.attrs.get("fixed", {}))
        tables_.append((f"{t.index.name} layout ({mode} generators): accuracy % mean ± SEM over seeds; paper's "
                        "value in brackets only where the protocol matches" + (f"; {fixed}" if fixed else ""), t))
    diag = diagnostics(df)
    if not diag.empty:
        tables_.append(("Diagnostics of the VPN rows: learned std / input std, label-leak rate (chance 1/C)",
                        diag.reset_index()))
    made, skipped = draw(FIGURES, df, out)
    return {"title": "Variational positive-incentive noise (variational-pi-noise)", "tables": tables_,
            "figures": made, "skipped": skipped, "findings": findings(df)}

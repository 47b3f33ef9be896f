"""The NINR family's analysis (noise-injection-nodes): phase diagram, the poster's table,
accuracy-against-strength curves, NIW trajectories, findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "ninr". Tables and
figures keep apart every configuration column that varies (a column they do not draw is fixed to
one value and the caption says which); the seeds are what is averaged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import stats
from analysis.figures import draw, plt, save
from analysis.load import artefacts
from analysis.stats import fixed_text, ok_rows, protocol_differences

FAMILY = "ninr"

KNOWN_CONFIG = ("dataset", "image_size", "channels", "arch", "regularizer", "placement", "sigma_eps", "l2",
                "dropout_rate", "cdt_std", "optimizer", "lr", "momentum", "batch_size", "epochs", "steps",
                "scheduler", "niw_init_scale", "fc_widths", "cnn_channels", "cnn_hidden", "mlp3_width", "test_noise",
                "corruption", "strength")
IGNORED = {"eval_batch_size", "trajectory_points", "hessian_points", "hessian_iters", "hessian_batch",
           "phase_growth", "phase_shrink", "phase_divergence"}  # measurement settings, not results
METHOD_FIELDS = {"regularizer", "placement", "sigma_eps", "cdt_std", "l2", "dropout_rate"}
DRAWN = {"arch", "corruption", "strength"} | METHOD_FIELDS
PREFERRED = {"test_noise": False}
UNSTRUCTURED = ("gaussian_noise", "impulse_noise")
STRUCTURED = ("blur", "contrast", "rotation")

# The poster's clean Fashion-MNIST accuracy (%), mean +- its spread: (arch, column) -> (mean, +-).
POSTER = {
    "fc": {"none": (87.7, 2.6), "L2": (89.9, 3.4), "dropout": (88.3, 0.5), "in-NINR (decay)": (89.1, 0.7),
           "in-NINR (catapult)": (86.2, 0.8), "full-NINR (decay)": (88.5, 1.8), "full-NINR (catapult)": (88.2, 0.6),
           "CDT (0.2)": (86.6, 0.9), "CDT (0.4)": (85.5, 3.8)},
    "cnn": {"none": (91.0, 1.0), "L2": (92.2, 0.7), "dropout": (91.0, 1.1), "in-NINR (decay)": (91.0, 1.2),
            "in-NINR (catapult)": (89.0, 0.6), "full-NINR (decay)": (91.0, 0.8), "full-NINR (catapult)": (90.0, 0.2),
            "CDT (0.2)": (84.6, 2.6), "CDT (0.4)": (84.1, 6.4)},
}
# What must match for a poster number to sit beside ours (its data set; the rest it does not say).
POSTER_PROTOCOL = {"dataset": "fashion_mnist", "image_size": 28, "channels": 1}


def ninr_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = ok_rows(df)
    return d[d["method"] == "ninr"] if "method" in d.columns else d


def method_label(r) -> str:
    """Our name of a row's regulariser, with its strength."""
    reg = r.get("regularizer")
    if reg == "ninr":
        return f"{r.get('placement')}-NINR σ={float(r.get('sigma_eps')):g}"
    if reg == "cdt":
        return f"CDT ({float(r.get('cdt_std')):g})"
    return {"none": "none", "l2": "L2", "dropout": "dropout"}.get(reg, str(reg))


def poster_column(label: str, phase: str) -> str | None:
    """The poster's column for our label: NINR by the phase the runs measured, not by intent."""
    if "NINR" in label:
        return f"{label.split('-NINR')[0]}-NINR ({phase})" if phase in ("decay", "catapult") else None
    return label if label in POSTER["fc"] else None


def _labelled(d: pd.DataFrame) -> pd.DataFrame:
    d = d.copy()
    d["label"] = [method_label(r) for r in d.to_dict("records")]
    return d


def _msem(values) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"), len(v)


def _majority(values) -> str:
    values = [v for v in values if isinstance(v, str) and v]
    return pd.Series(values).mode().iloc[0] if values else ""


def compare_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The comparison's rows (FC/CNN), of one configuration apart from what the table draws."""
    d = ninr_rows(df)
    d = d[d["arch"].isin(["fc", "cnn"])] if "arch" in d.columns else d.iloc[0:0]
    if d.empty:
        return d, {}
    d, fixed = stats.one_setting(d, DRAWN, PREFERRED, KNOWN_CONFIG, IGNORED)
    return _labelled(d), fixed


def _diverged(df: pd.DataFrame) -> dict:
    """(label, arch) -> how many FC/CNN trials diverged (they have no accuracy to average)."""
    if "status" not in df.columns or "arch" not in df.columns:
        return {}
    d = df[(df["status"] == "diverged") & df["arch"].isin(["fc", "cnn"])]
    if "method" in d.columns:
        d = d[d["method"] == "ninr"]
    if d.empty:
        return {}
    d = _labelled(d)
    return d.drop_duplicates("trial_key").groupby(["label", "arch"]).size().to_dict()


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Clean accuracy % per regulariser (rows) and model (columns), mean ± SEM over seeds, the
    measured phase of NINR rows, and the poster's value in brackets where the protocol matches."""
    d, fixed = compare_rows(df)
    d = d[d["corruption"] == "clean"] if not d.empty else d
    if d.empty:
        return pd.DataFrame()
    diverged = _diverged(df)
    cells = {}
    for (label, arch), g in d.groupby(["label", "arch"]):
        m, s, n = _msem(g["accuracy"])
        phase = _majority(g["measured_phase"]) if "measured_phase" in g.columns else ""
        text = f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if not math.isnan(s) else "") + f" (n={n})"
        if diverged.get((label, arch)):
            text += f" +{diverged[(label, arch)]} diverged"
        if phase:
            text += f" [{phase}]"
        col = poster_column(label, phase)
        if col and not protocol_differences(g, POSTER_PROTOCOL) and arch in POSTER:
            pm, ps = POSTER[arch][col]
            text += f" (poster {pm} ± {ps})"
        cells.setdefault(label, {})[arch] = text
    for (label, arch), k in diverged.items():
        cells.setdefault(label, {}).setdefault(arch, f"all {k} trials diverged")
    t = pd.DataFrame(cells).T.sort_index()
    t.index.name = "regulariser"
    t.attrs["fixed"] = fixed
    return t


def phase_rows(df: pd.DataFrame) -> pd.DataFrame:
    """NINR rows with a phase: finished runs (measured by the rule) and diverged ones (the training
    stopped on a non-finite loss: divergent by the same rule; their lambda is not measured)."""
    d = df[df["status"].isin(["ok", "diverged"])] if "status" in df.columns else df
    d = d[d["method"] == "ninr"] if "method" in d.columns else d
    if d.empty or "regularizer" not in d.columns:
        return d.iloc[0:0]
    d = d[d["regularizer"] == "ninr"].copy()
    diverged = d["status"].eq("diverged") if "status" in d.columns else pd.Series(False, index=d.index)
    d.loc[diverged, "measured_phase"] = "divergent"
    return d[d["measured_phase"].astype(str).ne("")]


def curvature_per_noise(rows: pd.DataFrame) -> float:
    """The median over runs of lambda / sigma_eps^2 at step 0 (lambda carries sigma_eps^2)."""
    h = (rows["hessian_top_init"] / rows["sigma_eps"].astype(float) ** 2).replace([np.inf, -np.inf], np.nan).dropna()
    h = h[h > 0]
    return float(h.median()) if len(h) else float("nan")


def phase_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, sigma_eps, lr): the measured phase (most common over seeds), the predicted one,
    lr * lambda at step 0, and the final training loss. A diverged run has no lambda of its own:
    its prediction uses lr * sigma^2 * h, h the arch's median lambda / sigma^2 ("lambda from")."""
    d = phase_rows(df)
    d = d[d["arch"].isin(["linear_toy", "mlp3"])] if not d.empty else d
    if d.empty:
        return pd.DataFrame()
    d = d.copy()
    d["lambda_from"] = np.where(d["eta_lambda"].notna(), "run", "median h")
    for arch, rows in d.groupby("arch"):
        h = curvature_per_noise(rows)
        miss = (d["arch"] == arch) & d["eta_lambda"].isna()
        d.loc[miss, "eta_lambda"] = d.loc[miss, "lr"] * d.loc[miss, "sigma_eps"].astype(float) ** 2 * h
        d.loc[miss, "predicted_phase"] = ["catapult" if abs(1 - v) >= 1 else ("n/a" if np.isnan(v) else "decay")
                                          for v in d.loc[miss, "eta_lambda"]]
    g = d.groupby(["arch", "sigma_eps", "lr"])
    return pd.DataFrame({"measured": g["measured_phase"].agg(_majority), "predicted": g["predicted_phase"].agg(_majority),
                         "lr*lambda": g["eta_lambda"].mean(), "lambda from": g["lambda_from"].agg(_majority),
                         "NIW norm final/initial": (g["niw_norm_final"].mean() / g["niw_norm_init"].mean()),
                         "final loss": g["final_loss"].mean(), "seeds": g["seed"].nunique()}).reset_index()


def agrees(measured: str, predicted: str) -> bool:
    """The boundary |1 - lr*lambda| >= 1 predicts catapult-or-worse, so divergent agrees with it."""
    return measured == predicted or (predicted == "catapult" and measured == "divergent")


# ---------------------------------------------------------------------------------------------
# Figures

PHASE_COLOURS = {"decoupled": "tab:gray", "decay": "tab:green", "catapult": "tab:orange", "divergent": "tab:red"}


def phase_diagram(df: pd.DataFrame, out=None):
    """sigma_eps x lr per arch, coloured by the measured phase; the predicted boundary
    lr * sigma^2 * h = 2 drawn over it, h the median of lambda / sigma^2 over the arch's runs."""
    t = phase_table(df)
    if t.empty:
        raise ValueError("no ninr_phases rows (in-NINR on linear_toy or mlp3)")
    archs = sorted(t["arch"].unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), squeeze=False)
    d = phase_rows(df)
    for ax, arch in zip(axes[0], archs):
        g = t[t["arch"] == arch]
        for phase, colour in PHASE_COLOURS.items():
            p = g[g["measured"] == phase]
            ok = [agrees(m, q) for m, q in zip(p["measured"], p["predicted"])]
            ax.scatter(p["sigma_eps"][ok], p["lr"][ok], c=colour, marker="o", s=60, label=f"{phase}")
            ax.scatter(p["sigma_eps"][[not o for o in ok]], p["lr"][[not o for o in ok]], c=colour, marker="X", s=70)
        h = curvature_per_noise(d[d["arch"] == arch])
        if not np.isnan(h):
            s = np.logspace(np.log10(g["sigma_eps"].min()), np.log10(g["sigma_eps"].max()), 100)
            ax.plot(s, 2 / (s ** 2 * h), "k--", lw=1, label="lr·λ = 2 (predicted)")
            ax.set_ylim(g["lr"].min() / 2, g["lr"].max() * 2)
        ax.set(xscale="log", yscale="log", xlabel="σ_eps", ylabel="learning rate", title=f"{arch}: measured phase")
        ax.legend(fontsize=6, title="o agrees with prediction, X not", title_fontsize=6)
    fig.tight_layout()
    fig.plotted = t
    save(fig, out)
    return fig


def robustness(df: pd.DataFrame, out=None):
    """Accuracy against corruption strength, one panel per (arch, corruption), one line per regulariser."""
    d, fixed = compare_rows(df)
    d = d[d["corruption"] != "clean"] if not d.empty else d
    if d.empty:
        raise ValueError("no corrupted-test rows of FC or CNN")
    clean, _ = compare_rows(df)
    clean = clean[clean["corruption"] == "clean"]
    archs, corruptions = sorted(d["arch"].unique()), sorted(d["corruption"].unique())
    fig, axes = plt.subplots(len(archs), len(corruptions), figsize=(3 * len(corruptions), 2.6 * len(archs)),
                             squeeze=False)
    s = stats.summarize(pd.concat([d, *[clean.assign(corruption=c) for c in corruptions]]),
                        ["arch", "corruption", "label", "strength"])
    colours = {label: plt.cm.tab10(k % 10) for k, label in enumerate(sorted(s["label"].unique()))}
    for i, arch in enumerate(archs):
        for j, c in enumerate(corruptions):
            ax = axes[i, j]
            for label, g in s[(s["arch"] == arch) & (s["corruption"] == c)].groupby("label"):
                g = g.sort_values("strength")
                ax.errorbar(g["strength"], 100 * g["mean"], yerr=100 * g["sem"].fillna(0), marker="o", ms=3,
                            capsize=2, lw=1, label=label, linestyle="-" if "NINR" in label else ":",
                            color=colours[label])
            ax.set_title(f"{arch}: {c}", fontsize=8)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("accuracy (%)", fontsize=7)
    handles = [plt.Line2D([], [], color=c, linestyle="-" if "NINR" in k else ":", label=k) for k, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=6)
    fig.suptitle("Accuracy against corruption strength (mean ± SEM over seeds)"
                 + (f"; {fixed_text(fixed)}" if fixed else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.plotted = s
    save(fig, out)
    return fig


def niw_trajectories(df: pd.DataFrame, out=None):
    """The NIW norm over training (relative to its start), one line per sigma_eps, per arch, at the
    middle learning rate of the phase study; first seed. Needs the trials' artefacts."""
    d = phase_rows(df)
    source = df.attrs.get("source")
    if d.empty or not source:
        raise ValueError("no NINR trials with a results folder to read artefacts from")
    archs = sorted(d["arch"].unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        g = d[d["arch"] == arch]
        lrs = sorted(g["lr"].unique())
        lr = lrs[len(lrs) // 2]
        for r in g[(g["lr"] == lr)].sort_values(["sigma_eps", "seed"]).drop_duplicates("sigma_eps").to_dict("records"):
            a = artefacts(source, r["trial_key"])
            if "niw_norm" not in a:
                continue
            ax.plot(a["niw_norm_steps"], a["niw_norm"] / a["niw_norm"][0], lw=1,
                    color=PHASE_COLOURS.get(r["measured_phase"], "k"), label=f"σ={r['sigma_eps']:g} ({r['measured_phase']})")
        ax.set(yscale="log", xlabel="step", ylabel="NIW norm / initial", title=f"{arch}, lr {lr:g}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, out)
    return fig


FIGURES = {"phase_diagram": phase_diagram, "robustness": robustness, "niw_trajectories": niw_trajectories}


# ---------------------------------------------------------------------------------------------
# Findings


def _verdict(diff: float, se: float, claim_positive: bool = True) -> str:
    if math.isnan(se):
        return "undecided (one seed: no SEM)"
    if abs(diff) <= 2 * se:
        return f"undecided (within 2 SEM = {200 * se:.2f} points)"
    return "holds" if (diff > 0) == claim_positive else "does not hold"


def _paired(g: pd.DataFrame, a: str, b: str, corruptions) -> tuple[float, float, int]:
    """Mean over seeds of (accuracy of a - accuracy of b), averaged over `corruptions` and their
    strengths seed by seed, with its SEM over seeds."""
    rows = g[g["corruption"].isin(corruptions)]
    per = rows.groupby(["label", "seed"])["accuracy"].mean().unstack("label")
    if a not in per.columns or b not in per.columns:
        return float("nan"), float("nan"), 0
    diff = (per[a] - per[b]).dropna()
    if diff.empty:
        return float("nan"), float("nan"), 0
    return _msem(diff)


def findings(df: pd.DataFrame) -> list[str]:
    """Convergence, the phases against the boundary, 'NINR keeps clean accuracy', and 'NINR gains
    most under unstructured noise', each with numbers and a verdict."""
    out: list[str] = []
    t = phase_table(df)
    if not t.empty:
        for arch, g in t.groupby("arch"):
            scored = g[g["predicted"] != "n/a"]
            agree = sum(agrees(m, p) for m, p in zip(scored["measured"], scored["predicted"]))
            counts = ", ".join(f"{k} {v}" for k, v in g["measured"].value_counts().items())
            out.append(f"[{arch}] Phases measured over {len(g)} (sigma_eps, lr) cells: {counts}. The measured phase "
                       f"agrees with the stability prediction in {agree} of {len(scored)} cells.")
    d, fixed = compare_rows(df)
    if d.empty:
        return out
    note = f" ({fixed_text(fixed)})" if fixed else ""
    diverged = _diverged(df)
    for arch, g in d.groupby("arch"):
        clean = g[g["corruption"] == "clean"]
        where = f"[{arch}{note}]"
        base = clean[clean["label"] == "none"]
        if base.empty:
            continue
        b, bs, bn = _msem(base["accuracy"])
        loss_ok = (base["final_loss"] < base["initial_loss"]).all()
        out.append(f"{where} Converged: unregularised clean accuracy {100 * b:.1f} ± {100 * bs:.1f}% over {bn} seeds "
                   f"(chance {100 / base['num_classes'].iloc[0]:.0f}%); final training loss below the first in "
                   f"{'every' if loss_ok else 'not every'} run.")
        for label in sorted(l for l in clean["label"].unique() if "NINR" in l):
            rows = clean[clean["label"] == label]
            m, s, n = _msem(rows["accuracy"])
            diff = m - b
            se = math.hypot(s, bs) if not (math.isnan(s) or math.isnan(bs)) else float("nan")
            keeps = "holds" if not math.isnan(se) and diff >= -2 * se else _verdict(diff, se)
            if math.isnan(se):
                keeps = "undecided (one seed: no SEM)"
            lost = diverged.get((label, arch), 0)
            if lost:
                keeps = f"does not hold ({lost} of {n + lost} trials diverged; the rest: {keeps})"
            out.append(f"{where} {label} [{_majority(rows['measured_phase'])}] keeps clean accuracy? "
                       f"{100 * m:.1f} ± {100 * s:.1f}% vs none {100 * b:.1f} ± {100 * bs:.1f}% "
                       f"({100 * diff:+.1f} points): {keeps}.")
            un = _paired(g, label, "none", UNSTRUCTURED)
            st = _paired(g, label, "none", STRUCTURED)
            if un[2] and st[2]:
                gap_diff = un[0] - st[0]
                gap_se = math.hypot(un[1], st[1]) if not (math.isnan(un[1]) or math.isnan(st[1])) else float("nan")
                out.append(f"{where} {label} gains most under unstructured noise? Gain over none, mean over "
                           f"strengths: Gaussian/impulse {100 * un[0]:+.1f} ± {100 * un[1]:.1f} points, "
                           f"blur/contrast/rotation {100 * st[0]:+.1f} ± {100 * st[1]:.1f} points: "
                           f"{_verdict(gap_diff, gap_se) if un[0] > 0 or math.isnan(gap_se) else 'does not hold (no gain under unstructured noise)'}.")
    return out


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: phase table and diagram, the comparison table,
    robustness curves, NIW trajectories, findings."""
    tables_ = []
    t = phase_table(df)
    if not t.empty:
        tables_.append(("Phase study: measured and predicted phase per (arch, sigma_eps, lr)", t))
    c = table(df)
    if not c.empty:
        fixed = fixed_text(c.attrs.get("fixed", {}))
        tables_.append(("Clean test accuracy % (mean ± SEM over seeds, [measured NINR phase]); the poster's value "
                        "only where the protocol matches" + (f"; {fixed}" if fixed else ""), c.reset_index()))
    made, skipped = draw(FIGURES, df, out)
    return {"title": "Noise injection node regularisation (noise-injection-nodes)", "tables": tables_,
            "figures": made, "skipped": skipped, "findings": findings(df)}

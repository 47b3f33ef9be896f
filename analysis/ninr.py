"""The NINR family's analysis (noise-injection-nodes): phase diagram, the poster's table,
accuracy-against-strength curves, NIW trajectories, findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "ninr". Tables and
figures keep apart every configuration column that varies (a column they do not draw is fixed to
one value and the caption says which); the seeds are what is averaged. Means, SEMs, intervals and
verdicts come from analysis/stats.py (its one rule); a regulariser's name is the rows' `label`
column, which the trial writes from search_spaces/ninr.py.
"""

from __future__ import annotations

from dataclasses import replace

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
                "corruption", "strength", "phase_target")
IGNORED = {"eval_batch_size", "trajectory_points", "hessian_points", "hessian_iters", "hessian_batch",
           "phase_growth", "phase_shrink", "phase_divergence", "phase_fit_share", "phase_failed_share",
           "phase_chance_margin"}  # measurement settings, not results
METHOD_FIELDS = {"regularizer", "placement", "sigma_eps", "phase_target", "cdt_std", "l2", "dropout_rate"}
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


def _field_names(d: pd.DataFrame) -> list[str]:
    """A name for rows without a `label`: their regulariser and the method fields that vary among
    that regulariser's rows ("regularizer=cdt, cdt_std=0.2"), never a copied table of labels."""
    if "regularizer" not in d.columns:
        return ["unlabelled"] * len(d)
    d = d.reset_index(drop=True)
    varying = {reg: [c for c in sorted(METHOD_FIELDS - {"regularizer"}) if c in g.columns and g[c].nunique() > 1]
               for reg, g in d.groupby("regularizer", dropna=False)}
    show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
    return [", ".join([f"regularizer={r['regularizer']}"]
                      + [f"{c}={show(r[c])}" for c in varying.get(r["regularizer"], [])]) for r in d.to_dict("records")]


def _labelled(d: pd.DataFrame) -> pd.DataFrame:
    """The rows with their `label`: the trial writes it from search_spaces/ninr.py (the one source
    of the names, "in-NINR σ=10", "CDT (0.2)"). Rows written before that have none; they are named
    by their fields (_field_names) and unlabelled() counts them for the section to say so."""
    d = d.copy()
    have = d["label"].fillna("").astype(str) if "label" in d.columns else pd.Series("", index=d.index, dtype=object)
    missing = have.eq("").to_numpy()
    if missing.any():
        have = have.to_numpy(dtype=object).copy()
        have[missing] = _field_names(d[missing])
    d["label"] = list(have)
    return d


def unlabelled(df: pd.DataFrame) -> int:
    """How many NINR-method rows carry no `label` (written before the search space named them)."""
    d = df[df["method"] == "ninr"] if "method" in df.columns else df
    if "label" not in d.columns:
        return len(d)
    return int(d["label"].fillna("").astype(str).eq("").sum())


def _base(g: pd.DataFrame) -> str | None:
    """The label of the unregularised arm (regularizer "none") among the rows, if exactly one."""
    if "regularizer" not in g.columns:
        return "none" if (g["label"] == "none").any() else None
    labels = g.loc[g["regularizer"] == "none", "label"].unique()
    return labels[0] if len(labels) == 1 else None


def _ninr_arms(g: pd.DataFrame) -> list[str]:
    if "regularizer" not in g.columns:
        return []
    return sorted(g.loc[g["regularizer"] == "ninr", "label"].unique())


def poster_column(g: pd.DataFrame, phase: str) -> str | None:
    """The poster's column for an arm's rows: NINR by its placement and the phase the runs measured
    (not by intent); the others by their label, which the search space gives the poster's names."""
    r = g.iloc[0]
    if r.get("regularizer") == "ninr":
        return f"{r.get('placement')}-NINR ({phase})" if phase in ("decay", "catapult") else None
    return r["label"] if r["label"] in POSTER["fc"] else None


def _majority(values) -> str:
    values = [v for v in values if isinstance(v, str) and v]
    return pd.Series(values).mode().iloc[0] if values else ""


def compare_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The comparison's rows (FC/CNN), of one configuration apart from what the table draws."""
    d = ninr_rows(_labelled(df))  # named over all rows, diverged ones included (_field_names)
    d = d[d["arch"].isin(["fc", "cnn"])] if "arch" in d.columns else d.iloc[0:0]
    if d.empty:
        return d, {}
    return stats.one_setting(d, DRAWN, PREFERRED, KNOWN_CONFIG, IGNORED)


def _diverged_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One labelled row per FC/CNN trial that diverged (it has no accuracy to average)."""
    d = _labelled(df)  # named over all rows, as compare_rows names them
    if "status" not in d.columns or "arch" not in d.columns:
        return d.iloc[0:0]
    d = d[(d["status"] == "diverged") & d["arch"].isin(["fc", "cnn"])]
    if "method" in d.columns:
        d = d[d["method"] == "ninr"]
    return d.drop_duplicates("trial_key") if "trial_key" in d.columns else d


def _skipped(df: pd.DataFrame) -> dict:
    """(label, arch) -> why its FC/CNN trials trained nothing (a phase search that found no sigma)."""
    d = _labelled(df)
    if "status" not in d.columns or "arch" not in d.columns:
        return {}
    d = d[(d["status"] == "skipped") & d["arch"].isin(["fc", "cnn"])]
    return {k: str(g["message"].iloc[0]) for k, g in d.groupby(["label", "arch"])} if not d.empty else {}


def _diverged(df: pd.DataFrame) -> dict:
    """(label, arch) -> how many FC/CNN trials diverged."""
    d = _diverged_rows(df)
    return d.groupby(["label", "arch"]).size().to_dict() if not d.empty else {}


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
        phase = _majority(g["measured_phase"]) if "measured_phase" in g.columns else ""
        text = stats.cell(g["accuracy"], count=True,
                          chance=1 / float(g["num_classes"].iloc[0]) if "num_classes" in g.columns else None)
        if diverged.get((label, arch)):
            text += f" +{diverged[(label, arch)]} diverged"
        if phase:
            text += f" [{phase}]"
        if "probe_sigma" in g.columns and g["probe_sigma"].notna().any():
            text += f" σ={'/'.join(f'{v:g}' for v in sorted(g['probe_sigma'].dropna().unique()))} (probed)"
        col = poster_column(g, phase)
        if col and not protocol_differences(g, POSTER_PROTOCOL) and arch in POSTER:
            pm, ps = POSTER[arch][col]
            text += f" (poster {pm} ± {ps})"
        cells.setdefault(label, {})[arch] = text
    for (label, arch), k in diverged.items():
        cells.setdefault(label, {}).setdefault(arch, ("the trial diverged" if k == 1 else f"all {k} trials diverged"))
    for (label, arch), why in _skipped(df).items():
        cells.setdefault(label, {}).setdefault(arch, f"not trained: {why}")
    t = pd.DataFrame(cells).T.sort_index()
    t.index.name = "regulariser"
    t.attrs["fixed"] = fixed
    return t


def gain_table(df: pd.DataFrame, arms: str = "ninr") -> pd.DataFrame:
    """The robustness gain over the unregularised arm per (arch, regulariser, corruption, strength)
    cell: each seed's accuracy minus none's on the same seed, with its 95% interval and p (one
    cell each, never a band of strengths). `arms` is "ninr" (the NINR arms) or "all"."""
    d, fixed = compare_rows(df)
    d = d[d["corruption"] != "clean"] if not d.empty else d
    out = []
    for arch, g in d.groupby("arch"):
        base = _base(g)
        if base is None:
            continue
        labels = _ninr_arms(g) if arms == "ninr" else sorted(set(g["label"]) - {base})
        for label in labels:
            pair = g[g["label"].isin([label, base])]
            for (corruption, strength), cell_rows in pair.groupby(["corruption", "strength"]):
                est = stats.compare(cell_rows, "label", label, base)
                out.append({"arch": arch, "regulariser": label, "corruption": corruption, "strength": strength,
                            f"gain over {base}": est.text()})
    t = pd.DataFrame(out)
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


def _phase_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The phase study's runs (linear_toy, mlp3), a diverged run's lr * lambda filled in from the
    arch's median curvature per noise, and each run's NIW norm ratio final/initial."""
    d = phase_rows(df)
    d = d[d["arch"].isin(["linear_toy", "mlp3"])] if not d.empty else d
    if d.empty:
        return d
    d = d.copy()
    d["lambda_from"] = np.where(d["eta_lambda"].notna(), "run", "median h")
    for arch, rows in d.groupby("arch"):
        h = curvature_per_noise(rows)
        miss = (d["arch"] == arch) & d["eta_lambda"].isna()
        d.loc[miss, "eta_lambda"] = d.loc[miss, "lr"] * d.loc[miss, "sigma_eps"].astype(float) ** 2 * h
        d.loc[miss, "predicted_phase"] = ["catapult" if abs(1 - v) >= 1 else ("n/a" if np.isnan(v) else "decay")
                                          for v in d.loc[miss, "eta_lambda"]]
    d["niw_ratio"] = d["niw_norm_final"] / d["niw_norm_init"]
    return d


def phase_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, sigma_eps, lr): the measured phase (most common over seeds), the predicted one,
    lr * lambda at step 0, the NIW norm's final/initial ratio and the final training loss (NINR's
    own: the mean over the last 10% of steps), each mean ± SEM over seeds, rounded (stats.spread_cell). A
    diverged run has no lambda of its own: its prediction uses lr * sigma^2 * h, h the arch's
    median lambda / sigma^2 ("lambda from"). phase_values() gives the unrounded means."""
    d = _phase_runs(df)
    if d.empty:
        return pd.DataFrame()
    g = d.groupby(["arch", "sigma_eps", "lr"])
    return pd.DataFrame({"measured": g["measured_phase"].agg(_majority), "predicted": g["predicted_phase"].agg(_majority),
                         "lr*lambda": g["eta_lambda"].agg(stats.spread_cell), "lambda from": g["lambda_from"].agg(_majority),
                         "NIW norm final/initial": g["niw_ratio"].agg(stats.spread_cell),
                         "final loss": g["final_loss"].agg(stats.spread_cell), "seeds": g["seed"].nunique()}).reset_index()


def phase_values(df: pd.DataFrame) -> pd.DataFrame:
    """phase_table's measurements unrounded: the mean over seeds per (arch, sigma_eps, lr)."""
    d = _phase_runs(df)
    if d.empty:
        return pd.DataFrame()
    g = d.groupby(["arch", "sigma_eps", "lr"])
    return pd.DataFrame({"lr*lambda": g["eta_lambda"].mean(), "NIW norm final/initial": g["niw_ratio"].mean(),
                         "final loss": g["final_loss"].mean(), "seeds": g["seed"].nunique()}).reset_index()


def agrees(measured: str, predicted: str) -> bool:
    """Only identical labels agree: a divergent or failed run never counts as a predicted catapult."""
    return measured == predicted


def confusion_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cells of the phase study per arch: measured phase (rows) x predicted phase (columns), a
    count of (sigma_eps, lr) cells with the phase most common over seeds."""
    t = phase_table(df)
    if t.empty:
        return pd.DataFrame()
    c = pd.crosstab([t["arch"], t["measured"]], t["predicted"]).reset_index()
    c.columns.name = None
    return c.rename(columns={"measured": "measured \\ predicted"})


# ---------------------------------------------------------------------------------------------
# Figures

PHASE_COLOURS = {"decoupled": "tab:gray", "decay": "tab:green", "catapult": "tab:orange", "divergent": "tab:red",
                 "failed": "black"}


def phase_diagram(df: pd.DataFrame, out=None):
    """sigma_eps x lr per arch, coloured by the measured phase; the predicted boundary
    lr * sigma^2 * h = 2 drawn over it, h the median of lambda / sigma^2 over the arch's runs."""
    t = phase_table(df)
    if t.empty:
        raise ValueError("no ninr_phases rows (in-NINR on linear_toy or mlp3)")
    archs = sorted(t["arch"].unique())
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), squeeze=False)
    d = phase_rows(df)
    shown, drawn = {}, False
    for ax, arch in zip(axes[0], archs):
        g = t[t["arch"] == arch]
        for phase, colour in PHASE_COLOURS.items():
            p = g[g["measured"] == phase]
            if p.empty:
                continue
            ok = [agrees(m, q) for m, q in zip(p["measured"], p["predicted"])]
            ax.scatter(p["sigma_eps"][ok], p["lr"][ok], c=colour, marker="o", s=60)
            ax.scatter(p["sigma_eps"][[not o for o in ok]], p["lr"][[not o for o in ok]], c=colour, marker="X", s=70)
            shown[phase] = colour
        h = curvature_per_noise(d[d["arch"] == arch])
        low, high = g["lr"].min() / 2, g["lr"].max() * 2
        ax.set_ylim(low, high)
        if not np.isnan(h):
            s = np.logspace(np.log10(g["sigma_eps"].min()), np.log10(g["sigma_eps"].max()), 100)
            boundary = 2 / (s ** 2 * h)
            if ((boundary >= low) & (boundary <= high)).any():
                ax.plot(s, boundary, "k--", lw=1)
                drawn = True
            else:  # say where it is rather than list a line nobody can see
                side = "above" if boundary.min() > high else "below"
                ax.text(0.02, 0.98 if side == "above" else 0.02,
                        f"lr·λ = 2 lies {side} the grid\n(lr {stats.number(boundary.min())} to "
                        f"{stats.number(boundary.max())})", transform=ax.transAxes, fontsize=7,
                        va="top" if side == "above" else "bottom")
        ax.set(xscale="log", yscale="log", xlabel="σ_eps", ylabel="learning rate", title=f"{arch}: measured phase")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=k) for k, c in shown.items()]
    handles += [plt.Line2D([], [], color="k", linestyle="--", label="lr·λ = 2 (predicted)")] if drawn else []
    axes[0][-1].legend(handles=handles, fontsize=7, title="o: measured = predicted\nX: measured differs",
                       title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside the data
    fig.tight_layout()
    fig.plotted = t
    fig.caption = ("Each point: one (σ_eps, lr) cell, coloured by the phase measured on its runs. o: the measured "
                   "phase is the predicted one; X: it differs. Dashed line, where the runs measured the curvature: "
                   "the predicted boundary lr·λ = 2 with λ = σ_eps² h, h the median of λ / σ_eps² over the "
                   "architecture's runs; log axes.")
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
    fig.caption = ("One panel per (architecture, corruption); points: mean accuracy over seeds, bars: ± SEM (none "
                   "with one seed); solid lines: NINR arms, dotted: the others; the clean test set is drawn in "
                   "every panel at its strength 0.")
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
        ax.set(xlabel="step", ylabel="NIW norm / initial", title=f"{arch}, lr {lr:g}")
        low, high = ax.get_ylim()
        if low > 0 and high / low > 10:  # a log axis only where the norm moves by orders of magnitude
            ax.set_yscale("log")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.caption = ("One line per σ_eps at the study's middle learning rate (first seed), coloured by the phase "
                   "measured on that run; the NIW norm divided by its value at step 0 (a log axis where it spans more "
                   "than a factor of 10).")
    save(fig, out)
    return fig


FIGURES = {"phase_diagram": phase_diagram, "robustness": robustness, "niw_trajectories": niw_trajectories}


# ---------------------------------------------------------------------------------------------
# Findings


def _band_gains(g: pd.DataFrame, label: str, base: str, corruptions) -> tuple[pd.Series, stats.Estimate]:
    """Per seed: the arm's accuracy minus the base arm's, each averaged over `corruptions` and
    their strengths within the seed (a band by construction: the claim compares kinds of noise);
    and its paired estimate over the seeds both arms share."""
    rows = g[g["corruption"].isin(corruptions) & g["label"].isin([label, base])]
    per = rows.groupby(["label", "seed"])["accuracy"].mean().unstack("label")
    if label not in per.columns or base not in per.columns:
        return pd.Series(dtype=float), stats.estimate([])
    return (per[label] - per[base]).dropna(), stats.difference(per[label], per[base])


def _both(gain: stats.Verdict, gap: stats.Verdict) -> str:
    """'Gains most under unstructured noise' needs a gain there and a larger one than under
    structured corruption: both parts by the rule, the claim's word from the two."""
    if gain.word == "does not hold":
        return f"does not hold (no gain under unstructured noise: {gain.reason})"
    if gap.word == "does not hold":
        return f"does not hold (the gain under unstructured noise is not the larger: {gap.reason})"
    if gain.holds and gap.holds:
        return "holds (both intervals exclude zero in the claimed direction)"
    return f"undecided (gain under unstructured noise: {gain}; unstructured minus structured: {gap})"


def _at_chance(base: pd.DataFrame) -> str:
    """Why nothing can be kept or gained: the unregularised arm's clean accuracy is not above
    chance by the rule (over two seeds or more); "" when it is, or when chance is not known."""
    if "num_classes" not in base.columns or base["seed"].nunique() < 2:
        return ""
    chance = 1 / float(base["num_classes"].iloc[0])
    per_seed = base.groupby("seed")["accuracy"].mean() - chance
    if stats.verdict(stats.estimate(per_seed.to_numpy())).holds:
        return ""
    return (f"the unregularised arm's clean accuracy {stats.cell(base['accuracy'], unit='%')} is not above chance "
            f"({100 * chance:.0f}%) by the rule: there is no accuracy to keep or gain")


def findings(df: pd.DataFrame, margin: float = stats.MARGIN) -> list[str]:
    """Convergence, the phases against the boundary, 'NINR keeps clean accuracy' (non-inferiority
    to the unregularised arm within `margin`, stats.MARGIN by default), and 'NINR gains most under
    unstructured noise' (paired per seed), each with its estimate, interval and verdict
    (analysis/stats.py)."""
    out: list[str] = []
    t = phase_table(df)
    if not t.empty:
        for arch, g in t.groupby("arch"):
            scored = g[g["predicted"] != "n/a"]
            agree = sum(agrees(m, p) for m, p in zip(scored["measured"], scored["predicted"]))
            counts = ", ".join(f"{k} {v}" for k, v in g["measured"].value_counts().items())
            failed = int((g["measured"] == "failed").sum())
            out.append(f"[{arch}] Phases measured over {stats.plural(len(g), '(sigma_eps, lr) cell')}: {counts}. The measured phase "
                       f"is the predicted one in {agree} of {len(scored)} cells (identical labels only; a count of "
                       "cells, not a test over seeds; the confusion table gives the rest)"
                       + (f"; {failed} cell{'s' if failed != 1 else ''} failed (the network learned nothing): "
                          "no phase of learning" if failed else "") + ".")
    missing = unlabelled(df)
    if missing:
        out.append(f"{missing} rows carry no `label` column (written before search_spaces/ninr.py named the "
                   "regularisers): their arms are named by their fields here (\"regularizer=cdt, cdt_std=0.2\"), "
                   "and only NINR's are matched to a poster column (by placement and phase).")
    for (label, arch), why in sorted(_skipped(df).items()):
        out.append(f"[{arch}] {label}: not trained, so no claim is tested on it: {why}.")
    d, fixed = compare_rows(df)
    if d.empty:
        return out
    note = f" ({fixed_text(fixed)})" if fixed else ""
    diverged = _diverged(df)
    points = f"{100 * margin:g} point{'s' if 100 * margin != 1 else ''}"
    for arch, g in d.groupby("arch"):
        clean = g[g["corruption"] == "clean"]
        where = f"[{arch}{note}]"
        base = _base(clean)
        if base is None:
            continue
        rows0 = clean[clean["label"] == base]
        loss = ""
        if {"final_loss", "initial_loss"} <= set(rows0.columns):
            below = (rows0["final_loss"] < rows0["initial_loss"]).all()
            loss = (f"; final training loss (mean over the last 10% of steps) below the initial one (mean over the "
                    f"first 10%) in {'every' if below else 'not every'} run")
        chance = f" (chance {100 / rows0['num_classes'].iloc[0]:.0f}%)" if "num_classes" in rows0.columns else ""
        out.append(f"{where} Converged: unregularised clean accuracy {stats.cell(rows0['accuracy'], unit='%')} over "
                   f"{stats.plural(rows0['seed'].nunique(), 'seed')}{chance}{loss}.")
        blocked = _at_chance(rows0)
        gone = _diverged_rows(df)
        gone = (gone[(gone["arch"] == arch) & (gone["regularizer"] == "ninr")] if "regularizer" in gone.columns
                else gone.iloc[0:0])
        for label in sorted(set(_ninr_arms(clean)) | set(gone["label"])):
            rows = clean[clean["label"] == label]
            if rows.empty:  # every trial of the arm diverged
                lost = diverged.get((label, arch), 0)
                out.append(f"{where} {label} keeps clean accuracy? Not worse than {base} by more than {points}: "
                           f"does not hold ({'its one trial diverged' if lost == 1 else f'{lost} of {lost} trials diverged'}).")
                continue
            est = stats.compare(clean, "label", label, base)
            keeps = str(stats.verdict(est, margin=margin, blocked=blocked))
            lost = diverged.get((label, arch), 0)
            if lost:
                keeps = f"does not hold ({lost} of {rows['seed'].nunique() + lost} trials diverged; the rest: {keeps})"
            phase = _majority(rows["measured_phase"]) if "measured_phase" in rows.columns else ""
            out.append(f"{where} {label} [{phase}] keeps clean accuracy? Not worse than {base} by more than {points}: "
                       f"{stats.cell(rows['accuracy'], unit='%')} vs {stats.cell(rows0['accuracy'], unit='%')}, difference "
                       f"{est.text(null=-margin)}: {keeps}.")
            un, un_est = _band_gains(g, label, base, UNSTRUCTURED)
            st, st_est = _band_gains(g, label, base, STRUCTURED)
            if un.empty or st.empty:
                continue
            gap = (un - st).dropna()
            gap_est = replace(stats.estimate(gap.to_numpy()), paired=True)
            out.append(f"{where} {label} gains most under unstructured noise? Gain over {base}, each seed's mean over "
                       f"the strengths of a kind (per cell: the gain table): Gaussian/impulse {un_est.text()}; "
                       f"blur/contrast/rotation {st_est.text()}; unstructured minus structured, paired per seed: "
                       f"{gap_est.text()}: "
                       + (f"undecided ({blocked})." if blocked else
                          f"{_both(stats.verdict(un_est), stats.verdict(gap_est))}."))
    return out


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: phase table and diagram, the comparison table,
    the gain over none per corruption and strength, robustness curves, NIW trajectories, findings."""
    tables_ = []
    t = phase_table(df)
    if not t.empty:
        tables_.append(("Phase study: measured and predicted phase per (arch, sigma_eps, lr); lr*lambda, NIW norm "
                        "ratio and final loss (mean over the last 10% of steps) as mean ± SEM over seeds", t))
    conf = confusion_table(df)
    if not conf.empty:
        tables_.append(("Phase study: measured (rows) x predicted (columns) phase, cells counted per arch", conf))
    c = table(df)
    missing = unlabelled(df)
    unnamed = (f"; {missing} rows have no `label` column (written before the search space named the "
               "regularisers): named by their fields, only NINR's matched to a poster column") if missing else ""
    if not c.empty:
        fixed = fixed_text(c.attrs.get("fixed", {}))
        tables_.append(("Clean test accuracy % (mean ± SEM over seeds, [measured NINR phase]); the poster's value "
                        "only where the protocol matches" + (f"; {fixed}" if fixed else "") + unnamed, c.reset_index()))
    gains = gain_table(df)
    if not gains.empty:
        fixed = fixed_text(gains.attrs.get("fixed", {}))
        tables_.append(("Gain over none per corruption and strength (accuracy points, each seed paired with none's "
                        "same seed; 95% t interval and p per cell, no band average)" + (f"; {fixed}" if fixed else ""),
                        gains))
    made, skipped, captions = draw(FIGURES, df, out)
    return {"title": "Noise injection node regularisation (noise-injection-nodes)", "tables": tables_,
            "figures": made, "captions": captions, "skipped": skipped, "findings": findings(df)}

"""The SE-SNN family's analysis (se-snn): label-noise table and curves (Fig. 3a), FGS curves and
a per-eps table (Fig. 2a), the CW-L2 table and bars (Fig. 2b), the omega x margin map (App. B.1),
accuracy against the number of stochastic layers (App. B.3), the per-epoch training loss of each
method (App. B.4, from the trials' `epoch_loss` arrays), the entropy of flipped samples,
the compression tables of Tables 1-3 (method sesnn_prune), findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "sesnn". Tables and
figures keep apart every configuration column that varies; one they do not draw is fixed to one
value and the caption says which. The seeds are what is averaged. Every mean, SEM, interval and
verdict comes from analysis.stats (stats.RULE): a claim holds only when the 95% t interval of its
paired difference over seeds excludes zero in the claimed direction; a "matches" claim is a
non-inferiority claim with a stated margin; a claim over a curve (accuracy against eps) is tested
per eps. A verdict is also blocked ("undecided") unless training converged (in every run it reads,
the last 20% of epochs gave less than CONVERGED_SHARE of the run's whole loss decrease:
`loss_tail_share`).

Method names ("SE-SNN", "SE-SNN+Forward", ...) are the rows' `label` column, which the trial writes
from the experiment's Space(label=...): search_spaces/sesnn.py is their one source. Rows written
before the trial recorded labels have none; the section says so, names those methods by their
model and loss fields, and tests no claim that names a method.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from analysis import stats
from analysis.figures import draw, epoch_curves, heatmap, lines, plt, save, single_x
from analysis.stats import fixed_text, ok_rows, protocol_caveats, protocol_differences

FAMILY = "sesnn"

KNOWN_CONFIG = ("dataset", "image_size", "channels", "hidden", "model", "stochastic_layers", "parallel_layer",
                "aggregation", "omega", "margin", "sigma_floor", "vib_beta", "loss", "soft_beta", "hard_beta",
                "anchor_percentile", "label_noise", "adv_train_eps", "adv_train_weight", "optimizer", "lr",
                "weight_decay", "batch_size", "epochs", "steps", "scheduler", "test_mode", "test_draws", "eot_draws",
                "attack", "eps")
IGNORED = {"eval_batch_size"}
CONVERGED_SHARE = 0.02  # share of a run's loss decrease left to its last 20% of epochs, below which it has converged

LABEL_DRAWN = {"model", "loss", "label_noise", "omega"}  # omega: "SE-SNN (ω=1)" is its own label
LABEL_PREFERRED = {"attack": "none", "eps": 0.0, "adv_train_eps": 0.0, "hidden": "[128, 128]", "margin": math.log(4),
                   "aggregation": "sample"}
DEFENCE_DRAWN = {"model", "loss", "adv_train_eps", "attack", "eps"}
DEFENCE_PREFERRED = {"hidden": "[1024, 1024, 256]", "label_noise": 0.0, "test_mode": "sample"}
MARGIN_DRAWN = {"omega", "margin"}
MARGIN_PREFERRED = {"model": "sesnn", "loss": "ce", "label_noise": 0.4, "attack": "none", "eps": 0.0,
                    "aggregation": "sample"}
AGGREGATION_DRAWN = {"omega", "margin", "aggregation"}
EQUATION = {"neuron": "Eq. 5", "sample": "Eq. 6", "both": "Eq. 7"}
HINGES = ("hinge_active_neuron", "hinge_active_sample", "hinge_active_both")
PAPER_MARGINS = (math.log(1), math.log(4), math.log(16))  # App. B.1's grid; its "larger b" claim is over these

# The methods the paper's claims name, as the rows' `label` column spells them (search_spaces/sesnn.py
# gives the labels; tests/test_sesnn.py checks these names are among them).
SESNN, SESNN_FORWARD, BASELINE, FORWARD, VIB = "SE-SNN", "SE-SNN+Forward", "Baseline", "Forward", "Deep VIB"

# The paper's MNIST label-noise anchor (%, App. B.2 and Fig. 3a): 40% patterned noise.
ANCHOR_NOISE = 0.4
ANCHORS = {SESNN: 95.17, BASELINE: 81.04}
PAPER_PROTOCOL = {"dataset": "mnist", "image_size": 28, "channels": 1, "hidden": "[128, 128]"}


def sesnn_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = ok_rows(df)
    return d[d["method"] == "sesnn"] if "method" in d.columns else d


def unlabelled(d: pd.DataFrame) -> int:
    """How many rows carry no method label (written before the trial recorded `label`)."""
    if "label" not in d.columns:
        return len(d)
    given = d["label"].astype("string")
    return int((given.isna() | (given.str.len() == 0)).sum())


def _labelled(d: pd.DataFrame) -> pd.DataFrame:
    """The rows with their method name in `label`: the rows' own label; where there is none, the
    model and loss fields ("sesnn+ce"), never a name copied from the search space. A label whose
    rows differ in model, loss or omega (a --set of one) is split and says which."""
    d = d.copy()
    raw = d["model"].astype(str) + "+" + (d["loss"].astype(str) if "loss" in d.columns else "?")
    given = d["label"].astype("string") if "label" in d.columns else pd.Series(pd.NA, index=d.index, dtype="string")
    name = given.where((given.str.len() > 0).fillna(False)).fillna(raw).astype(str)
    omega = "ω=" + d["omega"].map(lambda v: f"{float(v):g}") if "omega" in d.columns else raw.map(lambda _: "")
    mixed_fields = raw.groupby(name).transform("nunique") > 1
    mixed_omega = omega.groupby(name).transform("nunique") > 1
    d["label"] = name.where(~mixed_fields, name + " (" + raw + ")")
    d["label"] = d["label"].where(~mixed_omega, d["label"] + " (" + omega + ")")
    return d


def _order(labels) -> list[str]:
    return sorted(labels, key=lambda k: ("SE-SNN" in k, k))


def _select(df: pd.DataFrame, drawn: set, preferred: dict) -> tuple[pd.DataFrame, dict]:
    d = sesnn_rows(df)
    if d.empty or "model" not in d.columns:
        return d.iloc[0:0], {}
    sliced = {}
    for col, want in preferred.items():  # the view's own slice first (attacked rows are not label-noise rows)
        if col in d.columns and col not in drawn and d[col].nunique(dropna=False) > 1 and (d[col] == want).any():
            d = d[d[col] == want]
            sliced[col] = want
    d, fixed = stats.one_setting(d, drawn, preferred, KNOWN_CONFIG, IGNORED)
    return _labelled(d), sliced | fixed


def label_noise_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Unattacked rows of normally trained networks: method x label-noise strength (none when no
    row was trained on noisy labels: a defence run is not a label-noise study)."""
    d, fixed = _select(df, LABEL_DRAWN, LABEL_PREFERRED)
    if d.empty or not (d["label_noise"] > 0).any():
        return d.iloc[0:0], {}
    return d, fixed


def defence_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Rows of the defence study: method x training x attack strength."""
    return _select(df, DEFENCE_DRAWN, DEFENCE_PREFERRED)


def margin_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """SE-SNN rows at one label-noise strength: omega x margin."""
    return _select(df, MARGIN_DRAWN, MARGIN_PREFERRED)


def aggregation_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """SE-SNN rows at one label-noise strength: omega x margin x aggregation (Eq. 5, 6, 7)."""
    return _select(df, AGGREGATION_DRAWN, {k: v for k, v in MARGIN_PREFERRED.items() if k != "aggregation"})


def b_text(b: float) -> str:
    """A margin as the paper writes it: "log 4" where e^b is a whole number up to 100, else the value."""
    n = math.exp(b)
    return f"log {round(n)}" if n <= 100 and abs(n - round(n)) < 1e-6 else f"{b:g}"


def label_noise_table(df: pd.DataFrame) -> pd.DataFrame:
    """Clean test accuracy % per method (rows) and label-noise strength (columns), mean ± SEM over
    seeds; the paper's 40% anchors in brackets where the protocol matches."""
    d, fixed = label_noise_rows(df)
    if d.empty:
        return pd.DataFrame()
    comparable = not protocol_differences(d, PAPER_PROTOCOL)
    cells: dict = {}
    for (label, p), g in d.groupby(["label", "label_noise"]):
        text = stats.cell(g["accuracy"], count=True, chance=1 / float(g["num_classes"].iloc[0]))
        if comparable and abs(p - ANCHOR_NOISE) < 1e-9 and label in ANCHORS:
            text += f" (paper {ANCHORS[label]})"
        cells.setdefault(label, {})[f"{100 * p:g}%"] = text
    t = pd.DataFrame(cells).T
    t = t.loc[_order(t.index)]
    t = t[sorted(t.columns, key=lambda c: float(c[:-1]))]
    t.index.name = "method"
    t.attrs["fixed"] = fixed
    t.attrs["comparable"] = comparable
    return t


# ---------------------------------------------------------------------------------------------
# Figures


def label_noise_curves(df: pd.DataFrame, out=None):
    """Fig. 3a: clean test accuracy against label-noise strength, one line per method."""
    d, fixed = label_noise_rows(df)
    if d.empty or d["label_noise"].nunique() < 1:
        raise ValueError("no unattacked label-noise rows")
    s = stats.summarize(d, ["label", "label_noise"])
    fig, ax = lines(s, "label", "label_noise", str, "label-noise strength p",
                    "Clean test accuracy under patterned label noise (mean ± SEM over seeds)"
                    + (f"\n{fixed_text(fixed)}" if fixed else ""),
                    style=lambda k: "-" if "SE-SNN" in str(k) else ":")
    fig.caption += " Solid lines: SE-SNN variants; dotted: the baselines."
    save(fig, out)
    return fig


def fgs_curves(df: pd.DataFrame, out=None):
    """Fig. 2a: accuracy under untargeted FGS against eps, one panel per training (normal, FGS)."""
    d, fixed = defence_rows(df)
    d = d[d["attack"].isin(["none", "fgsm"])] if not d.empty else d
    if d.empty or not (d["attack"] == "fgsm").any():
        raise ValueError("no FGS-attacked rows")
    trainings = sorted(d["adv_train_eps"].unique())
    fig, axes = plt.subplots(1, len(trainings), figsize=(5.5 * len(trainings), 4), squeeze=False)
    s = stats.summarize(d, ["adv_train_eps", "label", "eps"])
    for ax, a in zip(axes[0], trainings):
        for label, g in s[s["adv_train_eps"] == a].groupby("label"):
            g = g.sort_values("eps")
            ax.errorbar(g["eps"], 100 * g["mean"], yerr=100 * g["sem"].fillna(0), marker="o", capsize=2,
                        label=label, linestyle="-" if "SE-SNN" in label else ":")
        ax.set(xlabel="FGS eps (L-inf)", ylabel="accuracy (%)",
               title="normal training" if a == 0 else f"FGS training at eps {a:g}")
        single_x(ax, s[s["adv_train_eps"] == a]["eps"])
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy under untargeted FGS along the expected gradient (mean ± SEM over seeds)"
                 + (f"; {fixed_text(fixed)}" if fixed else ""), fontsize=9)
    fig.tight_layout()
    fig.plotted = s
    fig.caption = ("Points: mean accuracy over seeds; bars: ± SEM (none with one seed). Solid lines: SE-SNN "
                   "variants; dotted: the baselines.")
    save(fig, out)
    return fig


def entropy_of_flipped(df: pd.DataFrame, out=None):
    """The mechanism of Eq. 6: mean log sigma of the last stochastic layer on training samples whose
    label was flipped against those kept, per label-noise strength (SE-SNN models)."""
    d, fixed = label_noise_rows(df)
    d = d[(d["model"] == "sesnn") & (d["label_noise"] > 0)] if not d.empty else d
    if d.empty or d["log_sigma_flipped"].isna().all():
        raise ValueError("no SE-SNN rows trained on noisy labels")
    long = pd.concat([d.assign(which=w, value=d[c]) for w, c in (("flipped", "log_sigma_flipped"),
                                                                  ("kept", "log_sigma_kept"))])
    s = stats.summarize(long, ["label", "which", "label_noise"], metric="value")
    fig, ax = lines(s, ["label", "which"], "label_noise", lambda k: f"{k[0]}: {k[1]} labels", "label-noise strength p",
                    "Mean log σ on training samples (mean ± SEM over seeds)" + (f"\n{fixed_text(fixed)}" if fixed else ""),
                    style=lambda k: "-" if k[1] == "flipped" else ":", ylabel="mean log σ", scale=1)
    fig.caption += (" Solid lines: training samples whose label was flipped; dotted: samples whose label was "
                    "kept (Eq. 6 predicts solid above dotted).")
    save(fig, out)
    return fig


def margin_map(df: pd.DataFrame, out=None):
    """App. B.1: SE-SNN's clean accuracy over omega x margin b."""
    d, fixed = margin_rows(df)
    d = d[d["model"] == "sesnn"] if not d.empty else d
    if d.empty or d["omega"].nunique() < 2 or d["margin"].nunique() < 2:
        raise ValueError("no omega x margin grid of SE-SNN rows")
    s = stats.summarize(d, ["omega", "margin"])
    pivot = s.pivot(index="omega", columns="margin", values="mean")
    pivot.columns = [b_text(b) for b in pivot.columns]
    fig = heatmap(pivot, "SE-SNN accuracy over omega x b" + (f"\n{fixed_text(fixed)}" if fixed else ""),
                  "margin b", "omega", diagonal=False)
    fig.plotted = s
    save(fig, out)
    return fig


FIGURES = {"label_noise_curves": label_noise_curves, "entropy_of_flipped": entropy_of_flipped,
           "fgs_curves": fgs_curves, "margin_map": margin_map}


# ---------------------------------------------------------------------------------------------
# CW-L2 (Fig. 2b), the number of stochastic layers (App. B.3), the convergence curves (App. B.4)


def cw_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The defence study's CW-L2 rows: method x training."""
    d, fixed = defence_rows(df)
    if d.empty or not (d["attack"] == "cw_l2").any():
        return d.iloc[0:0], {}
    return d[d["attack"] == "cw_l2"], fixed


def cw_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fig. 2b as numbers: under untargeted CW-L2, accuracy, the attack's success rate (of the
    images the clean row gets right) and the mean L2 of its successful perturbations, mean ± SEM
    over seeds per (training, method)."""
    d, fixed = cw_rows(df)
    if d.empty:
        return pd.DataFrame()
    rows = []
    for a in sorted(d["adv_train_eps"].unique()):
        g = d[d["adv_train_eps"] == a]
        for label in _order(g["label"].unique()):
            h = g[g["label"] == label]
            l2 = stats.mean_sem(h["mean_l2"])
            rows.append({"training": _training(a), "method": label, "images attacked": int(h["test_images"].max()),
                         "accuracy %": stats.cell(h["accuracy"], count=True,
                                                  chance=1 / float(h["num_classes"].iloc[0])),
                         "success rate %": stats.cell(h["attack_success_rate"]),
                         "mean L2 of successes": stats.fmt(l2[0], l2[1], scale=1, digits=3)})
    t = pd.DataFrame(rows)
    t.attrs["fixed"] = fixed
    return t


def cw_bars(df: pd.DataFrame, out=None):
    """Fig. 2b: accuracy under untargeted CW-L2 per method (bars, mean ± SEM over seeds), one group
    per training."""
    d, fixed = cw_rows(df)
    if d.empty:
        raise ValueError("no CW-L2 rows")
    s = stats.summarize(d, ["adv_train_eps", "label"])
    labels = _order(s["label"].unique())
    trainings = sorted(s["adv_train_eps"].unique())
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(labels) * len(trainings), 4))
    width = 0.8 / len(trainings)
    for k, a in enumerate(trainings):
        g = s[s["adv_train_eps"] == a].set_index("label").reindex(labels)
        ax.bar([i + k * width for i in range(len(labels))], 100 * g["mean"], width, yerr=100 * g["sem"].fillna(0),
               capsize=3, label=_training(a))
    ax.set_xticks([i + width * (len(trainings) - 1) / 2 for i in range(len(labels))], labels)
    ax.set(ylabel="accuracy (%)", title="Accuracy under untargeted CW-L2 over draws (mean ± SEM over seeds)"
           + (f"\n{fixed_text(fixed)}" if fixed else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.plotted = s
    save(fig, out)
    return fig


def cw_findings(df: pd.DataFrame) -> list[str]:
    """Fig. 2b's claim, per training: SE-SNN is the most effective defence under CW-L2 (SE-SNN -
    rival accuracy, paired over seeds), and the Baseline "fails completely" (its accuracy)."""
    d, fixed = cw_rows(df)
    if d.empty:
        return []
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    for a, g in d.groupby("adv_train_eps"):
        training = _training(a)
        if BASELINE in set(g["label"]):
            m, se, n = stats.mean_sem(g[g["label"] == BASELINE]["accuracy"])
            out.append(f"[CW-L2, {training}{note}] Baseline accuracy under CW-L2 {stats.fmt(m, se, unit='%')} over {stats.plural(n, 'seed')} "
                       f"(the paper: it \"fails completely\").")
        for rival in (BASELINE, VIB):
            if not {SESNN, rival} <= set(g["label"]):
                continue
            est = _compare(g, SESNN, rival)
            out.append(f"[CW-L2, {training}{note}] SE-SNN beats {rival} under CW-L2? SE-SNN - {rival} = {est.text()}: "
                       f"{stats.verdict(est, blocked=_unconverged_arms(g, SESNN, rival))}.")
    return out


LAYERS_DRAWN = {"model", "loss", "label_noise", "stochastic_layers"}


def layers_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Unattacked cross-entropy rows by their number of stochastic layers (`stochastic_count`: 0
    for the deterministic Baseline), under label noise; none unless SE-SNN rows differ in which
    layers are stochastic (a layers_sesnn run)."""
    d, fixed = _select(df, LAYERS_DRAWN, LABEL_PREFERRED)
    if d.empty or "stochastic_layers" not in d.columns:
        return d.iloc[0:0], {}
    d = d[(d["loss"] == "ce") & d["model"].isin(["sesnn", "deterministic"])]
    if d[d["model"] == "sesnn"]["stochastic_layers"].nunique() < 2 or not (d["label_noise"] > 0).any():
        return d.iloc[0:0], {}
    count = [0 if m == "deterministic" else len(json.loads(str(v))) for m, v in zip(d["model"], d["stochastic_layers"])]
    return d.assign(stochastic_count=count), fixed


def _layers_name(k) -> str:
    return f"{int(k)} stochastic layer{'s' if int(k) != 1 else ''}"


def layers_table(df: pd.DataFrame) -> pd.DataFrame:
    """App. B.3 as numbers: clean test accuracy % per number of stochastic layers (rows: which
    layers) and label-noise strength (columns), mean ± SEM over seeds."""
    d, fixed = layers_rows(df)
    if d.empty:
        return pd.DataFrame()
    cells = {}
    for (k, which, p), g in d.groupby(["stochastic_count", "stochastic_layers", "label_noise"]):
        name = f"{_layers_name(k)} ({'Baseline' if k == 0 else 'layers ' + str(which)})"
        cells.setdefault(name, {})[f"{100 * p:g}%"] = stats.cell(g["accuracy"], count=True)
    t = pd.DataFrame(cells).T.sort_index()
    t = t[sorted(t.columns, key=lambda c: float(c[:-1]))]
    t.index.name = "network"
    t.attrs["fixed"] = fixed
    return t


def layers_curves(df: pd.DataFrame, out=None):
    """App. B.3 (Fig. B.3): clean test accuracy against label-noise strength, one line per number of
    stochastic layers."""
    d, fixed = layers_rows(df)
    if d.empty:
        raise ValueError("no rows that differ in their number of stochastic layers")
    s = stats.summarize(d, ["stochastic_count", "label_noise"])
    fig, _ = lines(s, "stochastic_count", "label_noise", _layers_name, "label-noise strength p",
                   "Clean test accuracy by number of stochastic layers (mean ± SEM over seeds)"
                   + (f"\n{fixed_text(fixed)}" if fixed else ""), style=lambda k: "-" if k else ":")
    save(fig, out)
    return fig


def layers_findings(df: pd.DataFrame) -> list[str]:
    """App. B.3's claim, "increasing the number of SLs helps", tested per label-noise strength for
    each step up in the count (paired over seeds)."""
    d, fixed = layers_rows(df)
    if d.empty:
        return []
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    for p, g in d[d["label_noise"] > 0].groupby("label_noise"):
        counts = sorted(g["stochastic_count"].unique())
        for lo, hi in zip(counts, counts[1:]):
            est = stats.compare(g, "stochastic_count", hi, lo)
            why = unconverged(g[g["stochastic_count"].isin([lo, hi])])
            out.append(f"[stochastic layers{note}] {_layers_name(hi)} beat {lo} at {100 * p:g}% label noise? "
                       f"{hi} - {lo} = {est.text()}: {stats.verdict(est, blocked=why)}.")
    return out


def loss_curves(df: pd.DataFrame, out=None):
    """App. B.4 (Fig. B.4): the training loss (task loss plus the weighted regulariser) of each
    epoch per method, mean ± SEM over seeds, one panel per label-noise strength; forward's is
    its corrected second stage. Needs the trials' arrays (a results folder)."""
    d, fixed = label_noise_rows(df)
    if d.empty:
        d, fixed = layers_rows(df)
    if d.empty or not df.attrs.get("source"):
        raise ValueError("no label-noise rows with a results folder to read the per-epoch losses from")
    d.attrs["source"] = df.attrs["source"]
    s = epoch_curves(d, ["label_noise", "label"], ("epoch_loss",))
    if s.empty:
        raise ValueError("no epoch_loss arrays (trials written before SE-SNN kept them)")
    levels = sorted(s["label_noise"].unique())
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    for ax, p in zip(axes[0], levels):
        for label, g in s[s["label_noise"] == p].groupby("label"):
            ax.plot(g["epoch"], g["mean"], lw=1.2, label=label, linestyle="-" if "SE-SNN" in label else ":")
            ax.fill_between(g["epoch"], g["mean"] - g["sem"].fillna(0), g["mean"] + g["sem"].fillna(0), alpha=0.2)
        ax.set(xlabel="epoch", ylabel="training loss", title=f"label noise {100 * p:g}%")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Training loss per epoch (mean ± SEM over seeds; band: SEM)"
                 + (f"; {fixed_text(fixed)}" if fixed else ""), fontsize=9)
    fig.tight_layout()
    fig.plotted = s
    save(fig, out)
    return fig


def cw_and_layer_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The section's CW-L2 and stochastic-layer tables, with their captions."""
    out = []
    t = cw_table(df)
    if not t.empty:
        fixed = fixed_text(t.attrs.get("fixed", {}))
        d, _ = cw_rows(df)
        if "eot_fixed_draws" in d and d["eot_fixed_draws"].eq(True).all():
            draws = ("every call of the attack averages the same eot_draws draws (eot_fixed_draws), and the "
                     "attacked images are tested on fresh draws")
        else:  # rows from before eot_fixed_draws, or with it off
            draws = ("on a sampled network every call of the attack drew fresh noise, so ART's line and binary "
                     "searches compared noisy losses and a low success rate there is the attack failing, not "
                     "robustness (README: on one SE-SNN 17% success with fresh draws, 88% with fixed ones)")
        out.append(("Untargeted CW-L2 over draws (ART): accuracy %, success rate % (of the images the clean row gets "
                    f"right) and mean L2 of the successful perturbations (mean ± SEM over seeds); {draws}"
                    + (f"; {fixed}" if fixed else ""), t))
    t = layers_table(df)
    if not t.empty:
        fixed = fixed_text(t.attrs.get("fixed", {}))
        out.append(("Clean test accuracy % under patterned label noise by number of stochastic layers (mean ± SEM "
                    "over seeds)" + (f"; {fixed}" if fixed else ""), t.reset_index()))
    return out


FIGURES |= {"cw_bars": cw_bars, "layers_curves": layers_curves, "loss_curves": loss_curves}


# ---------------------------------------------------------------------------------------------
# Findings


def _tails(d: pd.DataFrame) -> pd.Series:
    runs = d.drop_duplicates("trial_key") if "trial_key" in d.columns else d
    return runs["loss_tail_share"].astype(float)


def unconverged(d: pd.DataFrame) -> str:
    """'' if in every run the last 20% of epochs gave less than CONVERGED_SHARE of its loss
    decrease, else why not."""
    tail = _tails(d)
    if tail.isna().any() or not len(tail):
        return "the loss tail is not measured (fewer than 10 epochs)"
    worst = float(tail.abs().max())
    return "" if worst < CONVERGED_SHARE else \
        f"not converged: the last 20% of epochs still gave up to {100 * worst:.1f}% of a run's loss decrease"


def _compare(d: pd.DataFrame, a: str, b: str) -> stats.Estimate:
    """a - b of accuracy over seeds (paired on shared seeds; each seed's rows of an arm averaged)."""
    return stats.compare(d, "label", a, b)


def _unconverged_arms(d: pd.DataFrame, a: str, b: str) -> str:
    return unconverged(d[d["label"].isin([a, b])])


def _points(margin: float) -> str:
    return f"{100 * margin:g} point{'s' if 100 * margin != 1 else ''}"


def label_noise_findings(df: pd.DataFrame, margin: float = stats.MARGIN) -> list[str]:
    """The label-noise claims, each with its estimate and verdict. `margin`: the non-inferiority
    margin of "SE-SNN matches or beats Forward" at small noise (accuracy, 0.01 = one point)."""
    d, fixed = label_noise_rows(df)
    if d.empty:
        return []
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    clean = d[(d["label"] == BASELINE) & (d["label_noise"] == 0)]
    if not clean.empty:
        m, s, n = stats.mean_sem(clean["accuracy"])
        tail = _tails(d)
        fell = (d["final_loss"] < d["initial_loss"]).all()
        out.append(f"[label noise{note}] Training: Baseline on clean labels {stats.fmt(m, s, unit='%')} over "
                   f"{stats.plural(n, 'seed')} (chance {100 / clean['num_classes'].iloc[0]:.0f}%); final training loss below the first "
                   f"in {'every' if fell else 'not every'} run; share of a run's loss decrease in its last 20% of "
                   f"epochs: median {stats.number(100 * tail.median(), 2)}%, largest {stats.number(100 * tail.abs().max(), 2)}% "
                   f"(converged means below {100 * CONVERGED_SHARE:g}%).")
    levels = sorted(d["label_noise"].unique())
    at = ANCHOR_NOISE if ANCHOR_NOISE in levels else max(levels)
    g = d[d["label_noise"] == at]
    for ours in _sesnn_variants(g["label"]):
        if BASELINE not in set(g["label"]):
            break
        est = _compare(g, ours, BASELINE)
        caveats = protocol_caveats(g, PAPER_PROTOCOL)
        paper = (f"; the paper: {ANCHORS[SESNN]}% vs {ANCHORS[BASELINE]}% on MNIST"
                 + (f" (ours on {'; '.join(caveats)})" if caveats else "")) \
            if at == ANCHOR_NOISE and ours == SESNN and not protocol_differences(g, PAPER_PROTOCOL) else ""
        out.append(f"[label noise{note}] {ours} beats Baseline under {100 * at:g}% label noise? {ours} - Baseline = "
                   f"{est.text()}{paper}: {stats.verdict(est, blocked=_unconverged_arms(g, ours, BASELINE))}.")
    if {SESNN_FORWARD, FORWARD} <= set(g["label"]):
        est = _compare(g, SESNN_FORWARD, FORWARD)
        out.append(f"[label noise{note}] SE-SNN+Forward beats Forward under {100 * at:g}% label noise? "
                   f"SE-SNN+Forward - Forward = {est.text()}: "
                   f"{stats.verdict(est, blocked=_unconverged_arms(g, SESNN_FORWARD, FORWARD))}.")
    for p in levels:  # "only beaten by Forward Correction when the corruption strength is large (>0.2)"
        g = d[d["label_noise"] == p]
        if p == 0 or not {SESNN, FORWARD} <= set(g["label"]):
            continue
        why = _unconverged_arms(g, SESNN, FORWARD)
        if p > 0.2:
            est = _compare(g, FORWARD, SESNN)
            out.append(f"[label noise{note}] Forward beats SE-SNN at {100 * p:g}% (above 20%, as the paper says)? "
                       f"Forward - SE-SNN = {est.text()}: {stats.verdict(est, blocked=why)}.")
            continue
        est = _compare(g, SESNN, FORWARD)
        out.append(f"[label noise{note}] SE-SNN matches or beats Forward at {100 * p:g}% (not above 20%): not worse "
                   f"by more than {_points(margin)} (non-inferiority)? SE-SNN - Forward = {est.text(null=-margin)} "
                   f"(p against -{_points(margin)}): "
                   f"{stats.verdict(est, margin=margin, blocked=why)}.")
    f = d[(d["loss"] == "forward") & (d["label_noise"] > 0)]
    for label, g in f.groupby("label"):
        per = ", ".join(f"{100 * p:g}%: {stats.fmt(*stats.mean_sem(h['transition_error'])[:2], scale=1, digits=3)}"
                        for p, h in g.groupby("label_noise"))
        out.append(f"[label noise{note}] {label}: error of the estimated corruption matrix, mean |T_est - T| over its "
                   f"entries (mean ± SEM over seeds): {per}.")
    s = d[(d["model"] == "sesnn") & (d["label_noise"] > 0)]
    for (label, p), g in s.groupby(["label", "label_noise"]):
        diffs = (g["log_sigma_flipped"] - g["log_sigma_kept"]).groupby(g["seed"]).mean()
        est = stats.estimate(diffs.to_numpy())
        m, se, _ = stats.mean_sem(diffs)
        out.append(f"[label noise{note}] {label} gives flipped training samples higher entropy (Eq. 6) at "
                   f"{100 * p:g}%? mean log σ flipped - kept (mean ± SEM over seeds: "
                   f"{stats.fmt(m, se, scale=1, digits=3)}) = "
                   f"{est.text(scale=1, unit='')}: {stats.verdict(est, scale=1, unit='')}.")
    for label, g in s.groupby("label"):
        out.append(f"[label noise{note}] {label}: {hinge_text(g)}.")
    return out


def _sesnn_variants(labels) -> list[str]:
    """SE-SNN and its variants without a Forward stage ("SE-SNN (ω=1)"), SE-SNN first."""
    return sorted({l for l in labels if l == SESNN or l.startswith(SESNN + " (")}, key=lambda l: (l != SESNN, l))


def hinge_text(g: pd.DataFrame) -> str:
    """Where the margin binds in these runs: the mean share of active hinge terms per equation."""
    if not set(HINGES) <= set(g.columns) or g[list(HINGES)].isna().all().all():
        return "hinge shares not recorded (rows written before the trial measured them)"
    shares = ", ".join(f"{EQUATION[h.split('_')[-1]]} {100 * float(g[h].mean()):.1f}%" for h in HINGES)
    all_active = bool((g[list(HINGES)] >= 1).all().all())
    return (f"share of hinge terms active at the end of training (training set, mean over {len(g)} runs): {shares}"
            + ("; every term active in every run, so Eq. 5, 6 and 7 are one loss, omega x (b - mean log σ), "
               "and no run here tests the per-sample mechanism" if all_active else ""))

def _training(a: float) -> str:
    return "normal training" if a == 0 else f"FGS training at {a:g}"


def _setting(attack: str, eps: float) -> str:
    return {"none": "clean", "fgsm": f"eps {eps:g}", "cw_l2": "CW-L2"}.get(attack, f"{attack} eps {eps:g}")


def defence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fig. 2a as numbers: accuracy % mean ± SEM over seeds per (training, method) (rows) and test
    setting (columns: clean, then each FGS eps)."""
    d, fixed = defence_rows(df)
    if d.empty or not (d["attack"] != "none").any():
        return pd.DataFrame()
    keys = sorted(set(zip(d["attack"], d["eps"])), key=lambda k: (k[0] != "none", k[0], k[1]))
    rows = []
    for a in sorted(d["adv_train_eps"].unique()):
        g = d[d["adv_train_eps"] == a]
        for label in _order(g["label"].unique()):
            h = g[g["label"] == label]
            rows.append({"training": _training(a), "method": label}
                        | {_setting(*k): stats.cell(h[(h["attack"] == k[0]) & (h["eps"] == k[1])]["accuracy"],
                                                    chance=1 / float(h["num_classes"].iloc[0]),
                                                    count=True) for k in keys})
    t = pd.DataFrame(rows)
    t.attrs["fixed"] = fixed
    return t


def defence_comparisons(df: pd.DataFrame) -> list[dict]:
    """SE-SNN - rival (Baseline, Deep VIB) of accuracy at each FGS eps of each training, paired over
    seeds, with its verdict: one claim per eps, never an average over a band of eps. Blocked where
    a run did not converge or both arms are at or below chance."""
    d, _ = defence_rows(df)
    if d.empty or not (d["attack"] == "fgsm").any():
        return []
    out = []
    for a, g in d.groupby("adv_train_eps"):
        chance = 1 / float(g["num_classes"].iloc[0])
        attacked = g[g["attack"] == "fgsm"]
        for rival in (BASELINE, VIB):
            if not {SESNN, rival} <= set(attacked["label"]):
                continue
            why_runs = _unconverged_arms(g, SESNN, rival)
            for eps, rows in attacked.groupby("eps"):
                est = _compare(rows, SESNN, rival)
                ours = float(rows[rows["label"] == SESNN]["accuracy"].mean())
                theirs = float(rows[rows["label"] == rival]["accuracy"].mean())
                why = why_runs or (f"both at or below chance ({100 * chance:.0f}%): the attack beats either network"
                                   if max(ours, theirs) <= chance else "")
                out.append({"adv_train_eps": a, "rival": rival, "eps": float(eps), "ours": ours, "theirs": theirs,
                            "estimate": est, "verdict": stats.verdict(est, blocked=why)})
    return out


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def defence_difference_table(df: pd.DataFrame) -> pd.DataFrame:
    """defence_comparisons() as a table: one row per (training, rival, eps)."""
    rows = []
    for c in defence_comparisons(df):
        e = c["estimate"]
        lo, hi = e.interval()
        rows.append({"training": _training(c["adv_train_eps"]), "SE-SNN - rival": f"SE-SNN - {c['rival']}",
                     "eps": f"{c['eps']:g}", "difference (points)": f"{100 * e.mean:+.2f}",
                     "95% CI": f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if e.n > 1 else "",
                     "p": _p(e.p()), "seeds": e.n,
                     "verdict": str(c["verdict"])})
    return pd.DataFrame(rows)


def defence_findings(df: pd.DataFrame) -> list[str]:
    d, fixed = defence_rows(df)
    if d.empty or not (d["attack"] == "fgsm").any():
        return []
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    comparisons = defence_comparisons(df)
    for a, g in d.groupby("adv_train_eps"):
        training = _training(a)
        clean = g[g["attack"] == "none"]
        for label, c in clean.groupby("label"):
            m, s, n = stats.mean_sem(c["accuracy"])
            out.append(f"[defence, {training}{note}] {label} clean accuracy {stats.fmt(m, s, unit='%')} over "
                       f"{stats.plural(n, 'seed')}; the last 20% of epochs gave up to "
                       f"{stats.number(100 * _tails(c).abs().max(), 2)}% of a run's loss decrease.")
        for rival in (BASELINE, VIB):
            mine = [c for c in comparisons if c["adv_train_eps"] == a and c["rival"] == rival]
            for c in mine:
                out.append(f"[defence, {training}{note}] SE-SNN beats {rival} under FGS at eps {c['eps']:g} "
                           f"({100 * c['ours']:.1f}% vs {100 * c['theirs']:.1f}%)? SE-SNN - {rival} = "
                           f"{c['estimate'].text()}: {c['verdict']}.")
            if mine:
                words = {}
                for c in mine:
                    words.setdefault(c["verdict"].word, []).append(f"{c['eps']:g}")
                out.append(f"[defence, {training}{note}] SE-SNN against {rival} over the FGS strengths (the paper: "
                           f"\"particularly pronounced when the attack magnitude is large\"), per eps: "
                           + "; ".join(f"{w} at eps {', '.join(e)}" for w, e in words.items()) + ".")
    return out


def margin_findings(df: pd.DataFrame) -> list[str]:
    """App. B.1: the accuracy range over omega at each b, and "a larger b helps under label noise"
    tested at each omega (largest b minus smallest, paired over seeds)."""
    d, fixed = margin_rows(df)
    d = d[d["model"] == "sesnn"] if not d.empty else d
    if d.empty or d["omega"].nunique() < 2 or d["margin"].nunique() < 2:
        return []
    note = f" ({fixed_text(fixed)})" if fixed else ""
    s = stats.summarize(d, ["omega", "margin"])
    spread = s.groupby("margin")["mean"].agg(lambda v: v.max() - v.min())
    out = [f"[margin{note}] Accuracy range over omega at each b: "
           + ", ".join(f"b={b_text(b)}: {100 * r:.1f} points" for b, r in spread.items())
           + f" (largest SEM of a cell {100 * float(s['sem'].max()):.1f} points)."]
    paper = d[d["margin"].map(lambda b: any(abs(b - p) < 1e-9 for p in PAPER_MARGINS))]
    tested = paper if paper["margin"].nunique() >= 2 else d
    lo, hi = min(tested["margin"]), max(tested["margin"])
    for omega, g in tested.groupby("omega"):
        est = stats.compare(g, "margin", hi, lo)
        out.append(f"[margin{note}] A larger b helps under label noise at omega {omega:g}? accuracy at "
                   f"b = {b_text(hi)} - at b = {b_text(lo)} = {est.text()}: "
                   f"{stats.verdict(est, blocked=unconverged(g))}.")
    binding = hinge_map(df)
    if not binding.empty:
        one_loss = [f"omega {o}, b = {b}" for o, row in binding.iterrows() for b, cell in row.items()
                    if cell.startswith("all active")]
        out.append(f"[margin{note}] Where the margin binds (the table of active hinge terms): every term of Eq. 5, 6 "
                   f"and 7 stays active, so the three are one loss, in {len(one_loss)} of {binding.size} "
                   f"(omega, b) cells: {'; '.join(one_loss) if one_loss else 'none'}.")
    return out + aggregation_findings(df)


def hinge_map(df: pd.DataFrame) -> pd.DataFrame:
    """omega (rows) x b (columns) of the trained equation's rows: the mean share of active hinge
    terms of Eq. 6 (5 and 7 in brackets), "all active" where every term of all three is active."""
    d, _ = margin_rows(df)
    d = d[d["model"] == "sesnn"] if not d.empty else d
    if d.empty or not set(HINGES) <= set(d.columns) or d[list(HINGES)].isna().all().all():
        return pd.DataFrame()
    cells = {}
    for (omega, b), g in d.groupby(["omega", "margin"]):
        m = {h: 100 * float(g[h].mean()) for h in HINGES}
        text = "all active" if all(g[h].min() >= 1 for h in HINGES) else \
            f"Eq. 6 {m['hinge_active_sample']:.1f}% (Eq. 5 {m['hinge_active_neuron']:.1f}%, Eq. 7 {m['hinge_active_both']:.1f}%)"
        cells.setdefault(f"{omega:g}", {})[b_text(b)] = text
    t = pd.DataFrame(cells).T
    t = t[[b_text(b) for b in sorted(d["margin"].unique())]]
    t.index.name = "omega"
    return t


def aggregation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (omega, b) where more than one aggregation ran: accuracy % and the share of active
    hinge terms of the trained equation, per Eq. 5 / 6 / 7 (mean ± SEM over seeds)."""
    d, fixed = aggregation_rows(df)
    d = d[d["model"] == "sesnn"] if not d.empty and "aggregation" in d.columns else d.iloc[0:0]
    rows = []
    for (omega, b), g in d.groupby(["omega", "margin"]):
        if g["aggregation"].nunique() < 2:
            continue
        for agg, h in g.groupby("aggregation"):
            rows.append({"omega": f"{omega:g}", "b": b_text(b), "trained with": EQUATION.get(agg, agg),
                         "accuracy %": stats.cell(h["accuracy"], count=True)}
                        | {f"active {EQUATION[c.split('_')[-1]]}": stats.cell(h[c], scale=100) if c in h else ""
                           for c in HINGES})
    t = pd.DataFrame(rows)
    t.attrs["fixed"] = fixed
    return t


def aggregation_findings(df: pd.DataFrame) -> list[str]:
    """The paper's choice of Eq. 6 for label noise: Eq. 6 beats Eq. 5 and Eq. 7 (paired over seeds)
    at each (omega, b) where they ran, and whether they trained bit-identical networks."""
    d, fixed = aggregation_rows(df)
    if d.empty or "aggregation" not in d.columns:
        return []
    d = d[d["model"] == "sesnn"]
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    for (omega, b), g in d.groupby(["omega", "margin"]):
        if "sample" not in set(g["aggregation"]):
            continue
        for rival in ("neuron", "both"):
            if rival not in set(g["aggregation"]):
                continue
            est = stats.compare(g, "aggregation", "sample", rival)
            same = ""
            if "params_digest" in g.columns:
                digests = g.groupby(["seed", "aggregation"])["params_digest"].first().unstack()
                if {"sample", rival} <= set(digests.columns):
                    n = int((digests["sample"] == digests[rival]).sum())
                    same = f"; bit-identical networks on {n} of {len(digests)} seeds"
            out.append(f"[margin{note}] Eq. 6 (per sample) beats {EQUATION[rival]} under label noise at omega {omega:g}, "
                       f"b = {b_text(b)}? Eq. 6 - {EQUATION[rival]} = {est.text()}{same}: "
                       f"{stats.verdict(est, blocked=unconverged(g))}.")
    return out


def label_note(df: pd.DataFrame) -> list[str]:
    """A finding saying which rows carry no method label, if any."""
    rows = sesnn_rows(df)
    n = unlabelled(rows)
    if not n:
        return []
    return [f"[labels] {n} of {len(rows)} rows carry no `label` (written before the trial recorded the search "
            f"space's method labels): their methods are named by model+loss (e.g. sesnn+ce), and the claims, "
            f"which name the paper's methods (SE-SNN, Baseline, Forward, Deep VIB), are not tested on them. "
            f"Re-run the experiment to get labelled rows."]


# ---------------------------------------------------------------------------------------------
# Compression by pruning (Tables 1-3): rows of the method sesnn_prune

PRUNE_METHOD = "sesnn_prune"
BASELINE_PRUNE = "Baseline (ω=0)"  # search_spaces/sesnn.py PRUNE_ARMS; SESNN is the other arm
# Tables 1-3's SE-SNN rows: (arch, dataset) -> model size %, FLOPs (millions), memory %, error %.
PRUNE_ANCHORS = {("lenet5", "mnist"): (2.35, 0.061, 11.08, 0.9), ("vgg16", "cifar10"): (2.57, 53.61, 49.41, 8.0),
                 ("vgg16_cifar100", "cifar100"): (14.93, 181.31, 70.16, 26.2)}
IMAGE_SIZES = {"mnist": 28, "cifar10": 32, "cifar100": 32}
# What must match for the paper's row to sit beside ours (each table adds its data set, image size
# and architecture): the unpruned widths, Eq. 5's omega and b, one unit removed per round.
PRUNE_PROTOCOL = {"widths": "[]", "omega": 1e-4, "margin": math.log(4), "prune_per_step": 1}
PRUNE_KEPT = {"arch", "dataset", "image_size", "channels", "omega", "stage", "label", "model", "aggregation"}
PRUNE_IGNORED = {"eval_batch_size"}
STAGE_NAMES = {"pruned": "pruned", "batch_pruned": "never-active units removed", "trained": "unpruned"}
COMPRESSION_COLUMNS = ("Model size (%)", "FLOPs (Mil)", "Memory (%)", "Error (%)", "Architecture")


def prune_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = ok_rows(df)
    return d[d["method"] == PRUNE_METHOD] if "method" in d.columns else d.iloc[0:0]


def _arm(d: pd.DataFrame) -> pd.Series:
    """The rows' own label, else their omega ("ω=0.0001")."""
    given = d["label"].astype("string") if "label" in d.columns else pd.Series(pd.NA, index=d.index, dtype="string")
    raw = "ω=" + d["omega"].map(lambda v: f"{float(v):g}")
    return given.where((given.str.len() > 0).fillna(False)).fillna(raw).astype(str)


def compression_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table) per network and data set in Tables 1-3's layout: a row per arm and stage
    (mean ± SEM over seeds; the architectures the seeds reached), the paper's SE-SNN row beside
    ours only where the protocol matches."""
    d = prune_rows(df)
    out = []
    if d.empty:
        return out
    for (arch, dataset), g in d.groupby(["arch", "dataset"]):
        g, fixed = stats.one_setting(g, PRUNE_KEPT, {}, (), PRUNE_IGNORED)
        g = g.assign(label=_arm(g))
        rows = {}
        for (label, stage), h in sorted(g.groupby(["label", "stage"]), key=lambda kv: (
                "SE-SNN" not in kv[0][0], kv[0][0], list(STAGE_NAMES).index(kv[0][1]))):
            rows[f"{label} ({STAGE_NAMES[stage]})"] = dict(zip(COMPRESSION_COLUMNS, (
                stats.cell(h["size_pct"], scale=1), stats.cell(h["mflops"], scale=1, digits=3),
                stats.cell(h["memory_pct"], scale=1), stats.cell(h["error"]),
                "; ".join(sorted(set(h["architecture"]))))))
        parent = next((p for p in IMAGE_SIZES if not protocol_differences(g, {"dataset": p})), str(dataset))
        anchor = PRUNE_ANCHORS.get((arch, parent))
        ours = g[g["label"] == SESNN]
        protocol = {"dataset": parent, "image_size": IMAGE_SIZES.get(parent), "arch": arch} | PRUNE_PROTOCOL
        differs = protocol_differences(ours, protocol) if not ours.empty else ["no SE-SNN rows"]
        if anchor and not differs:
            rows[f"{SESNN} (paper)"] = dict(zip(COMPRESSION_COLUMNS, (*map(str, anchor), "")))
            caveats = protocol_caveats(ours, protocol)
            note = "the paper's row where the protocol matches" + (f" (the one remaining difference: "
                                                                    f"{'; '.join(caveats)})" if caveats else "")
        else:
            note = ("no paper row: the protocol differs (" + "; ".join(differs) + ")") if anchor else \
                "no paper row for this network"
        t = pd.DataFrame(rows).T
        t.index.name = "method"
        caption = (f"Compression of {arch} on {dataset} (Tables 1-3 layout; mean ± SEM over seeds): size = % of the "
                   "unpruned network's nonzero weights, FLOPs = multiplications of one image, memory = % of its "
                   f"feature-map elements, test error with mu passed; {note}")
        out.append((caption + (f"; {fixed_text(fixed)}" if fixed else ""), t.reset_index()))
    return out


def compression_findings(df: pd.DataFrame) -> list[str]:
    """What the entropy adds: SE-SNN's pruned network needs fewer FLOPs than the same pipeline
    with omega 0, paired over seeds, per network and data set."""
    d = prune_rows(df)
    found = []
    if d.empty:
        return found
    d = d[d["stage"] == "pruned"].assign(label=_arm(d[d["stage"] == "pruned"]))
    for (arch, dataset), g in d.groupby(["arch", "dataset"]):
        g, _ = stats.one_setting(g, PRUNE_KEPT, {}, (), PRUNE_IGNORED)
        if not {SESNN, BASELINE_PRUNE} <= set(g["label"]):
            continue
        est = stats.compare(g, "label", SESNN, BASELINE_PRUNE, metric="mflops")
        v = stats.verdict(est, direction=-1, scale=1, unit=" MFLOPs")
        found.append(f"{arch} on {dataset}: SE-SNN's pruned network needs fewer FLOPs than {BASELINE_PRUNE}'s "
                     f"under the same pipeline and budget? {v} (difference {stats.number(est.mean)} MFLOPs over "
                     f"{stats.plural(est.n, 'seed')})")
    return found


# App. B.2: pruning while training with 40% label noise (experiment prune_labelnoise_sesnn), the MLP
# 784-128-128-10. The paper's Fig. B.2 text: test accuracy % of each compared model.
B2_ARCH = "mlp"
B2_PAPER = {("Baseline", "trained"): (81.04, ""), ("SE-SNN", "trained"): (95.17, ""),
            ("SE-SNN", "pruned"): (95.20, "145-26-15-10")}
B2_STAGES = ("trained", "batch_pruned", "pruned")  # the table's row order: before pruning first
B2_PROTOCOL = {"dataset": "mnist", "image_size": 28, "arch": B2_ARCH, "widths": "[]", "label_noise": 0.4,
               "omega": 1e-2, "aggregation": "sample", "margin": math.log(4)}


def b2_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = prune_rows(df)
    d = d[d["arch"] == B2_ARCH] if not d.empty else d
    return d.assign(label=_arm(d)) if not d.empty else d


def b2_table(df: pd.DataFrame) -> tuple[str, pd.DataFrame] | None:
    """App. B.2's comparison: test accuracy (clean test labels) of each arm's unpruned and pruned
    network, with the architecture reached; the paper's numbers beside ours only where the
    protocol matches."""
    d = b2_rows(df)
    if d.empty:
        return None
    d, fixed = stats.one_setting(d, PRUNE_KEPT, {}, (), PRUNE_IGNORED)
    ours = d[d["label"] == SESNN]
    differs = protocol_differences(ours, B2_PROTOCOL) if not ours.empty else ["no SE-SNN rows"]
    rows = []
    for (label, stage), h in sorted(d.groupby(["label", "stage"]), key=lambda kv: (
            kv[0][0] != "Baseline", kv[0][0], B2_STAGES.index(kv[0][1]))):
        paper = B2_PAPER.get((label, stage))
        rows.append({"method": f"{label} ({STAGE_NAMES[stage]})", "Accuracy (%)": stats.cell(h["accuracy"]),
                     "Architecture": "; ".join(sorted(set(h["architecture"]))),
                     "Paper": f"{paper[0]}%" + (f" ({paper[1]})" if paper[1] else "") if paper and not differs else ""})
    caveats = protocol_caveats(ours, B2_PROTOCOL) if not differs else []
    note = (("the paper's numbers beside ours where the protocol matches" + (
        f" (the one remaining difference: {'; '.join(caveats)})" if caveats else "")) if not differs else
            "no paper numbers: the protocol differs (" + "; ".join(differs) + ")")
    caption = ("App. B.2: pruning while training with label noise, test accuracy on clean test labels "
               f"(mean ± SEM over seeds) of each arm before and after pruning (the compression table of the same "
               f"rows has their size, FLOPs and memory); {note}")
    return caption + (f"; {fixed_text(fixed)}" if fixed else ""), pd.DataFrame(rows)


def b2_findings(df: pd.DataFrame) -> list[str]:
    """App. B.2's two claims, paired over seeds: the pruned SE-SNN beats the (unpruned) Baseline,
    and pruning keeps the SE-SNN's accuracy (non-inferiority, one point)."""
    d = b2_rows(df)
    if d.empty:
        return []
    d, fixed = stats.one_setting(d, PRUNE_KEPT, {}, (), PRUNE_IGNORED)
    note = f" ({fixed_text(fixed)})" if fixed else ""
    arms = d.assign(arm=d["label"] + " " + d["stage"])
    out = []
    for ours in _sesnn_variants(d["label"].unique()):
        pruned = f"{ours} pruned"
        if pruned not in set(arms["arm"]):
            continue
        if "Baseline trained" in set(arms["arm"]):
            est = stats.compare(arms, "arm", pruned, "Baseline trained")
            paper = " (the paper: 95.20% vs 81.04%)" if ours == SESNN else ""
            out.append(f"[App. B.2{note}] The pruned {ours} beats the unpruned Baseline under label noise{paper}? "
                       f"pruned {ours} - Baseline = {est.text()}: {stats.verdict(est)}.")
        if f"{ours} trained" in set(arms["arm"]):
            est = stats.compare(arms, "arm", pruned, f"{ours} trained")
            units = d[(d["label"] == ours) & (d["stage"] == "pruned")]
            left = stats.cell(units["size_pct"], scale=1)
            paper = " (the paper: 95.20% pruned vs 95.17%)" if ours == SESNN else ""
            out.append(f"[App. B.2{note}] Pruning keeps {ours}'s accuracy within {100 * stats.MARGIN:g} point "
                       f"(pruned to {left}% of its weights){paper}? pruned - unpruned = {est.text(null=-stats.MARGIN)}: "
                       f"{stats.verdict(est, margin=stats.MARGIN)}.")
    return out


def prune_progress(df: pd.DataFrame, out=None):
    """Accuracy against units removed: the iterative stage of each pruning run, one panel per
    network and data set, one line per run (colour: arm; line style: seed). Needs the trials'
    arrays (a results folder)."""
    from analysis.load import artefacts
    d = prune_rows(df)
    d = d[d["stage"] == "pruned"] if not d.empty else d
    source = df.attrs.get("source")
    if d.empty or not source:
        raise ValueError("no pruning rows with a results folder to read the rounds from")
    d = d.assign(label=_arm(d))
    runs = []
    for r in d.drop_duplicates("trial_key").to_dict("records"):
        a = artefacts(source, r["trial_key"])
        if "prune_units" not in a:
            continue
        start = (float(r["units_trained"] - r["units_batch_pruned"]), float(r["budget_accuracy_start"]))
        runs.append({**r, "units": [start[0], *map(float, a["prune_units"])],
                     "accuracy": [start[1], *map(float, a["prune_budget_accuracy"])]})
    if not runs:
        raise ValueError("no prune_units arrays (trials written before the pruning kept them)")
    panels = sorted({(r["arch"], r["dataset"]) for r in runs})
    labels = _order({r["label"] for r in runs})
    runs.sort(key=lambda r: (labels.index(r["label"]), int(r["seed"])))  # the legend in arm, seed order
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    dashes = ("-", "--", ":", "-.")
    for ax, (arch, dataset) in zip(axes[0], panels):
        for r in (r for r in runs if (r["arch"], r["dataset"]) == (arch, dataset)):
            colour = f"C{labels.index(r['label'])}"
            ax.plot(r["units"], [100 * a for a in r["accuracy"]], marker=".", ms=3, lw=1, color=colour,
                    linestyle=dashes[int(r["seed"]) % len(dashes)],
                    label=f"{r['label']}, seed {r['seed']} (stop: {r.get('stop_reason') or '?'})")
            ax.plot(r["units"][:1], [100 * r["accuracy"][0]], marker="o", color=colour, mfc="none")
            ax.axhline(100 * (r["budget_accuracy_start"] - r["error_budget"]), color=colour, lw=0.6, alpha=0.5,
                       linestyle=dashes[int(r["seed"]) % len(dashes)])
            if pd.notna(r.get("rejected_units")):
                ax.plot([r["rejected_units"]], [100 * r["rejected_budget_accuracy"]], marker="x", color=colour)
        ax.invert_xaxis()
        ax.set(xlabel="hidden units and channels left", ylabel="accuracy on the budget images (%)",
               title=f"{arch} on {dataset}")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Iterative pruning: accuracy after each round's removal and fine-tuning", fontsize=9)
    fig.tight_layout()
    fig.caption = ("Each line is one run's iterative stage, read right to left as units go (the x axis runs from "
                   "many units to few): the open circle is the network after the never-active units were removed "
                   "(the budget's reference), each dot a kept round (accuracy on the budget images after its "
                   "fine-tuning), the cross the removal that broke the budget and ended the run (not kept; none where "
                   "the run stopped for another reason, named in the legend); the "
                   "thin horizontal line of the same colour and dash is that run's budget floor (reference minus "
                   "error_budget). Colour: arm; dash: seed.")
    fig.plotted = pd.DataFrame([{"label": r["label"], "seed": r["seed"], "units": u, "accuracy": a}
                                for r in runs for u, a in zip(r["units"], r["accuracy"])])
    save(fig, out)
    return fig


FIGURES["prune_progress"] = prune_progress


def findings(df: pd.DataFrame, margin: float = stats.MARGIN) -> list[str]:
    return (label_note(df) + label_noise_findings(df, margin) + defence_findings(df) + cw_findings(df)
            + margin_findings(df) + layers_findings(df) + compression_findings(df) + b2_findings(df))


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: the label-noise and defence tables, the figures,
    findings."""
    tables_ = []
    t = label_noise_table(df)
    if not t.empty:
        fixed = fixed_text(t.attrs.get("fixed", {}))
        rows = label_noise_rows(df)[0]
        caveats = protocol_caveats(rows, PAPER_PROTOCOL)
        anchors = ("the paper's 40% anchors in brackets" + (f" (the one remaining difference: {'; '.join(caveats)})"
                                                            if caveats else "")) if t.attrs.get("comparable") else \
            "no paper anchors: the protocol differs (" + "; ".join(protocol_differences(rows, PAPER_PROTOCOL)) + ")"
        tables_.append((f"Clean test accuracy % under patterned label noise (mean ± SEM over seeds); {anchors}"
                        + (f"; {fixed}" if fixed else ""), t.reset_index()))
    t = defence_table(df)
    if not t.empty:
        fixed = fixed_text(t.attrs.get("fixed", {}))
        tables_.append(("Accuracy % under untargeted FGS per eps (mean ± SEM over seeds), by training and method"
                        + (f"; {fixed}" if fixed else ""), t))
    t = defence_difference_table(df)
    if not t.empty:
        tables_.append(("SE-SNN - rival accuracy per FGS eps, paired over seeds (points, 95% t interval, "
                        "two-sided p); one verdict per eps", t))
    t = hinge_map(df)
    if not t.empty:
        tables_.append(("Share of hinge terms (b - mean log σ)^+ active at the end of training (training set, mean "
                        "over seeds), omega x b: where every term is active Eq. 5, 6 and 7 are one loss", t.reset_index()))
    t = aggregation_table(df)
    if not t.empty:
        fixed = fixed_text(t.attrs.get("fixed", {}))
        tables_.append(("Eq. 5 / 6 / 7 where more than one ran: accuracy % and the share of hinge terms active at the "
                        "end of training (training set; %, mean ± SEM over seeds)" + (f"; {fixed}" if fixed else ""), t))
    for caption, t in cw_and_layer_tables(df):
        tables_.append((caption, t))
    tables_ += compression_tables(df)
    tables_ += [t for t in [b2_table(df)] if t]
    tables_ += reid_tables(df)  # Table 4 (re-identification), defined below
    made, skipped, captions = draw(FIGURES, df, out)
    return {"title": "Stochastic networks with max-entropy regularisation (se-snn)", "tables": tables_,
            "figures": made, "captions": captions, "skipped": skipped, "findings": findings(df) + reid_findings(df)}


# ---------------------------------------------------------------------------------------------
# Re-identification with label noise (Table 4, Fig. 3b): rows of the `sesnn_reid` method
# (experiment reid_sesnn). Method names are the rows' `label` (search_spaces/sesnn.py REID_METHODS:
# Table 4's abbreviations); CleanNet (C) is not built, so its row is absent.

REID_KNOWN = ("dataset", "backbone", "weights", "model", "parallel_layer", "aggregation", "omega", "margin", "loss",
              "label_noise", "noise_features", "stage1_iterations", "stage2_iterations", "stage1_lr", "stage2_lr",
              "batch_size", "distance", "ap_rule", "features", "proxy_dataset", "proxy_image_size")
REID_DRAWN = {"model", "loss", "label_noise"}
REID_ORDER = ("B", "H", "S", "F", "SE-SNN")  # Table 4's row order, C (CleanNet) not built
# Table 4 (%, mean over the paper's runs): noise -> method -> (mAP, rank-1); and the text's 0% mAP.
REID_PAPER = {0.1: {"B": (25.87, 51.46), "H": (25.76, 51.08), "S": (25.50, 50.47), "F": (21.17, 45.88),
                    "SE-SNN": (27.30, 53.21)},
              0.2: {"B": (23.49, 48.44), "H": (23.40, 48.25), "S": (24.08, 49.51), "F": (18.91, 42.11),
                    "SE-SNN": (24.72, 49.87)},
              0.5: {"B": (20.74, 44.04), "H": (19.87, 42.87), "S": (20.72, 43.86), "F": (15.34, 36.06),
                    "SE-SNN": (21.32, 44.86)},
              0.0: {"B": (67.66, None), "SE-SNN": (70.20, None)}}
REID_PROTOCOL = {"dataset": "market1501", "backbone": "resnet50", "stage1_iterations": 60000,
                 "stage2_iterations": 20000, "batch_size": 32, "omega": 0.01, "margin": math.log(4)}


def reid_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The re-identification rows of one configuration apart from method x label noise."""
    d = ok_rows(df)
    d = d[d["method"] == "sesnn_reid"] if "method" in d.columns else d.iloc[0:0]
    if d.empty:
        return d, {}
    d, fixed = stats.one_setting(d, REID_DRAWN, {"features": "mu"}, REID_KNOWN, IGNORED | {"eval_batch_size"})
    return _labelled(d), fixed


def reid_differences(d: pd.DataFrame) -> list[str]:
    """Why the paper's numbers cannot sit beside ours ([] when they can): the protocol, and the
    ImageNet start the paper fine-tunes from (weights=None is a random start)."""
    out = protocol_differences(d, REID_PROTOCOL)
    if "weights" not in d.columns or d["weights"].isna().any():
        out.append("weights=None (paper: ImageNet ResNet-50)")
    return out


def reid_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 4's layout: methods (rows) x label noise x {rank-1, mAP} (%, mean ± SEM over seeds);
    the paper's value in brackets only where the protocol matches."""
    d, fixed = reid_rows(df)
    if d.empty:
        return pd.DataFrame()
    comparable = not reid_differences(d)
    cells: dict = {}
    for (label, p), g in d.groupby(["label", "label_noise"]):
        paper = REID_PAPER.get(round(float(p), 6), {}).get(label) if comparable else None
        for name, metric, at in (("rank-1", "rank1", 1), ("mAP", "map", 0)):
            text = stats.cell(g[metric])
            if paper is not None and paper[at] is not None:
                text += f" (paper {paper[at]})"
            cells.setdefault(label, {})[(float(p), name)] = text
    t = pd.DataFrame(cells).T.fillna("n/a (not run)")
    t = t[sorted(t.columns, key=lambda c: (c[0], c[1] != "rank-1"))]
    t.columns = [f"{100 * p:g}% {name}" for p, name in t.columns]
    known = [k for k in REID_ORDER if k in t.index]
    t = t.loc[known + sorted(set(t.index) - set(known))]
    t.index.name = "method"
    t.attrs["fixed"], t.attrs["comparable"] = fixed, comparable
    return t


def reid_sigma(df: pd.DataFrame, out=None):
    """Fig. 3b: SE-SNN's mean sigma (stage 2's stochastic unit, mu passed on) over training
    images whose label the noise changed and over those it kept, per label-noise level."""
    d, fixed = reid_rows(df)
    d = d[(d["model"] == "sesnn") & (d["label_noise"] > 0)] if not d.empty else d
    if d.empty or d["sigma_noisy"].isna().all():
        raise ValueError("no SE-SNN re-identification rows trained on noisy labels")
    long = pd.concat([d.assign(which=w, value=d[c]) for w, c in (("noisy", "sigma_noisy"), ("clean", "sigma_clean"))])
    s = stats.summarize(long, ["label", "which", "label_noise"], metric="value")
    fig, ax = lines(s, ["label", "which"], "label_noise", lambda k: f"{k[0]}: {k[1]} labels", "label-noise level",
                    "Re-identification: mean σ of training images (mean ± SEM over seeds)"
                    + (f"\n{fixed_text(fixed)}" if fixed else ""),
                    style=lambda k: "-" if k[1] == "noisy" else ":", ylabel="mean σ", scale=1)
    fig.caption += (" Solid: training images whose identity label the noise changed; dotted: those it kept "
                    "(the paper's Fig. 3b: noisy above clean).")
    save(fig, out)
    return fig


def reid_findings(df: pd.DataFrame) -> list[str]:
    """SE-SNN - B in mAP and rank-1 per noise level (paired over seeds), F - B (the paper: F the
    weakest), and Fig. 3b's noisy - clean sigma; every verdict by stats.verdict."""
    d, fixed = reid_rows(df)
    if d.empty:
        return []
    differs = reid_differences(d)  # the paper's numbers only where none
    note = f" ({fixed_text(fixed)})" if fixed else ""
    out = []
    clean = d[(d["label"] == "B") & (d["label_noise"] == 0)]
    if not clean.empty:
        tail = _tails(d)
        out.append(f"[re-id{note}] Training: B on clean labels mAP {stats.cell(clean['map'])}, rank-1 "
                   f"{stats.cell(clean['rank1'])} over {stats.plural(len(clean), 'seed')}; share of a run's stage-2 "
                   f"loss decrease in its last 20% of epochs: median {stats.number(100 * tail.median(), 2)}%, largest "
                   f"{stats.number(100 * tail.abs().max(), 2)}% (converged means below {100 * CONVERGED_SHARE:g}%).")
    for p in sorted(d["label_noise"].unique()):
        g = d[d["label_noise"] == p]
        paper = REID_PAPER.get(round(float(p), 6), {})
        if {"SE-SNN", "B"} <= set(g["label"]):
            for name, metric, at in (("mAP", "map", 0), ("rank-1", "rank1", 1)):
                est = stats.compare(g, "label", "SE-SNN", "B", metric=metric)
                gap = not differs and "SE-SNN" in paper and "B" in paper and paper["SE-SNN"][at] is not None
                said = f"; the paper: {paper['SE-SNN'][at]} vs {paper['B'][at]}" if gap else ""
                out.append(f"[re-id{note}] SE-SNN beats B in {name} at {100 * p:g}% label noise? SE-SNN - B = "
                           f"{est.text()}{said}: {stats.verdict(est, blocked=_unconverged_arms(g, 'SE-SNN', 'B'))}.")
        if p > 0 and {"F", "B"} <= set(g["label"]):
            est = stats.compare(g, "label", "F", "B", metric="map")
            out.append(f"[re-id{note}] F (forward correction) is below B in mAP at {100 * p:g}% (the paper: the "
                       f"weakest, < 20 images per identity)? F - B = {est.text()}: "
                       f"{stats.verdict(est, direction=-1, blocked=_unconverged_arms(g, 'F', 'B'))}.")
    s = d[(d["model"] == "sesnn") & (d["label_noise"] > 0)]
    for p, g in s.groupby("label_noise"):
        rel = ((g["sigma_noisy"] - g["sigma_clean"]) / g["sigma_clean"]).groupby(g["seed"]).mean()
        est = stats.estimate(rel.to_numpy())
        out.append(f"[re-id{note}] SE-SNN gives training images with noisy labels a larger σ than clean ones at "
                   f"{100 * p:g}% (Fig. 3b)? (mean σ noisy - clean) / clean = {est.text(unit='%')}: "
                   f"{stats.verdict(est, unit='%')}.")
    return out


def reid_extremes(df: pd.DataFrame, out=None):
    """Fig. 3c: the training images with the highest (top row) and lowest (bottom row) mean σ of
    one SE-SNN run at the lowest label-noise level (the paper: no noise), first seed. Needs the
    trials' artefacts."""
    from analysis.load import artefacts
    d, fixed = reid_rows(df)
    d = d[d["model"] == "sesnn"] if not d.empty else d
    source = df.attrs.get("source")
    if d.empty or not source:
        raise ValueError("no SE-SNN re-identification trials with a results folder to read artefacts from")
    r = d.sort_values(["label_noise", "seed"]).iloc[0]
    a = artefacts(source, r["trial_key"])
    if "sigma_high_images" not in a:
        raise ValueError(f"trial {r['trial_key']} kept no extreme images")
    k = len(a["sigma_high_images"])
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k, 3.0), squeeze=False)
    for row, name in enumerate(("high", "low")):
        for j in range(k):
            ax = axes[row][j]
            ax.imshow(a[f"sigma_{name}_images"][j].transpose(1, 2, 0))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"σ {a['train_sigma'][a[f'sigma_{name}_index'][j]]:.3g}", fontsize=6)
    fig.suptitle(f"SE-SNN, label noise {100 * r['label_noise']:g}%, seed {r['seed']}"
                 + (f"\n{fixed_text(fixed)}" if fixed else ""), fontsize=8)
    fig.tight_layout()
    fig.caption = ("Top row: the training images with the highest mean σ of the stochastic unit (mu passed on); "
                   "bottom row: the lowest; each titled with its mean σ. One run (the lowest noise level, "
                   "first seed).")
    save(fig, out)
    return fig


FIGURES["reid_sigma"] = reid_sigma
FIGURES["reid_extremes"] = reid_extremes


def reid_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """section()'s Table 4 entry: (caption, table), or none without re-identification rows."""
    t = reid_table(df)
    if t.empty:
        return []
    differs = reid_differences(reid_rows(df)[0])
    fixed = fixed_text(t.attrs.get("fixed", {}))
    paper = "the paper's Table 4 in brackets" if t.attrs.get("comparable") else \
        "no paper values: the protocol differs (" + "; ".join(differs) + ")"
    return [(f"Re-identification under similarity label noise, Table 4's layout: rank-1 and mAP % (mean ± SEM over "
             f"seeds, Market-1501 protocol); CleanNet (C) not built; {paper}" + (f"; {fixed}" if fixed else ""),
             t.reset_index())]

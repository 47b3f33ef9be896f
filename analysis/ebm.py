"""The EBM family's analysis (activation-noise-ebm): its figures, Table 1 and findings.

`section(df, out)` is what analysis.report renders for rows whose `family` is "ebm" (the
autoencoder bank and the Appendix E classifiers); every function also works on its own, on any
DataFrame from analysis.load.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import stats
from analysis.figures import draw, has, heatmap, lines, need, one_dataset, plt, same, save
from analysis.stats import fixed_text, ok_rows, protocol_differences, summarize

FAMILY = "ebm"

# ---------------------------------------------------------------------------------------------
# Never pool: every table, figure and finding keeps apart each configuration that varies.

# Noise-law parameters at the paper's Table 3 values (the NoiseParams defaults).
TABLE3 = {"gaussian_mu": 0.0, "gaussian_sigma": 1.0, "cauchy_loc": 0.0, "cauchy_scale": 1.0, "uniform_width": 4.0,
          "chi_k": 1.0, "lognormal_mu": 0.0, "lognormal_sigma": 1.0, "student_t_nu": 2.0, "exponential_rate": 1.0}
# Configuration columns of hand-made or older frames without a `config_columns` column.
KNOWN_CONFIG = (*TABLE3, "method", "dataset", "image_size", "channels", "classes", "train_limit", "test_limit",
                "distribution_train", "alpha_train", "placement_train", "dropout_rate", "distribution_test",
                "alpha_test", "placement_test", "noise_sharing", "hidden_channels", "hidden_activation",
                "output_activation", "lr", "batch_size", "epochs", "steps", "precision", "arch", "stem")
# The value a figure fixes a column to when it varies and is not drawn (else the first value).
PREFERRED = {"method": "ebm", "dropout_rate": 0.0, "distribution_train": "gaussian", "distribution_test": "gaussian",
             "placement_train": "full", "placement_test": "full", "noise_sharing": "independent", "precision": "fp32",
             "output_activation": "sigmoid", **TABLE3}
# Fields that do not change results (besides stats.NOT_SETTINGS).
IGNORED = {"memory_mb", "block_images", "block_draws", "noise_streams", "n_checkpoints", "eval_batch_size",
           "path"}  # path: the plain loop and the fused bank add the same keyed draws (tested equal)


def config_columns(d: pd.DataFrame) -> list[str]:
    """The configuration columns of the rows (stats.config_columns with this family's known ones)."""
    return stats.config_columns(d, KNOWN_CONFIG, IGNORED)


def one_setting(d: pd.DataFrame, keep) -> tuple[pd.DataFrame, dict]:
    """stats.one_setting with this family's preferred values."""
    return stats.one_setting(d, keep, PREFERRED, KNOWN_CONFIG, IGNORED)


def autoencoder_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Ok rows of the autoencoder bank (the discriminative classifiers' rows are kept apart)."""
    d = ok_rows(df)
    if "method" in d.columns:
        return d[d["method"] == "ebm"]
    return d[d["arch"].isna()] if "arch" in d.columns else d

# ---------------------------------------------------------------------------------------------
# Table 1: (alpha_train, alpha_test) cells x data sets, "mean ± SEM" in %


def cell_label(alpha_train, alpha_test) -> str:
    return f"({alpha_train:g}, {alpha_test:g})"


def table1(df: pd.DataFrame, n=None, cells=None) -> pd.DataFrame:
    """Table 1 layout at n (default: the largest n present): one row per (alpha_train,
    alpha_test) cell the rows have (the grid the search space ran is the one source of the
    cells), or only `cells`, in that order, when given (e.g. the paper's ten of a 20 x 20 grid).

    Returns strings; `.attrs["summary"]` keeps the numbers (mean, sem, count per cell)."""
    d = same(same(autoencoder_rows(df), "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset"})
    if d.empty:
        return pd.DataFrame()
    n = int(d["n"].max()) if n is None else int(n)
    d = d[d["n"] == n]
    s = summarize(d, ["alpha_train", "alpha_test", "dataset"])
    present = sorted({(float(a), float(b)) for a, b in zip(s["alpha_train"], s["alpha_test"])})
    cells = present if cells is None else [(float(a), float(b)) for a, b in cells]
    table = pd.DataFrame(index=[cell_label(*c) for c in cells],
                         columns=sorted(s["dataset"].astype(str).unique()), dtype=object)
    table.index.name = "(alpha_train, alpha_test)"
    for _, r in s.iterrows():
        label = cell_label(r["alpha_train"], r["alpha_test"])
        if label in table.index:
            table.loc[label, str(r["dataset"])] = stats.fmt(r["mean"], r["sem"])
    table = table.fillna("")
    table.attrs["summary"] = s
    table.attrs["n"] = n
    table.attrs["fixed"] = fixed
    return table



# ---------------------------------------------------------------------------------------------
# The ablation (ablate_ebm): accuracy and the two fairness checks per choice the paper leaves open

ABLATED = ("placement_train", "output_activation", "noise_sharing")


def _with_inert_copies(d: pd.DataFrame) -> pd.DataFrame:
    """Rows whose setting cannot change them, copied under every value of it in the data, so that
    each ablation setting has its noise-free cells: without test noise `noise_sharing` does
    nothing, and without any noise or dropout neither does the placement (train = test here)."""
    if "noise_sharing" in d.columns:
        quiet = d[d["alpha_test"] == 0]
        d = pd.concat([d, *(quiet[quiet["noise_sharing"] != v].assign(noise_sharing=v)
                            for v in d["noise_sharing"].dropna().unique())], ignore_index=True)
    silent = d[(d["alpha_train"] == 0) & (d["alpha_test"] == 0)]
    if "dropout_rate" in d.columns:  # dropout is placed too
        silent = silent[silent["dropout_rate"].fillna(0) == 0]
    return pd.concat([d, *(silent[silent["placement_train"] != v].assign(placement_train=v, placement_test=v)
                           for v in d["placement_train"].dropna().unique())], ignore_index=True)


def _ablation_rows(df: pd.DataFrame, n=None, copies=True) -> tuple[pd.DataFrame, list[str], dict, int]:
    """Autoencoder rows at n (default: the largest), train = test law and placement, with inert
    copies (unless `copies` is false); the ablated columns that vary; what else was fixed; n."""
    d = same(same(autoencoder_rows(df), "distribution_train", "distribution_test"), "placement_train", "placement_test")
    if d.empty:
        return d, [], {}, 0
    d, n = largest_n(d, n)
    d = _with_inert_copies(d) if copies else d
    varying = [c for c in ABLATED if c in d.columns and d[c].nunique() > 1]
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", "placement_test", *varying})
    return d, varying, fixed, n


def ablation_table(df: pd.DataFrame, n=None) -> pd.DataFrame:
    """Accuracy % (mean ± SEM over seeds) per data set and ablation setting (rows) and
    (alpha_train, alpha_test) cell (columns); empty when no ablated column varies. A cell that was
    not run is blank, and one with fewer seeds than the most says how many. Noise-free cells
    repeat under settings that cannot change them."""
    d, varying, fixed, n = _ablation_rows(df, n)
    if not varying:
        return pd.DataFrame()
    by = ["dataset", *varying]
    s = summarize(d, [*by, "alpha_train", "alpha_test"])
    cells = sorted({(float(a), float(b)) for a, b in zip(s["alpha_train"], s["alpha_test"])})
    most = int(s["count"].max())  # a cell with fewer seeds (a run stopped part-way) says how many
    long = pd.DataFrame({"setting": s[by].astype(str).agg(", ".join, axis=1),
                         "cell": [cell_label(a, b) for a, b in zip(s["alpha_train"], s["alpha_test"])],
                         "text": [stats.fmt(m, e) + (f" ({stats.seed_count(k)})" if 1 < k < most else "")
                                  for m, e, k in zip(s["mean"], s["sem"], s["count"])]})
    table = long.pivot(index="setting", columns="cell", values="text")[[cell_label(*c) for c in cells]].fillna("")
    table.columns.name = None
    table.index.name = ", ".join(by)
    table.attrs.update(summary=s, n=n, fixed=fixed, varying=varying, seeds=(int(s["count"].min()), most))
    return table


def _per_training(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: a training's columns repeat on each of its test-setting rows."""
    return rows.drop_duplicates("trial_key") if "trial_key" in rows.columns else rows


def _cell(values) -> str:
    """stats.cell of plain numbers (already in the unit shown)."""
    return stats.cell(pd.Series(values, dtype=float).dropna(), scale=1)


def fairness_table(df: pd.DataFrame, n=None) -> pd.DataFrame:
    """The two fairness checks per training setting (mean ± SEM over seeds): (a') the fixed-noise
    residual's fall over the last 20% of steps, relative to its end value (< 2% to pass), and the
    share of the run's whole fall that came in that last 20%; (b) at the balanced cell
    (alpha_train, alpha_train), the median energy gap over the median std of a class's n-draw mean,
    per noise_sharing (>= 3 to pass), and over the std of the gap itself (what common noise
    shrinks). Empty when the rows carry no residual columns."""
    d, varying, fixed, n = _ablation_rows(df, n, copies=False)
    if d.empty or "residual_fall_last20" not in d.columns:
        return pd.DataFrame()
    train = ["dataset", "alpha_train", *[c for c in varying if c != "noise_sharing"]]
    sharing = sorted(d["noise_sharing"].dropna().unique()) if "noise_sharing" in d.columns else []
    out = {}
    for key, g in d.groupby(train):
        label = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in key)
        per_trial = _per_training(g)
        row = {"seeds": per_trial["seed"].nunique() if "seed" in per_trial.columns else len(per_trial),
               "(a') fall, last 20% (%)": _cell(per_trial["residual_fall_last20"] * 100),
               "share of whole fall in last 20% (%)": _cell(per_trial["residual_share_last20"] * 100)}
        balanced = g[(g["alpha_test"] == g["alpha_train"]) & (g["alpha_test"] > 0)]
        for v in sharing:
            b = balanced[balanced["noise_sharing"] == v]
            row[f"(b) gap / class-mean std, {v}"] = _cell(b["energy_gap_median"] / b["energy_mean_std_median"])
            if "energy_gap_std_median" in b.columns:
                row[f"gap / gap std, {v}"] = _cell(b["energy_gap_median"] / b["energy_gap_std_median"])
        out[label] = row
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = ", ".join(train)
    table.attrs.update(n=n, fixed=fixed)
    return table


# ---------------------------------------------------------------------------------------------
# Verdicts: each of the paper's comparisons per ablation setting, gated on the fairness checks

# What a comparison needs before the rule (stats.verdict) may decide it (docs/ebm-findings.md):
# the issue's three seeds, (a') below 2% for every training involved and (b) at least 3 at every
# noisy test cell involved, on every seed. Otherwise it is undecided, and says which is missing.
MIN_SEEDS, FALL_BAR, GAP_BAR = 3, 0.02, 3.0


def _comparisons(cells) -> list[tuple[str, tuple, tuple]]:
    """The paper's claims that two cells of one setting can test, as (claim, cell, baseline): a
    positive difference is what the paper says (PROTOCOLS sec. 1, test alpha on Fig. 3's rows)."""
    out = []
    for a in sorted({at for at, ae in cells if at > 0 and at == ae}):
        out.append((f"(i) balanced noise beats none: ({a:g}, {a:g}) - (0, 0)", (a, a), (0.0, 0.0)))
        out.append((f"(ii) at alpha_train {a:g} the diagonal beats a clean test: ({a:g}, {a:g}) - ({a:g}, 0)",
                    (a, a), (a, 0.0)))
    for a in sorted({ae for at, ae in cells if at == 0 and ae > 0}):
        out.append((f"(ii) at alpha_train 0 the diagonal beats test noise: (0, 0) - (0, {a:g})", (0.0, 0.0), (0.0, a)))
        out.append((f"(iii) asymmetry: ({a:g}, 0) - (0, {a:g})", (a, 0.0), (0.0, a)))
    for a in sorted({at for at, ae in cells if at > 0 and ae == 0}):
        out.append((f"Sec. 4.3 training noise raises clean accuracy: ({a:g}, 0) - (0, 0)", (a, 0.0), (0.0, 0.0)))
    return [c for c in out if c[1] in cells and c[2] in cells]


def _correct(rows: pd.DataFrame, seeds) -> np.ndarray | None:
    """Seeds x images, 1 where the model was right (a seed's rows averaged), from the rows'
    per-image predictions; None where a row lacks them (rows from before predictions were kept)."""
    if "predictions" not in rows.columns or "labels" not in rows.columns:
        return None
    out = []
    for seed in seeds:
        g = rows[rows["seed"] == seed]
        pairs = list(zip(g["predictions"], g["labels"]))
        if not pairs or any(p is None or y is None or np.ndim(p) != 1 or len(p) != len(y) for p, y in pairs):
            return None
        if len({len(p) for p, _ in pairs}) != 1:
            return None  # tested on different test sets
        out.append(np.mean([np.asarray(p) == np.asarray(y) for p, y in pairs], axis=0))
    return np.stack(out) if out and len({len(c) for c in out}) == 1 else None


def _same_labels(*frames: pd.DataFrame) -> bool:
    labels = {tuple(np.asarray(y).tolist()) for f in frames for y in f["labels"]}
    return len(labels) == 1


def _gap(rows: pd.DataFrame) -> float:
    """Check (b) at the noisy test cells of `rows`: the smallest gap / class-mean std on any seed
    (NaN where a noisy row lacks it; inf where no cell has test noise)."""
    noisy = rows[rows["alpha_test"] > 0]
    if noisy.empty:
        return float("inf")
    if not {"energy_gap_median", "energy_mean_std_median"} <= set(noisy.columns):
        return float("nan")
    return float((noisy["energy_gap_median"] / noisy["energy_mean_std_median"]).min(skipna=False))


def judge(ra: pd.DataFrame, rb: pd.DataFrame, check_b: bool = True, blocked: str = "") -> dict:
    """Rows `ra` against rows `rb` (each with a `seed` column; a seed's rows of one arm averaged)
    on the seeds both have: the estimate (stats.difference, the test set's error added as
    `extra_se`) and its verdict (stats.verdict), blocked unless MIN_SEEDS seeds, (a') for every
    training and, with `check_b`, (b) at every noisy test cell read pass on every seed.
    Returns the per-seed differences, the estimate, the test set's error, and the verdict."""
    seeds = sorted(set(ra["seed"]) & set(rb["seed"]))
    ra, rb = ra[ra["seed"].isin(seeds)], rb[rb["seed"].isin(seeds)]
    a, b = ra.groupby("seed")["accuracy"].mean(), rb.groupby("seed")["accuracy"].mean()
    correct = (_correct(ra, seeds), _correct(rb, seeds)) if seeds else (None, None)
    if any(c is None for c in correct) or not _same_labels(ra, rb):
        correct = (None, None)
    images = min(ra["test_images"].min(), rb["test_images"].min()) if "test_images" in ra.columns and seeds else None
    test_se, paired = stats.image_se(a.mean(), b.mean(), images, *correct)
    both = pd.concat([ra, rb])
    fall = both["residual_fall_last20"].max(skipna=False) if "residual_fall_last20" in both.columns else np.nan
    gap = _gap(both) if check_b else float("inf")
    if not blocked:
        if len(seeds) < MIN_SEEDS:
            blocked = f"{stats.seed_count(len(seeds))}, needs {MIN_SEEDS}"
        elif np.isnan(fall) or np.isnan(gap):
            blocked = "a fairness check is not recorded"
        elif not fall < FALL_BAR:
            blocked = f"(a') fails: fall up to {fall * 100:.2f}%, bar {FALL_BAR * 100:g}%"
        elif not gap >= GAP_BAR:
            blocked = f"(b) fails: gap / class-mean std down to {gap:.2f}, bar {GAP_BAR:g}"
        elif np.isnan(test_se):
            blocked = "the test set's size is not recorded"
    est = stats.difference(a, b, extra_se=0.0 if np.isnan(test_se) else test_se)
    return {"diff": (a - b).dropna(), "estimate": est, "test_se": test_se, "paired": paired,
            "verdict": stats.verdict(est, blocked=blocked)}


def verdict_table(df: pd.DataFrame, n=None) -> pd.DataFrame:
    """Per data set and ablation setting, each claim its cells can test: the difference in points
    per seed (on the seeds both cells have), its estimate (paired over seeds, with the test set's
    error in quadrature: paired from the rows' per-image predictions, else the unpaired bound)
    with its 95% interval and p, and the verdict of the one rule (stats.RULE), blocked where
    judge()'s seed count or fairness checks fail. A cell never run in a setting is never borrowed
    from another. (iv) compares each noisy cell at n with itself at the fewest draws run; check (b)
    does not gate it, since n is what it varies."""
    d, varying, fixed, n = _ablation_rows(df, n)
    if d.empty or "residual_fall_last20" not in d.columns:
        return pd.DataFrame()
    noisy = autoencoder_rows(df)
    fewest = int(noisy.loc[noisy["alpha_test"] > 0, "n"].min()) if (noisy["alpha_test"] > 0).any() else n
    few = _ablation_rows(df, fewest)[0] if fewest < n else d.iloc[:0]
    by = ["dataset", *varying]
    out = []
    for key, g in d.groupby(by):
        key = key if isinstance(key, tuple) else (key,)
        setting = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in key)
        cells = {c: r for c, r in g.groupby(["alpha_train", "alpha_test"])}
        for claim, a, b in _comparisons(set(cells)):
            out.append(_compared(setting, claim, cells[a], cells[b]))
        f = few[(few[by] == pd.Series(dict(zip(by, key)))).all(axis=1)]
        for (at, ae), r in f[f["alpha_test"] > 0].groupby(["alpha_train", "alpha_test"]):
            if (at, ae) not in cells:  # run at the fewest draws only
                continue
            claim = f"(iv) more draws raise accuracy: ({at:g}, {ae:g}) at n={n} - at n={fewest}"
            out.append(_compared(setting, claim, cells[(at, ae)], r, check_b=False))
    table = pd.DataFrame(out)
    if not table.empty:
        table = table.set_index("setting")
        table.index.name = ", ".join(by)
    table.attrs.update(n=n, fixed=fixed)
    return table


def _compared(setting: str, claim: str, ra: pd.DataFrame, rb: pd.DataFrame, check_b: bool = True) -> dict:
    """One verdict row: cell rows `ra` minus `rb` on the seeds both have."""
    j = judge(ra, rb, check_b)
    return {"setting": setting, "claim": claim,
            "per seed (points)": " / ".join(f"{s}: {v * 100:+.2f}" for s, v in j["diff"].items()),
            "difference, 95% CI, p": j["estimate"].text(),
            "test-set SE (points)": ("n/a" if np.isnan(j["test_se"]) else f"{j['test_se'] * 100:.2f} ")
            + ("" if np.isnan(j["test_se"]) else "(paired)" if j["paired"] else "(unpaired bound)"),
            "verdict": str(j["verdict"])}


# ---------------------------------------------------------------------------------------------
# Figures (Figs. 2-4, 6-11)


def largest_n(df: pd.DataFrame, n) -> tuple[pd.DataFrame, int]:
    """Rows at n (default: the largest n present)."""
    n = int(df["n"].max()) if n is None else int(n)
    return df[df["n"] == n], n



def heatmap_alpha(df: pd.DataFrame, n=None, dataset=None, out=None, rows: str = "train"):
    """Fig. 3: accuracy over alpha_train x alpha_test at one n. rows="train" puts train alpha on
    the rows; rows="test" is the paper's orientation (its y-axis is "Test NoiseScalar")."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset"})
    d = need(d, "heatmap_alpha")
    d, n = largest_n(d, n)
    s = need(summarize(d, ["alpha_train", "alpha_test"]), "heatmap_alpha")
    index, columns = ("alpha_train", "alpha_test") if rows == "train" else ("alpha_test", "alpha_train")
    pivot = s.pivot(index=index, columns=columns, values="mean").sort_index().sort_index(axis=1)
    title = f"{name} accuracy (%), n={n}, rows: {index}" + (f"\n{fixed_text(fixed)}" if fixed else "")
    fig = heatmap(pivot, title, columns, index, diagonal=True)
    fig.fixed = fixed
    fig.plotted = s
    fig.pivot = pivot
    return save(fig, out)


def accuracy_vs_n(df: pd.DataFrame, dataset=None, out=None):
    """Fig. 7: accuracy against the number of draws n (log axis), one line per alpha cell."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset"})
    s = need(summarize(d, ["alpha_train", "alpha_test", "n"]), "accuracy_vs_n")
    fig, ax = lines(s, ["alpha_train", "alpha_test"], "n", lambda k: f"({k[0]:g}, {k[1]:g})",
                     "n (noise draws at inference)", f"{name}: accuracy vs n" + (f"\n{fixed_text(fixed)}" if fixed else ""),
                     legend_title="(alpha_train, alpha_test)")
    fig.fixed = fixed
    ax.set_xscale("log")
    ns = sorted(s["n"].unique())
    ax.set_xticks(ns, [f"{v:g}" for v in ns])
    ax.minorticks_off()
    fig.tight_layout()
    return save(fig, out)


def accuracy_vs_alpha(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Figs. 4/6: accuracy against alpha (train = test) for each distribution."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", "distribution_train", "distribution_test"})
    d = need(d[d["alpha_train"] == d["alpha_test"]], "accuracy_vs_alpha")
    d, n = largest_n(d, n)
    s = need(summarize(d, ["distribution_train", "alpha_train"]), "accuracy_vs_alpha")
    if s["alpha_train"].nunique() < 2:
        raise ValueError("only one alpha on the diagonal")
    fig, _ = lines(s, ["distribution_train"], "alpha_train", lambda k: str(k[0]), "alpha (train = test)",
                    f"{name}: accuracy vs alpha, n={n}" + (f"\n{fixed_text(fixed)}" if fixed else ""))
    fig.fixed = fixed
    fig.tight_layout()
    return save(fig, out)


def law_parameters(df: pd.DataFrame, n=None, dataset=None, out=None):
    """Fig. 6: per law, accuracy against alpha (train = test) for each setting of its parameter."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", "distribution_train", "distribution_test", *TABLE3})
    d = need(d[d["alpha_train"] == d["alpha_test"]], "law_parameters")
    d, n = largest_n(d, n)
    panels = []
    for law, rows in d.groupby("distribution_train"):
        varied = [c for c in TABLE3 if c in rows.columns and rows[c].nunique() > 1]
        if len(varied) == 1 and rows["alpha_train"].nunique() > 1:
            panels.append((law, varied[0], summarize(rows, [varied[0], "alpha_train"])))
    if not panels:
        raise ValueError("no law with more than one parameter setting and alpha")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (law, param, s) in zip(axes[0], panels):
        for value, g in s.groupby(param):
            g = g.sort_values("alpha_train")
            ax.errorbar(g["alpha_train"], g["mean"] * 100, yerr=g["sem"].fillna(0) * 100, marker="o", capsize=2,
                        label=f"{param}={value:g}" + (" (Table 3)" if value == TABLE3[param] else ""))
        ax.set_title(law)
        ax.set_xlabel("alpha (train = test)")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.suptitle(f"{name}: noise-law parameters, n={n}" + (f"; {fixed_text(fixed)}" if fixed else ""), fontsize=9)
    fig.tight_layout()
    fig.plotted = pd.concat([s.assign(distribution=law, parameter=param) for law, param, s in panels], ignore_index=True)
    fig.fixed = fixed
    return save(fig, out)


def _train_test_heatmap(df, axis: str, held: str, alpha, n, dataset, out, title: str):
    """Train x test heatmap over `axis` (distribution or placement), `held` matched, at one alpha."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d = same(d, f"{held}_train", f"{held}_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", f"{axis}_train", f"{axis}_test"})
    d = need(d[(d["alpha_train"] == alpha) & (d["alpha_test"] == alpha)], title)
    d, n = largest_n(d, n)
    s = summarize(d, [f"{axis}_train", f"{axis}_test"])
    pivot = s.pivot(index=f"{axis}_train", columns=f"{axis}_test", values="mean")
    if max(pivot.shape) < 2:
        raise ValueError(f"only one {axis} present")
    fig = heatmap(pivot, f"{name}: {axis}s, alpha={alpha:g}, n={n}" + (f"\n{fixed_text(fixed)}" if fixed else ""),
                   f"test {axis}", f"train {axis}", diagonal=True)
    fig.fixed = fixed
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
    d = autoencoder_rows(df)
    if not has(d, "dropout_rate"):
        raise ValueError("no dropout_rate column")
    d = same(d, "placement_train", "placement_test")
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", "dropout_rate"})
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
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", "arch", "method"})
    d, n = largest_n(need(d, "discriminative"), n)
    s = need(summarize(d, ["dataset", "arch", "alpha_train"]), "discriminative")
    fig, _ = lines(s, ["dataset", "arch"], "alpha_train", lambda k: f"{k[0]} {k[1]}", "alpha (train = test)",
                    f"discriminative models, n={n}")
    fig.tight_layout()
    return save(fig, out)


# Accuracy per second (issue 35 item 4). The columns that say how a setting was evaluated, beside
# its noise: a figure line and a table row each, never pooled. Seconds from two machines are never
# pooled either (device_name).
ARMS = ("noise_sharing", "precision", "eval_path", "eval_precision", "device_name")
WITHIN = 0.005  # "reached": accuracy within half a point of the arm's accuracy at its largest n


def _timed(df: pd.DataFrame, what: str) -> tuple[pd.DataFrame, list[str], list[str], dict]:
    """Noisy autoencoder rows with their evaluation clock, train = test law and placement, one
    configuration apart from the cell and the arms; (rows, the arm columns present, those of them
    that vary, what was fixed). ValueError when the rows carry no eval_seconds_at_n (older runs)."""
    d = autoencoder_rows(df)
    if not has(d, "eval_seconds_at_n"):
        raise ValueError("the rows carry no eval_seconds_at_n (runs from before the evaluation clock was recorded)")
    d = same(same(d, "distribution_train", "distribution_test"), "placement_train", "placement_test")
    arms = [c for c in ARMS if c in d.columns]
    d, fixed = one_setting(d, {"alpha_train", "alpha_test", "dataset", *arms})
    d = need(d[(d["alpha_test"] > 0) & d["eval_seconds_at_n"].notna()], what)
    return d, arms, [c for c in arms if d[c].nunique() > 1], fixed


def _clocked(d: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per `by` and n: accuracy mean, SEM and seed count (stats.summarize) and the mean seconds."""
    s = summarize(d, [*by, "n"])
    t = summarize(d, [*by, "n"], metric="eval_seconds_at_n")[[*by, "n", "mean"]].rename(columns={"mean": "seconds"})
    return s.merge(t, on=[*by, "n"])


def accuracy_vs_seconds(df: pd.DataFrame, dataset=None, out=None):
    """Accuracy against the evaluation seconds spent up to each n (eval_seconds_at_n), one line per
    noisy (alpha_train, alpha_test) cell and, where the rows hold more than one, per noise sharing,
    path and precision: which way of evaluating reaches a given accuracy first."""
    d, name = one_dataset(autoencoder_rows(df), dataset)
    d, _, varying, fixed = _timed(d, "accuracy_vs_seconds")
    s = _clocked(d, ["alpha_train", "alpha_test", *varying])
    keys = ["alpha_train", "alpha_test", *varying]
    dashes = {v: style for v, style in zip(sorted({tuple(k[2:]) for k in s[keys].itertuples(index=False)}),
                                           ["-", "--", ":", "-."] * 8)}
    fig, ax = lines(s, keys, "seconds", lambda k: ", ".join([f"({k[0]:g}, {k[1]:g})", *map(str, k[2:])]),
                    "evaluation seconds up to n (log)", f"{name}: accuracy vs evaluation seconds"
                    + (f"\n{fixed_text(fixed)}" if fixed else ""),
                    style=lambda k: dashes[tuple(k[2:])], legend_title=", ".join(["(alpha_train, alpha_test)", *varying]))
    ax.set_xscale("log")
    fig.fixed = fixed
    fig.caption = ("Each point: one number of noise draws n of one (alpha_train, alpha_test) cell"
                   + (f" and one {' / '.join(varying)} (line style)" if varying else "")
                   + "; x: the evaluation seconds up to that n (eval_seconds_at_n: that setting's own clock on the "
                   "machine that ran it, its share of the clean passes included), mean over seeds, log scale; y: "
                   "accuracy, mean over seeds, bars ± SEM (none with one seed). Lines join the n of one cell. "
                   "Noise-free cells are left out (one pass, no curve). Points one above the other: n within one "
                   "draw block (block_draws), which costs the same. Further left at the same height: the same "
                   "accuracy sooner.")
    fig.tight_layout()
    return save(fig, out)


def accuracy_per_second(df: pd.DataFrame, within: float = WITHIN) -> pd.DataFrame:
    """Per data set, noisy (alpha_train, alpha_test) cell and arm (noise sharing, path, precision,
    machine): the accuracy at the largest n and its seconds, and the first n whose accuracy is
    within `within` of it (accuracy(n) >= accuracy(largest n) - within; means over seeds) with the
    seconds up to that n (eval_seconds_at_n, mean over seeds). Returns strings;
    `.attrs["summary"]` keeps the numbers. ValueError without eval_seconds_at_n."""
    d, arms, _, fixed = _timed(df, "accuracy_per_second")
    keys = ["dataset", "alpha_train", "alpha_test", *arms]
    s = _clocked(d, keys)
    out = []
    for key, g in s.groupby(keys, sort=True, dropna=False):
        g = g.sort_values("n")
        last = g.iloc[-1]
        reached = g[g["mean"] >= last["mean"] - within].iloc[0]
        out.append(dict(zip(keys, key)) | {
            "seeds": int(last["count"]), "largest n": int(last["n"]), "accuracy at largest n": last["mean"],
            "seconds at largest n": last["seconds"], "n reached": int(reached["n"]),
            "accuracy at n reached": reached["mean"], "seconds at n reached": reached["seconds"]})
    summary = pd.DataFrame(out)
    table = pd.DataFrame({
        "setting": [", ".join([f"({r['alpha_train']:g}, {r['alpha_test']:g})", *(str(r[c]) for c in arms)])
                    for _, r in summary.iterrows()],
        "dataset": summary["dataset"].astype(str),
        "seeds": summary["seeds"],
        "accuracy at largest n (%)": [f"{a * 100:.2f} (n={n})" for a, n in
                                      zip(summary["accuracy at largest n"], summary["largest n"])],
        "seconds at largest n": summary["seconds at largest n"].map(stats.number),
        f"first n within {within * 100:g} points": summary["n reached"],
        "accuracy there (%)": summary["accuracy at n reached"].map(lambda a: f"{a * 100:.2f}"),
        "seconds there": summary["seconds at n reached"].map(stats.number)}).set_index("setting")
    table.index.name = ", ".join(["(alpha_train, alpha_test)", *arms])
    table.attrs.update(summary=summary, fixed=fixed, within=within)
    return table


def decision_points(predictions) -> np.ndarray:
    """Per image, the index of the first checkpoint from which its predicted class equals the one
    at the largest n at every later checkpoint: where its decision settled, as far as the largest
    n can tell. predictions: (checkpoints in increasing n, images), e.g. the rows' `predictions`."""
    p = np.asarray(predictions)
    differs = p != p[-1]
    last = len(p) - 1 - np.argmax(differs[::-1], axis=0)  # the last checkpoint that differed
    return np.where(differs.any(axis=0), last + 1, 0)


FIGURES = {
    "heatmap_alpha": heatmap_alpha,
    "accuracy_vs_n": accuracy_vs_n,
    "accuracy_vs_alpha": accuracy_vs_alpha,
    "law_parameters": law_parameters,
    "heatmap_distributions": heatmap_distributions,
    "heatmap_placements": heatmap_placements,
    "noise_vs_dropout": noise_vs_dropout,
    "discriminative": discriminative,
    "accuracy_vs_seconds": accuracy_vs_seconds,
}


# ---------------------------------------------------------------------------------------------
# Findings: the paper's qualitative claims, recomputed from data as sentences with numbers.
# Published numbers (PROTOCOLS.md section 1, Anchors) are printed beside ours only when the rows
# have the paper's protocol in every field of PAPER_PROTOCOL (not merely the preset's name);
# otherwise the sentence says which fields differ.

# (alpha_train, alpha_test, n or None for any n) -> published accuracy in %.
ANCHORS = {(0.0, 0.0, None): 20.48, (0.9, 0.9, 1000): 64.55, (0.9, 0.9, 10000): 65.88}


def _pct(x) -> str:
    return f"{x * 100:.2f}%"


def _cell_rows(d: pd.DataFrame, at, ae) -> pd.DataFrame:
    return d[(d["alpha_train"] == at) & (d["alpha_test"] == ae)]


def _seeds_text(k: int) -> str:
    return f"on the {k} seed{'s' if k != 1 else ''} both cells have"


def _claim(label: str, ra: pd.DataFrame, rb: pd.DataFrame, blocked: str, what: str = "") -> str:
    """'<label>: <what>, on the k seeds both have: <estimate>; <verdict>.' (judge() on ra - rb)."""
    j = judge(ra, rb, blocked=blocked)
    k = len(j["diff"])
    if not k:
        return f"{label}: no seed has both, not compared."
    return f"{label}: {what + ', ' if what else ''}{_seeds_text(k)}: {j['estimate'].text()}; {j['verdict']}."


def _on_seeds(ra: pd.DataFrame, rb: pd.DataFrame) -> tuple[float, float]:
    """Both arms' mean accuracy over the seeds both have (one seed's cell is never set against
    another seed set's mean)."""
    seeds = set(ra["seed"]) & set(rb["seed"])
    return ra.loc[ra["seed"].isin(seeds), "accuracy"].mean(), rb.loc[rb["seed"].isin(seeds), "accuracy"].mean()


def _only(d: pd.DataFrame, col: str) -> str:
    vals = sorted(d[col].dropna().astype(str).unique()) if col in d.columns else []
    return "/".join(vals)


SYMMETRIC = {"gaussian", "cauchy", "uniform", "student_t"}  # the paper's Fig. 5 grouping


def _law_findings(d: pd.DataFrame, where: str, blocked: str) -> list[str]:
    """(v) symmetric laws against asymmetric ones, train law = test law, per alpha (each seed's
    laws of one group averaged): one claim per alpha, never over a band of alphas."""
    if not {"distribution_train", "distribution_test"} <= set(d.columns):
        return []
    m = d[(d["distribution_train"] == d["distribution_test"]) & (d["alpha_train"] == d["alpha_test"])
          & (d["alpha_train"] > 0)]
    out = []
    for alpha, g in m.groupby("alpha_train"):
        sym = g[g["distribution_train"].isin(SYMMETRIC)]
        asym = g[~g["distribution_train"].isin(SYMMETRIC)]
        if sym.empty or asym.empty:
            continue
        a, b = _on_seeds(sym, asym)
        names = lambda rows: ", ".join(sorted(rows["distribution_train"].unique()))
        out.append(_claim(f"{where} (v) symmetric laws beat asymmetric ones at alpha {alpha:g} (train law = test law)",
                          sym, asym, blocked, f"symmetric ({names(sym)}) average {_pct(a)} vs asymmetric "
                                              f"({names(asym)}) {_pct(b)}"))
    return out


def _placement_findings(d: pd.DataFrame, where: str, blocked: str) -> list[str]:
    """(vi) per (alpha_train, alpha_test) cell: each train placement's matched test placement
    against each mismatched one, and full (matched) against each other matched placement."""
    if not {"placement_train", "placement_test"} <= set(d.columns) or d["placement_train"].nunique() < 2:
        return []
    out = []
    for (at, ae), g in d.groupby(["alpha_train", "alpha_test"]):
        cell = f"({at:g}, {ae:g})"
        arm = lambda tr, te: g[(g["placement_train"] == tr) & (g["placement_test"] == te)]
        pairs = sorted({(tr, te) for tr, te in zip(g["placement_train"], g["placement_test"])})
        for tr, te in pairs:
            if tr != te and (tr, tr) in pairs:
                a, b = _on_seeds(arm(tr, tr), arm(tr, te))
                out.append(_claim(f"{where} (vi) train = test placement beats a mismatch at {cell}: "
                                  f"{tr}/{tr} - {tr}/{te}", arm(tr, tr), arm(tr, te), blocked,
                                  f"{_pct(a)} vs {_pct(b)}"))
        if ("full", "full") in pairs:
            for tr, te in pairs:
                if tr == te != "full":
                    a, b = _on_seeds(arm("full", "full"), arm(tr, tr))
                    out.append(_claim(f"{where} (vi) full placement beats {tr} at {cell}: full/full - {tr}/{tr}",
                                      arm("full", "full"), arm(tr, tr), blocked, f"{_pct(a)} vs {_pct(b)}"))
    return out


# The paper's protocol in every field that decides whether its numbers are ours to compare with.
PAPER_PROTOCOL = {"dataset": "cifar10", "image_size": 32, "channels": 1, "epochs": 100, "steps": 0, "batch_size": 256,
                  "distribution_train": "gaussian", "distribution_test": "gaussian", "placement_train": "full",
                  "placement_test": "full", "dropout_rate": 0.0, "noise_sharing": "independent"}


# Presets that fail both fairness checks by design (sized for minutes on a laptop).
DEMONSTRATION_PRESETS = {"quick", "smoke"}


def _convergence_findings(d: pd.DataFrame) -> list[str]:
    """Per data set: how many trainings pass check (a'), the fixed-noise residual falling by less
    than 2% over the last 20% of steps; only for rows that carry the convergence columns."""
    if "residual_fall_last20" not in d.columns or d["residual_fall_last20"].isna().all():
        return []
    out = []
    for dataset, g in d.groupby("dataset"):
        fall = _per_training(g)["residual_fall_last20"].dropna()
        out.append(f"[{dataset}] Convergence (a'): {int((fall < 0.02).sum())} of {len(fall)} trainings' fixed-noise "
                   f"residual fell by less than 2% over the last 20% of steps (largest fall {fall.max() * 100:.2f}%).")
    return out


def findings(df: pd.DataFrame) -> list[str]:
    """Sentences, one per claim and cell, per data set; empty when there are no ok rows. Each
    reads one configuration (what it fixes is in its brackets), never a pool of several, and
    prints the claim, its estimate (95% interval, p) and the verdict of the one rule (stats.RULE),
    gated as the verdict table is (judge()). (ii)'s best alpha_test is a description."""
    out: list[str] = []
    d0 = autoencoder_rows(df)
    if d0.empty or "alpha_train" not in d0.columns:
        return out
    demo = sorted(set(d0["preset"].dropna().astype(str)) & DEMONSTRATION_PRESETS) if "preset" in d0.columns else []
    blocked = ""
    if demo:
        blocked = f"preset {'/'.join(demo)} is a demonstration, not a test of the paper"
        out.append(f"Preset {'/'.join(demo)} is a demonstration of the service, not a test of the paper: its trainings "
                   "have not converged and its n is too small for the energy gaps (docs/ebm-findings.md). "
                   "Every verdict below is undecided for that reason.")
    out += _convergence_findings(d0)
    for dataset in sorted(d0["dataset"].dropna().astype(str).unique()):
        d = d0[(d0["dataset"] == dataset)]
        d = d[d["n"] == d["n"].max()]
        where = f"[{dataset}, n={int(d['n'].max())}]"
        laws, fixed = one_setting(d, {"dataset", "alpha_train", "alpha_test", "distribution_train", "distribution_test"})
        places, fixed_p = one_setting(d, {"dataset", "alpha_train", "alpha_test", "placement_train", "placement_test"})
        out += _law_findings(laws, where[:-1] + (f", {fixed_text(fixed)}]" if fixed else "]"), blocked)
        out += _placement_findings(places, where[:-1] + (f", {fixed_text(fixed_p)}]" if fixed_p else "]"), blocked)
    for dataset in sorted(d0["dataset"].dropna().astype(str).unique()):
        d = same(same(d0[d0["dataset"] == dataset], "distribution_train", "distribution_test"),
                 "placement_train", "placement_test")
        d, fixed = one_setting(d, {"dataset", "alpha_train", "alpha_test"})
        if d.empty:
            continue
        dist, place = _only(d, "distribution_train"), _only(d, "placement_train")
        n = int(d["n"].max())
        at_n = d[d["n"] == n]
        s = summarize(at_n, ["alpha_train", "alpha_test"])
        c = {(float(r.alpha_train), float(r.alpha_test)): r.mean for r in s.itertuples()}
        extra = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fixed.items()
                          if k not in ("distribution_train", "distribution_test", "placement_train", "placement_test"))
        where = f"[{dataset}, {dist}, {place}, n={n}" + (f", {extra}" if extra else "") + "]"
        # (i) balanced noise vs none, per balanced cell
        if (0.0, 0.0) in c:
            none = _cell_rows(at_n, 0.0, 0.0)
            for a in sorted(k[0] for k in c if k[0] == k[1] and k[0] > 0):
                rows = _cell_rows(at_n, a, a)
                x, y = _on_seeds(rows, none)
                out.append(_claim(f"{where} (i) balanced noise beats none: ({a:g}, {a:g}) - (0, 0)", rows, none,
                                  blocked, f"{_pct(x)} vs {_pct(y)} without noise"))
        # (ii) best alpha_test per alpha_train (a description: the largest mean of the row)
        for at in sorted({k[0] for k in c}):
            row = {k[1]: v for k, v in c.items() if k[0] == at}
            if len(row) < 2:
                continue
            be = max(row, key=row.get)
            out.append(f"{where} alpha_train={at:g}: best alpha_test={be:g} ({_pct(row[be])}), "
                       f"{abs(be - at):.2f} from the diagonal (the largest mean, not a test).")
        # (iii) asymmetry, per alpha with both cells
        for a in sorted(k[0] for k in c if k[0] > 0 and k[1] == 0 and (0.0, k[0]) in c):
            ra, rb = _cell_rows(at_n, a, 0.0), _cell_rows(at_n, 0.0, a)
            x, y = _on_seeds(ra, rb)
            out.append(_claim(f"{where} (iii) asymmetry: acc({a:g}, 0) above acc(0, {a:g})", ra, rb, blocked,
                              f"{_pct(x)} vs {_pct(y)}"))
        # anchors: comparable only where every protocol field has the paper's value
        for (at, ae, an), paper in ANCHORS.items():
            if an is None:
                rows = _cell_rows(d, at, ae)
                if rows.empty:
                    continue
                an_used = n if (rows["n"] == n).any() else int(rows["n"].max())
            else:
                an_used = an
                rows = d[(d["alpha_train"] == at) & (d["alpha_test"] == ae) & (d["n"] == an)]
                if rows.empty:
                    continue
            ours = rows[rows["n"] == an_used].groupby("seed")["accuracy"].mean()
            label = f"acc({at:g}, {ae:g}) at n={an_used}"
            differences = protocol_differences(rows, PAPER_PROTOCOL)
            if not differences:
                est = stats.estimate(ours - paper / 100)
                out.append(f"{where} {label}: ours {stats.cell(ours, unit='%')}, paper {paper:.2f}% "
                           f"(ours - paper: {est.text()}).")
            else:
                out.append(f"{where} {label}: ours {stats.cell(ours, unit='%')}; paper's {paper:.2f}% is not comparable "
                           f"({'; '.join(differences)}).")
    return out


def section(df: pd.DataFrame, out) -> dict:
    """The report section of this family's rows: Table 1, every figure with data, the findings."""
    table = table1(df)
    made, skipped, captions = draw(FIGURES, df, out)
    fixed = fixed_text(table.attrs.get("fixed", {}))
    caption = (f"Table 1 layout: accuracy % mean ± SEM over seeds, n={table.attrs.get('n', '?')}, "
               "train = test law and placement" + (f"; {fixed}" if fixed else ""))
    tabs = [(caption, table)]
    ablation = ablation_table(df)
    if not ablation.empty:
        held = fixed_text(ablation.attrs["fixed"])
        low, most = ablation.attrs["seeds"]
        seeds = stats.seed_count(most) if low == most else f"up to {stats.seed_count(most)} (fewer where a cell says)"
        tabs.append((f"Ablation: accuracy % mean ± SEM over {seeds}, n={ablation.attrs['n']}, train = test placement; "
                     "noise-free cells repeat under the settings that cannot change them" + (f"; {held}" if held else ""),
                     ablation))
    fairness = fairness_table(df)
    if not fairness.empty:
        tabs.append((f"Fairness checks, mean ± SEM over seeds: (a') passes below 2%, (b) at or above 3 "
                     f"(n={fairness.attrs['n']})", fairness))
    try:
        speed = accuracy_per_second(df)
        held = fixed_text(speed.attrs["fixed"])
        tabs.append((f"Accuracy per second: per noisy cell and way of evaluating, the accuracy (mean over seeds) at "
                     f"the largest n and the first n within {speed.attrs['within'] * 100:g} points of it, each with "
                     "the evaluation seconds up to that n (eval_seconds_at_n, mean over seeds, on the machine named)"
                     + (f"; {held}" if held else ""), speed))
    except ValueError as exc:
        skipped.append(f"accuracy_per_second table ({exc})")
    verdicts = verdict_table(df)
    if not verdicts.empty:
        held = fixed_text(verdicts.attrs["fixed"])
        tabs.append((f"Verdicts per setting (n={verdicts.attrs['n']}), by the verdict rule: the seeds' paired "
                     "differences with the test set's error in quadrature; undecided unless "
                     f"{MIN_SEEDS} seeds, (a') below {FALL_BAR * 100:g}% and (b) at least {GAP_BAR:g} on every seed "
                     "((b) not for (iv), which varies n)" + (f"; {held}" if held else ""), verdicts))
    return {"title": "Activation noise in EBM classification (activation-noise-ebm)",
            "tables": tabs, "figures": made, "captions": captions, "skipped": skipped, "findings": findings(df)}

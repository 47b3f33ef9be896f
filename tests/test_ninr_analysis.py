"""NINR's analysis (analysis/ninr.py) on small fabricated frames: its claims follow the one verdict
rule of analysis/stats.py, the per-cell gain table, the rounded phase table, and the labels read
from the rows (search_spaces/ninr.py is their one source)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import ninr, stats

REPO = Path(__file__).resolve().parents[1]
CELLS = {"gaussian_noise": [0.1, 0.2], "impulse_noise": [0.1], "blur": [1.0], "contrast": [0.5], "rotation": [20.0]}
ARMS = {"none": {"regularizer": "none"}, "in-NINR σ=10": {"regularizer": "ninr", "placement": "in", "sigma_eps": 10.0},
        "CDT (0.2)": {"regularizer": "cdt", "cdt_std": 0.2}}


def compare_frame(clean: dict, gains: dict | None = None, labelled: bool = True, diverged: dict | None = None):
    """ninr_compare rows on FC: clean accuracy per arm and seed (`clean[label]`), and each arm's
    gain over none under unstructured (Gaussian/impulse) and structured (blur/contrast/rotation)
    corruption per seed (`gains[label] = (unstructured, structured)`), on a none accuracy that
    varies a lot from seed to seed. `diverged[label]` adds that many diverged trials."""
    gains = gains or {}
    rows = []
    for label, accs in clean.items():
        fields = ARMS[label]
        for seed, acc in enumerate(accs):
            common = {"family": "ninr", "method": "ninr", "status": "ok", "arch": "fc", "dataset": "digits",
                      "seed": seed, "trial_key": f"{label}-{seed}", "num_classes": 10, "initial_loss": 2.3,
                      "final_loss": 0.1, "measured_phase": "decay" if fields["regularizer"] == "ninr" else ""}
            common |= {"placement": "in", "sigma_eps": 0.0, "cdt_std": 0.2} | fields
            if labelled:
                common["label"] = label
            rows.append(common | {"corruption": "clean", "strength": 0.0, "accuracy": acc})
            un, st = gains.get(label, ([0.0] * len(accs), [0.0] * len(accs)))
            for corruption, strengths in CELLS.items():
                g = un[seed] if corruption in ninr.UNSTRUCTURED else st[seed]
                for k, s in enumerate(strengths):
                    base = 0.6 + 0.05 * seed - 0.1 * k  # none's accuracy: large spread over seeds
                    rows.append(common | {"corruption": corruption, "strength": s, "accuracy": base + g})
    for label, k in (diverged or {}).items():
        for j in range(k):
            rows.append({"family": "ninr", "method": "ninr", "status": "diverged", "arch": "fc", "seed": 100 + j,
                         "trial_key": f"{label}-div{j}", "label": label} | ARMS[label])
    return pd.DataFrame(rows)


def finding(df, start: str, **kw) -> str:
    (line,) = [f for f in ninr.findings(df, **kw) if start in f]
    return line


# ---------------------------------------------------------------------------------------------
# "NINR keeps clean accuracy": non-inferiority within a margin, by the rule


def test_keeps_clean_accuracy_holds_on_a_tight_loss_within_the_one_point_margin():
    none = [0.96, 0.97, 0.95, 0.965, 0.955]
    arm = [a - 0.005 + e for a, e in zip(none, (0, 1e-3, -1e-3, 5e-4, -5e-4))]
    d = compare_frame({"none": none, "in-NINR σ=10": arm})
    line = finding(d, "keeps clean accuracy?")
    assert "by more than 1 point" in line and "95% CI" in line and "5 paired seeds" in line
    assert ": holds (lower end " in line and line.endswith("above -1 points).")


def test_keeps_clean_accuracy_on_three_noisy_seeds_is_undecided_where_2_sem_said_holds():
    none, arm = [0.90, 0.95, 0.85], [0.88, 0.96, 0.83]  # differences -2, +1, -2 points
    d = compare_frame({"none": none, "in-NINR σ=10": arm})
    line = finding(d, "keeps clean accuracy?")
    assert ": undecided (the interval reaches below -1 points" in line
    # The old rule: a loss within 2 SEM (unpaired) of zero was "holds".
    m, s = np.mean(arm) - np.mean(none), np.hypot(*(np.std(v, ddof=1) / np.sqrt(3) for v in (arm, none)))
    assert m >= -2 * s


def test_the_margin_is_a_parameter_and_is_stated():
    none = [0.96, 0.97, 0.95, 0.965, 0.955]
    d = compare_frame({"none": none, "in-NINR σ=10": [a - 0.005 for a in none]})
    assert ": holds (" in finding(d, "keeps clean accuracy?")
    tight = finding(d, "keeps clean accuracy?", margin=0.002)
    assert "by more than 0.2 points" in tight and ": does not hold (the whole interval is below -0.2 points)" in tight


def test_a_diverged_trial_makes_keeps_clean_accuracy_not_hold_with_its_count():
    none = [0.96, 0.97, 0.95]
    d = compare_frame({"none": none, "in-NINR σ=10": none}, diverged={"in-NINR σ=10": 1})
    assert "does not hold (1 of 4 trials diverged; the rest: " in finding(d, "keeps clean accuracy?")
    assert "+1 diverged" in ninr.table(d).loc["in-NINR σ=10", "fc"]
    gone = compare_frame({"none": none}, diverged={"in-NINR σ=10": 3})
    assert finding(gone, "keeps clean accuracy?").endswith(": does not hold (3 of 3 trials diverged).")
    assert ninr.table(gone).loc["in-NINR σ=10", "fc"] == "all 3 trials diverged"


def test_arms_at_chance_are_blocked_not_kept():
    chance = [0.10, 0.11, 0.09]
    d = compare_frame({"none": chance, "in-NINR σ=10": chance})
    for start in ("keeps clean accuracy?", "gains most under unstructured noise?"):
        assert "undecided (the unregularised arm's clean accuracy 10.00 ± 0.58% is not above chance (10%)" \
            in finding(d, start)


# ---------------------------------------------------------------------------------------------
# "NINR gains most under unstructured noise": the gap is paired per seed


def _gap_frame(gap_noise=(0.0, 1e-3, -1e-3, 5e-4, -5e-4)):
    # Each seed's gain under structured corruption varies a lot; the unstructured one is 2 points
    # above it on every seed.
    st = [0.01, 0.03, 0.05, 0.07, 0.09]
    un = [s + 0.02 + e for s, e in zip(st, gap_noise)]
    none = [0.96, 0.97, 0.95, 0.965, 0.955]
    return compare_frame({"none": none, "in-NINR σ=10": none}, gains={"in-NINR σ=10": (un, st)}), un, st


def test_gains_most_reads_the_paired_per_seed_gap_which_holds_where_the_unpaired_sem_did_not():
    d, un, st = _gap_frame()
    line = finding(d, "gains most under unstructured noise?")
    assert "unstructured minus structured, paired per seed: +2.00 points" in line and "5 paired seeds" in line
    assert line.endswith(": holds (both intervals exclude zero in the claimed direction).")
    # The old rule treated the two gains as independent (hypot of their SEMs): within 2 SEM.
    se = np.hypot(*(np.std(v, ddof=1) / np.sqrt(5) for v in (un, st)))
    assert abs(np.mean(un) - np.mean(st)) <= 2 * se
    # The estimate is the one-sample estimate over the per-seed gaps.
    e = stats.estimate(np.subtract(un, st))
    lo, hi = e.interval()
    assert f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" in line


def test_gains_most_is_undecided_on_a_noisy_gap_and_does_not_hold_on_a_clear_loss():
    d, _, _ = _gap_frame(gap_noise=(0.0, 0.05, -0.05, 0.03, -0.04))
    assert ": undecided (" in finding(d, "gains most under unstructured noise?")
    none = [0.96, 0.97, 0.95]
    loss = compare_frame({"none": none, "in-NINR σ=10": none},
                         gains={"in-NINR σ=10": ([-0.05, -0.051, -0.049], [0.0, 0.01, -0.01])})
    assert ": does not hold (no gain under unstructured noise" in finding(loss, "gains most under unstructured noise?")


def test_the_gain_table_has_one_interval_per_corruption_and_strength_cell():
    d, un, st = _gap_frame()
    t = ninr.gain_table(d)
    cells = [(c, s) for c, ss in CELLS.items() for s in ss]
    assert sorted(zip(t["corruption"], t["strength"])) == sorted(cells) and set(t["regulariser"]) == {"in-NINR σ=10"}
    row = t[(t["corruption"] == "gaussian_noise") & (t["strength"] == 0.2)].iloc[0]
    want = stats.estimate(un).text()  # none's accuracy cancels seed by seed
    assert row["gain over none"] == want.replace("5 seeds", "5 paired seeds")
    assert "CDT (0.2)" not in set(ninr.gain_table(compare_frame({"none": [0.9, 0.91], "CDT (0.2)": [0.9, 0.92]}))
                                  .get("regulariser", []))
    every = ninr.gain_table(compare_frame({"none": [0.9, 0.91], "CDT (0.2)": [0.9, 0.92]}), arms="all")
    assert set(every["regulariser"]) == {"CDT (0.2)"}


def test_the_section_carries_the_gain_table(tmp_path):
    d, _, _ = _gap_frame()
    captions = [c for c, _ in ninr.section(d, tmp_path)["tables"]]
    assert any(c.startswith("Gain over none per corruption and strength") for c in captions)


# ---------------------------------------------------------------------------------------------
# Labels: the rows' column, from the search space


def test_labels_come_from_the_rows_label_column():
    d = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.91, 0.92]})
    d["label"] = d["label"].replace({"in-NINR σ=10": "my own name"})
    assert "my own name" in ninr.table(d).index
    assert any(f.startswith("[fc] my own name [decay] keeps clean accuracy?") for f in ninr.findings(d))


def test_unlabelled_diverged_trials_are_named_as_their_finished_arm():
    d = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.91, 0.92], "CDT (0.2)": [0.9, 0.9, 0.9]},
                      labelled=False, diverged={"in-NINR σ=10": 1}).drop(columns="label")
    d.loc[d["status"] == "diverged", "sigma_eps"] = 10.0
    d = pd.concat([d, d[d["regularizer"] == "ninr"].assign(sigma_eps=120.0, trial_key=lambda x: x["trial_key"] + "b")])
    t = ninr.table(d)
    assert "+1 diverged" in t.loc["regularizer=ninr, sigma_eps=10", "fc"]


def test_rows_without_a_label_column_are_named_by_their_fields_and_the_section_says_so(tmp_path):
    d = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.91, 0.92], "CDT (0.2)": [0.9, 0.9, 0.9]},
                      labelled=False)
    assert "label" not in d.columns
    t = ninr.table(d)
    assert {"regularizer=none", "regularizer=cdt", "regularizer=ninr"} == set(t.index)
    notes = [f for f in ninr.findings(d) if "carry no `label` column" in f]
    assert len(notes) == 1 and notes[0].startswith(f"{len(d)} rows")
    assert any("keeps clean accuracy?" in f for f in ninr.findings(d))  # the baseline is found by its field
    assert any("no `label` column" in c for c, _ in ninr.section(d, tmp_path)["tables"])


def test_the_search_space_names_every_compare_point():
    from search_spaces import ninr as spaces
    assert {spaces.ninr_compare("smoke").label(p) for p in spaces.ninr_compare("smoke").train} == \
        {"none", "in-NINR σ=10", "CDT (0.2)"}  # smoke: a fixed sigma, too short for a phase search
    for preset in ("paper", "quick"):  # the NINR arms find their sigma by probe runs (phase_target)
        space = spaces.ninr_compare(preset)
        assert {space.label(p) for p in space.train} == {
            "none", "L2", "dropout", "in-NINR (decay σ)", "in-NINR (catapult σ)", "full-NINR (decay σ)",
            "full-NINR (catapult σ)", "CDT (0.2)", "CDT (0.4)"}
    # ...and the poster's columns of the non-NINR arms are those names (the poster numbers stay here).
    assert {"none", "L2", "dropout", "CDT (0.2)", "CDT (0.4)"} <= set(ninr.POSTER["fc"])
    phases = spaces.ninr_phases("smoke")
    assert {phases.label(p) for p in phases.train} == {"in-NINR σ=0.1", "in-NINR σ=3"}


# ---------------------------------------------------------------------------------------------
# The phase table, and the loss it compares


def phase_frame():
    rows = []
    for seed in (0, 1):
        rows.append({"family": "ninr", "method": "ninr", "status": "ok", "arch": "linear_toy", "regularizer": "ninr",
                     "sigma_eps": 0.1, "lr": 0.05, "seed": seed, "measured_phase": "decoupled",
                     "predicted_phase": "decoupled", "eta_lambda": 9.637086186558008e-05 * (1 + seed * 1e-3),
                     "hessian_top_init": 0.19, "niw_norm_init": 1.0, "niw_norm_final": 0.9943532704620933,
                     "final_loss": 0.010162127029616386 + seed * 1e-4, "initial_loss": 0.4})
    rows.append({"family": "ninr", "method": "ninr", "status": "diverged", "arch": "linear_toy", "regularizer": "ninr",
                 "sigma_eps": 100.0, "lr": 0.2, "seed": 0, "measured_phase": "", "predicted_phase": "",
                 "eta_lambda": np.nan, "hessian_top_init": np.nan, "niw_norm_init": 1.0, "niw_norm_final": np.nan,
                 "final_loss": np.nan, "initial_loss": 0.4})
    return pd.DataFrame(rows)


def test_the_phase_table_rounds_its_measurements_to_three_significant_digits():
    t = ninr.phase_table(phase_frame())
    ok = t[t["sigma_eps"] == 0.1].iloc[0]
    assert ok["lr*lambda"].startswith("9.64e-05 ± ") and ok["NIW norm final/initial"] == "0.994 ± 0.000"
    assert ok["final loss"] == "0.010212 ± 0.000050" and ok["seeds"] == 2
    bad = t[t["sigma_eps"] == 100.0].iloc[0]
    assert bad["measured"] == "divergent" and bad["final loss"] == "n/a (1 non-finite)"
    one = ninr.phase_table(phase_frame().iloc[[0]])
    assert one.iloc[0]["lr*lambda"] == "9.64e-05 (1 seed)" and one.iloc[0]["NIW norm final/initial"] == "0.994 (1 seed)"
    text = t.astype(str).to_string()
    assert not re.search(r"\d{9,}", text), text  # no raw floats
    values = ninr.phase_values(phase_frame())
    assert values.loc[values["sigma_eps"] == 0.1, "final loss"].item() == pytest.approx(0.010162127029616386 + 5e-5)


def test_convergence_compares_the_final_with_the_initial_loss_both_windowed_means():
    d = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.91, 0.92]})
    line = finding(d, "Converged")
    assert "mean over the last 10% of steps) below the initial one (mean over the first 10%) in every run" in line
    d.loc[d.index[0], "final_loss"] = 3.0
    assert "in not every run" in finding(d, "Converged")


def test_the_module_has_no_statistics_of_its_own():
    tree = ast.parse((REPO / "analysis" / "ninr.py").read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not {n for n in names if re.search(r"(sem|msem|verdict|interval)$", n)}
    src = (REPO / "analysis" / "ninr.py").read_text()
    assert "scipy" not in src and ".sem(" not in src and "ddof" not in src and "2 * se" not in src


def test_the_posters_value_sits_beside_ours_by_label_and_by_the_measured_phase():
    d = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.91, 0.92], "CDT (0.2)": [0.9, 0.9, 0.9]})
    d = d.assign(dataset="fashion_mnist", image_size=28, channels=1)
    t = ninr.table(d)
    assert t.loc["none", "fc"].endswith("(poster 87.7 ± 2.6)") and t.loc["CDT (0.2)", "fc"].endswith("(poster 86.6 ± 0.9)")
    assert t.loc["in-NINR σ=10", "fc"].endswith("[decay] (poster 89.1 ± 0.7)")  # in-NINR (decay), by phase
    assert "poster" not in ninr.table(d.assign(image_size=8)).loc["none", "fc"]


def test_an_arm_whose_phase_search_found_no_sigma_is_named_not_filled():
    df = compare_frame({"none": [0.9, 0.91, 0.92]})
    why = "no probe sigma gives a learning catapult for fc (in-NINR, lr 0.05, 400 steps): σ=1 decoupled"
    skipped = pd.DataFrame([{"family": "ninr", "method": "ninr", "status": "skipped", "arch": "fc", "seed": s,
                             "trial_key": f"cat-{s}", "label": "in-NINR (catapult σ)", "regularizer": "ninr",
                             "placement": "in", "phase_target": "catapult", "message": why} for s in range(3)])
    both = pd.concat([df, skipped], ignore_index=True)
    assert ninr.table(both).loc["in-NINR (catapult σ)", "fc"] == f"not trained: {why}"
    line = finding(both, "in-NINR (catapult σ): not trained")
    assert line == f"[fc] in-NINR (catapult σ): not trained, so no claim is tested on it: {why}."
    assert not [f for f in ninr.findings(both) if "catapult σ) [" in f]  # no verdict on an arm with no rows


def test_arms_that_differ_in_phase_target_are_drawn_side_by_side_not_sliced():
    df = compare_frame({"none": [0.9, 0.91, 0.92], "in-NINR σ=10": [0.9, 0.905, 0.915]})
    df["phase_target"] = np.where(df["regularizer"] == "ninr", "decay", "none")  # as ninr_compare writes it
    t = ninr.table(df)
    assert set(t.index) == {"none", "in-NINR σ=10"} and "phase_target" not in t.attrs.get("fixed", {})


def test_the_phase_diagram_lists_only_what_it_draws():
    def legend(fig):
        return [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]

    both = ninr.phase_diagram(phase_frame())  # sigma 0.1 to 100: lr = 2 / (sigma^2 h) crosses the lr grid
    assert legend(both) == ["decoupled", "divergent", "lr·λ = 2 (predicted)"]
    one = ninr.phase_diagram(phase_frame().iloc[[0, 1]])  # sigma 0.1 only: the boundary lr ~ 10.5, above the grid
    assert legend(one) == ["decoupled"]
    assert any("lies above the grid" in t.get_text() for t in one.axes[0].texts)

"""The one verdict rule (analysis/stats.py), against scipy's own t tests and fabricated frames.

Every family's findings go through stats.verdict, so these are the rule's tests; the last test
keeps every other analysis module from computing a SEM, an interval or a verdict of its own.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis import stats

REPO = Path(__file__).resolve().parents[1]


def frame(arms: dict[str, list[float]]) -> pd.DataFrame:
    """Rows (label, seed, accuracy), seeds 0.. in each arm's order."""
    return pd.DataFrame([{"label": k, "seed": s, "accuracy": v} for k, vs in arms.items() for s, v in enumerate(vs)])


def test_three_seeds_at_t_2_are_undecided_not_holds():
    # mean 1, SEM 0.5 over 3 seeds: t = 2 on 2 degrees of freedom (p about 0.18). The old
    # "2 SEM from zero" rule called this holds.
    d = np.array([0.5, 0.5 + np.sqrt(3) / 2 * 2, 0.0])
    d = 1.0 + (d - d.mean()) / (d.std(ddof=1) / np.sqrt(3)) * 0.5
    e = stats.estimate(d)
    assert e.mean / e.se == pytest.approx(2.0)
    v = stats.verdict(e, scale=1, unit="")
    assert v.word == "undecided" and "seeds at this spread would decide it" in v.reason
    assert e.p() == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)


def test_a_paired_effect_that_an_unpaired_sem_would_miss_holds():
    base = [0.50, 0.70, 0.90]  # seeds differ a lot; the arms differ by about 2 points on each
    d = frame({"new": [b + g for b, g in zip(base, (0.020, 0.021, 0.019))], "old": base})
    paired = stats.compare(d, "label", "new", "old")
    assert paired.paired and stats.verdict(paired).word == "holds"
    unpaired = stats.difference(d[d.label == "new"].set_index("seed")["accuracy"],
                                d[d.label == "old"].set_index("seed")["accuracy"].set_axis([7, 8, 9]))
    assert not unpaired.paired and stats.verdict(unpaired).word == "undecided"


def test_intervals_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.05, 5), rng.normal(0.75, 0.05, 5)
    lo, hi = stats.difference(pd.Series(a), pd.Series(b)).interval()
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    c = rng.normal(0.7, 0.1, 4)
    e = stats.difference(pd.Series(a), pd.Series(c, index=range(10, 14)))
    ref = scipy_stats.ttest_ind(a, c, equal_var=False)
    assert e.p() == pytest.approx(ref.pvalue) and e.interval() == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_opposite_direction_size_and_margin():
    worse = stats.estimate([-0.030, -0.028, -0.032])
    assert stats.verdict(worse).word == "does not hold"
    assert stats.verdict(worse, direction=-1).word == "holds"
    small = stats.estimate([0.020, 0.021, 0.019])  # holds as "better", not as "better by 14 points"
    assert stats.verdict(small).word == "holds"
    assert stats.verdict(small, size=0.14).word == "does not hold"
    # Non-inferiority: a loss of 0.5 points with a tight interval keeps accuracy within 1 point...
    assert stats.verdict(stats.estimate([-0.004, -0.005, -0.006]), margin=0.01).word == "holds"
    # ...a noisy one does not show it (absence of evidence is not "holds")...
    assert stats.verdict(stats.estimate([0.01, -0.03, 0.005]), margin=0.01).word == "undecided"
    # ...and a clear loss of 3 points does not hold.
    assert stats.verdict(worse, margin=0.01).word == "does not hold"


def test_one_seed_identical_arms_and_a_blocked_comparison_are_undecided():
    assert "at least 3 seeds" in str(stats.verdict(stats.estimate([0.3])))
    same = frame({"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    assert "changed nothing" in str(stats.verdict(stats.compare(same, "label", "a", "b")))
    e = stats.estimate([0.2, 0.21, 0.19])
    assert str(stats.verdict(e, blocked="a run did not converge")) == "undecided (a run did not converge)"


def test_seeds_to_decide_is_where_the_interval_would_clear_zero():
    e = stats.estimate([0.01, 0.03, -0.01])  # mean 0.01, sd 0.02
    reason = stats.verdict(e).reason
    k = int(reason.split("about ")[1].split()[0])
    crit = lambda n: scipy_stats.t.ppf(0.975, n - 1) * 0.02 / np.sqrt(n)
    assert crit(k) < 0.01 <= crit(k - 1)


def test_fmt_says_one_seed_rather_than_nan():
    assert stats.fmt(0.5, float("nan")) == "50.00 (1 seed)"
    assert stats.fmt(0.5, 0.01) == "50.00 ± 1.00" and stats.fmt(float("nan"), 0.1) == "n/a"


# What only analysis/stats.py may do: compute a SEM, a spread over seeds, an interval, a p or a
# verdict. Function names, calls and imports that would do it anywhere else in the package.
OWN_STATISTICS = re.compile(r"(^|_)m?sem$|(^|_)verdicts?$|(^|_)intervals?$")
STATISTICS_CALLS = {"sem", "ttest_1samp", "ttest_rel", "ttest_ind", "ppf", "sf"}


def test_no_other_analysis_module_computes_a_sem_an_interval_or_a_verdict():
    found = []
    for path in sorted((REPO / "analysis").glob("*.py")):
        if path.name == "stats.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and OWN_STATISTICS.search(node.name.lower()):
                found.append(f"{path.name}: def {node.name}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in STATISTICS_CALLS:
                    found.append(f"{path.name}:{node.lineno}: .{node.func.attr}(")
                if node.func.attr in ("std", "var") and any(k.arg == "ddof" for k in node.keywords):
                    found.append(f"{path.name}:{node.lineno}: .{node.func.attr}(ddof=...)")
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "scipy" in ast.unparse(node):
                found.append(f"{path.name}: imports scipy")
    assert not found, found


def test_the_rule_check_catches_a_family_copy(tmp_path, monkeypatch):
    """The check above is not vacuous: a module with the old copies is caught."""
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "copy.py").write_text(
        "def _msem(v):\n    return v.mean(), v.std(ddof=1)\n\ndef _verdict(d, s):\n    return d.sem()\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError) as caught:
        test_no_other_analysis_module_computes_a_sem_an_interval_or_a_verdict()
    assert "def _msem" in str(caught.value) and "def _verdict" in str(caught.value) and ".sem(" in str(caught.value)


def test_a_subset_of_the_papers_data_set_is_comparable_with_its_difference_named():
    protocol = {"dataset": "mnist", "image_size": 28}
    subset = pd.DataFrame({"dataset": ["mnist5k"] * 2, "image_size": [28, 28]})
    assert stats.protocol_differences(subset, protocol) == []
    caveat = stats.protocol_caveats(subset, protocol)
    assert len(caveat) == 1 and "dataset=mnist5k" in caveat[0] and "5,000-image subset" in caveat[0]
    full = subset.assign(dataset="MNIST")
    assert stats.protocol_differences(full, protocol) == [] and stats.protocol_caveats(full, protocol) == []
    other = subset.assign(dataset="digits")
    assert stats.protocol_differences(other, protocol) == ["dataset=digits (paper mnist)"]
    assert stats.protocol_caveats(other, protocol) == []
    # a subset of one data set never stands in for another
    assert stats.protocol_differences(subset, {"dataset": "fashion_mnist"}) == ["dataset=mnist5k (paper fashion_mnist)"]


def test_an_inert_arm_is_its_own_word_never_holds_or_undecided():
    clear = stats.estimate(np.array([0.05, 0.06, 0.055, 0.052]))
    assert stats.verdict(clear).word == "holds"
    inert = stats.verdict(clear, inert="the generator learned no noise")
    assert inert.word == "inert" and not inert.holds and "learned no noise" in str(inert)
    assert stats.verdict(clear, inert="x", blocked="y").word == "inert"
    assert "**inert**" in stats.RULE


def test_a_cell_at_chance_is_flagged():
    assert stats.cell([0.10, 0.11, 0.09], chance=0.1).endswith("[at chance]")
    assert stats.cell([0.115, 0.12, 0.118], chance=0.1).endswith("[at chance]")  # within 2 points
    assert "chance" not in stats.cell([0.13, 0.14, 0.15], chance=0.1)
    assert "chance" not in stats.cell([0.05, 0.06], count=True)  # no chance given: no flag


def test_number_writes_missing_as_na_integers_plainly_and_extremes_in_scientific():
    assert stats.number(float("nan")) == "n/a" and stats.number(None) == "n/a" and stats.number(float("inf")) == "n/a"
    assert stats.number(3) == "3" and stats.number(np.int64(1500)) == "1500" and stats.number(12.0) == "12"
    assert stats.number(9.637086186558008e-05) == "9.64e-05"
    assert stats.number(0.9943532704620933) == "0.994"
    assert stats.number(0.5) == "0.5" and stats.number(0.0) == "0"
    assert stats.number(2.5e7) == "2.50e+07" and stats.number(123.456, 4) == "123.5"


def test_fmt_puts_the_unit_after_the_numbers_and_plural_counts():
    assert stats.fmt(0.7667, float("nan"), unit="%") == "76.67% (1 seed)"
    assert stats.fmt(0.983, 0.002, unit="%") == "98.30 ± 0.20%"
    assert stats.cell([0.05], unit="%", chance=0.1) == "5.00% (1 seed) [at chance]"
    assert [stats.plural(n, "seed") for n in (0, 1, 3)] == ["0 seeds", "1 seed", "3 seeds"]
    assert stats.plural(1, "entry", "entries") == "1 entry" and stats.plural(2, "entry", "entries") == "2 entries"


def test_spread_cell_fits_the_digits_to_the_spread():
    assert stats.spread_cell([1.0, 1.2, 1.4]) == "1.20 ± 0.12"  # SEM 0.115: two significant digits
    assert stats.spread_cell([1e-5, 2e-5]) == "1.50e-05 ± 5.0e-06"
    assert stats.spread_cell([float("nan")]) == "n/a (1 non-finite)"


def test_a_protocol_of_zero_steps_reads_as_training_by_epochs():
    d = pd.DataFrame({"steps": [3], "image_size": [8]})
    assert stats.protocol_differences(d, {"steps": 0, "image_size": 32}) == [
        "steps=3 (paper none: it trains by epochs)", "image_size=8 (paper 32)"]

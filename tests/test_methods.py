"""The contract every registered method keeps, checked through the real trial code.

Parametrised over the registry (and the test-only families of conftest.TEST_FAMILIES), so a new
family is held to it without writing a test: deterministic on CPU for a fixed seed; resuming from
a mid-training checkpoint equals an uninterrupted run; a diverging run ends with status
`diverged` without raising; every row carries every config field and the family/method columns;
a bad test setting is one ConfigError line; a row column has one source (config, the run's
columns, the setting row, the trial's provenance). Tune's session calls are replaced by recorders.
"""

from __future__ import annotations

import dataclasses
import json
import pandas as pd
import pytest
from ray import tune as ray_tune  # run_trial imports Tune when it runs; its calls are replaced here

from tests import faulty
from tests.conftest import TEST_FAMILIES, FakeSession
from trainables.checks import ConfigError
from trainables.common import STATUS_DIVERGED, STATUS_OK, all_field_names
from tuner import registry, trial
from tuner.store import ResultStore

EXTRA_METHODS, EXTRA_EXPERIMENTS = registry.load(list(TEST_FAMILIES))
METHODS = registry.METHODS | EXTRA_METHODS
EXPERIMENTS = registry.EXPERIMENTS | EXTRA_EXPERIMENTS
# Columns that differ between two runs of the same trial by design (ids, hosts, clocks).
VOLATILE = {"trial_id", "host", "node_id", "train_seconds", "eval_seconds", "eval_seconds_at_n", "traceback"}

pytestmark = pytest.mark.usefixtures("one_thread")


def experiment_of(method: str):
    """The method's first grid experiment: the contract runs one of its trials."""
    return next(e for e in EXPERIMENTS.values() if e.method == method and e.search == "grid")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(method, name, point=None, overrides=None, restore_from=None) -> (rows DataFrame, session)."""
    for name, method in EXTRA_METHODS.items():
        monkeypatch.setitem(registry.METHODS, name, method)
    for name, exp in EXTRA_EXPERIMENTS.items():
        monkeypatch.setitem(registry.EXPERIMENTS, name, exp)

    def go(method: str, name: str, point=None, overrides=None, restore_from=None):
        exp = experiment_of(method)
        session = FakeSession(tmp_path, restore_from)
        for attr in ("report", "get_checkpoint", "get_context"):
            monkeypatch.setattr(ray_tune, attr, getattr(session, attr))
        config = {"experiment": exp.name, "preset": "smoke", "seed": 0,
                  "point": point if point is not None else exp.space("smoke").train[0],
                  "overrides": overrides or {}, "storage": str(tmp_path), "name": name, "meta": {},
                  "threads": 1, "checkpoint_seconds": 0.0}
        trial.run_trial(config)
        store = ResultStore(str(tmp_path), name)
        (part,) = store.parts()
        return pd.read_parquet(part), session

    return go


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    cols = sorted(c for c in df.columns if c not in VOLATILE)
    return df[cols].sort_values(cols, key=lambda s: s.astype(str)).reset_index(drop=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_trial_is_deterministic_and_its_rows_carry_every_field(run, method):
    m = METHODS[method]
    first, session = run(method, "a")
    second, _ = run(method, "b")
    pd.testing.assert_frame_equal(comparable(first), comparable(second))
    assert set(first["status"]) == {STATUS_OK}
    exp = experiment_of(method)
    cfg, ecfg, settings = registry.trial_configs(exp, "smoke", exp.space("smoke").train[0] | {"seed": 0}, {})
    fields = all_field_names(cfg) | all_field_names(ecfg)
    assert fields <= set(first.columns), sorted(fields - set(first.columns))
    assert set(first["family"]) == {m.family} and set(first["method"]) == {m.name}
    assert set(m.setting_columns.values()) <= set(first.columns)
    assert set(m.summary_columns) <= set(first.columns)
    assert first[list(m.setting_columns.values())].drop_duplicates().shape[0] == len(settings)
    assert first["headline"].any() and json.loads(first["summary_by"].iloc[0]) == list(m.summary_columns)
    assert set(first["eval_seed"]) == {0}  # the smoke eval configs leave it to the trial's seed
    assert first["label"].map(type).eq(str).all()
    final = session.reports[-1]
    assert final["done"] and exp.metric in final  # Tune is told the experiment's metric
    best = first[first["headline"]][exp.metric]
    assert final[exp.metric] == (best.max() if exp.mode == "max" else best.min())


@pytest.mark.parametrize("method", list(METHODS))
def test_resuming_from_a_mid_training_checkpoint_equals_an_uninterrupted_run(run, method):
    whole, session = run(method, "whole")
    assert len(session.checkpoints) >= 2, "the smoke preset must train at least two epochs"
    resumed, again = run(method, "resumed", restore_from=session.checkpoints[0][1])
    epochs = [r["epoch"] for r in again.reports if "epoch" in r]
    assert epochs and epochs[0] == 2  # it went on from the checkpoint, not from the start
    pd.testing.assert_frame_equal(comparable(whole), comparable(resumed))


@pytest.mark.parametrize("method", list(METHODS))
def test_a_diverging_run_ends_diverged_without_raising(run, method):
    m = METHODS[method]
    assert m.diverging, f"{method} declares no diverging overrides"
    point = experiment_of(method).space("smoke").train[0]
    overrides = {k: v for k, v in m.diverging.items() if k not in point}
    rows, session = run(method, "diverged", point=point | {k: v for k, v in m.diverging.items() if k in point},
                        overrides=overrides)
    assert list(rows["status"]) == [STATUS_DIVERGED] and rows["message"].iloc[0]
    assert json.loads(rows["overrides"].iloc[0]) == overrides  # the run's --set, readable in every row
    assert session.reports[-1]["status"] == STATUS_DIVERGED


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("setting", [{"no_such_key": 1}, "not a dict"])
def test_a_bad_test_setting_is_one_config_error_line(method, setting):
    with pytest.raises(ConfigError) as caught:
        METHODS[method].check_setting(setting)
    message = str(caught.value)
    assert "\n" not in message and "allowed" in message


@pytest.mark.parametrize("method", list(METHODS))
def test_every_preset_builds_valid_configs(method):
    m = METHODS[method]
    for preset in m.presets:
        m.configs(preset, {})
    with pytest.raises(ConfigError, match="preset"):
        m.configs("no_such_preset", {})


@dataclasses.dataclass(frozen=True)
class _SeededEval(faulty.FaultyEvalConfig):
    eval_seed: int | None = 7


def _faulty_with(monkeypatch, setting: dict | None = None, columns: dict | None = None, seeds: list | None = None):
    """The faulty method with `setting` added to each row evaluate returns, `columns` as its run
    columns, an eval config whose eval_seed is 7, and the eval seeds it is given kept in `seeds`."""
    m = faulty.METHODS[0]

    def configs(preset, values):
        cfg, ecfg = m.configs(preset, values)
        return cfg, _SeededEval(ecfg.repeats)

    def train(*args, **kwargs):
        return dataclasses.replace(m.train(*args, **kwargs), columns=dict(columns or {}))

    def evaluate(model, data, settings, cfg, ecfg, eval_seed):
        (seeds if seeds is not None else []).append(eval_seed)
        return [r | (setting or {}) for r in m.evaluate(model, data, settings, cfg, ecfg, eval_seed)]

    monkeypatch.setitem(registry.METHODS, m.name, dataclasses.replace(m, configs=configs, train=train,
                                                                      evaluate=evaluate))


@pytest.mark.parametrize("setting, columns, column", [
    ({"level": 9.0}, {}, "level"),  # a training config field, from evaluate
    ({}, {"repeats": 2}, "repeats"),  # an eval config field, as a run column
    ({"eval_seed": 7}, {}, "eval_seed"),  # provenance
    ({"family": "other"}, {}, "family"),  # a meta column
    ({}, {"status": "ok"}, "status"),
    ({"label": "x"}, {}, "label"),
    ({"gap": 1.0}, {"gap": 1.0}, "gap"),  # a run column that a setting row repeats
    ({"final_loss": 0.5}, {}, "final_loss"),  # ... the trial's default final_loss included
])
def test_a_row_column_given_by_two_sources_makes_the_trial_raise(run, monkeypatch, setting, columns, column):
    _faulty_with(monkeypatch, setting, columns)
    with pytest.raises(ValueError, match=f"column '{column}' comes from both"):
        run("faulty", "twice")


def test_run_columns_the_resolved_eval_seed_and_the_label_reach_every_row(run, monkeypatch):
    seeds = []
    _faulty_with(monkeypatch, columns={"final_loss": 0.25, "gap": 1.5}, seeds=seeds)
    exp = EXPERIMENTS["faulty_grid"]
    labelled = dataclasses.replace(exp, space=lambda preset: dataclasses.replace(
        exp.space(preset), label=lambda point: f"level {point['level']}"))
    monkeypatch.setitem(registry.EXPERIMENTS, exp.name, labelled)
    rows, _ = run("faulty", "own")
    assert set(rows["final_loss"]) == {0.25} and set(rows["gap"]) == {1.5}  # the method's own final_loss
    assert seeds == [7] and set(rows["eval_seed"]) == {7}  # the eval config's, not the trial's seed 0
    assert "eval_seed" in json.loads(rows["config_columns"].iloc[0])
    assert set(rows["label"]) == {"level 0.0"}


def test_without_a_label_or_a_final_loss_of_its_own_a_row_has_the_trials_defaults(run):
    rows, _ = run("faulty", "plain")
    history = list(faulty.train(faulty.FaultyConfig(), None).history)
    assert set(rows["label"]) == {""} and set(rows["final_loss"]) == {history[-1]}
    assert set(rows["eval_seed"]) == {0}  # faulty's eval config has no eval_seed: the trial's seed


def test_a_methods_own_progress_metrics_reach_tune_beside_the_common_ones(monkeypatch):
    from trainables.common import Progress
    got = []
    monkeypatch.setattr(ray_tune, "report", lambda metrics, checkpoint=None: got.append(metrics))
    report = trial._reporter(checkpoint_seconds=1e9)
    report(Progress(3, 0.5, dict, 0.6, {"units": 18.0, "epoch": -1.0}))
    assert got == [{"units": 18.0, "epoch": 3, "loss": 0.5, "done_share": 0.6}]  # the common ones win

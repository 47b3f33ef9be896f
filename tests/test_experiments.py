"""Every registered experiment runs end to end on its smoke preset (a new one is tested for free).

Only what every family shares is checked here; what a method's rows hold beyond that is its
own test's business (tests/test_<family>.py, tests/test_methods.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tuner import registry
from tuner.run import Plan, parse_args
from tuner.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
COMMON = {"family", "method", "experiment", "preset", "seed", "status", "trial_key", "git_commit", "ray_version",
          "train_seconds", "tune_metric", "tune_mode", "headline", "summary_by", "overrides", "git_dirty"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_smoke_run_writes_the_expected_rows(name, shared_smoke):
    exp = registry.EXPERIMENTS[name]
    method = registry.METHODS[exp.method]
    folder, done, args = shared_smoke(name)  # tests/conftest.py: --num-samples 2 for an Optuna experiment
    plan = Plan(parse_args(args))
    parts = ResultStore(str(folder.parent), plan.name).parts()
    df = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    assert COMMON <= set(df.columns)
    assert set(df["status"]) == {"ok"}, df["message"].unique()
    assert set(df["family"]) == {method.family} and set(df["method"]) == {method.name}
    assert set(df["overrides"]) == {"{}"} and set(df["git_dirty"]) <= {"true", "false"}
    assert set(df["tune_metric"]) == {exp.metric} and df[exp.metric].notna().all()
    assert set(method.setting_columns.values()) <= set(df.columns)
    assert json.loads(df["summary_by"].iloc[0]) == list(method.summary_columns)
    assert len(parts) == (len(plan.points) if plan.search == "grid" else 2)
    assert df.groupby("trial_key")["headline"].any().all()  # each trial names its headline rows
    if plan.search == "grid":  # every test setting of every trial was evaluated
        settings = df[["trial_key", *method.setting_columns.values()]].drop_duplicates()
        assert len(settings) == sum(len(plan.configs(p)[2]) for p in plan.points)
    if plan.search == "optuna":
        assert (folder / "optuna.db").exists()  # the study persists for inspection
    assert exp.metric in done.stdout  # the end-of-run summary names the experiment's metric

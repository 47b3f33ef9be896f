"""Every registered experiment runs end to end on its smoke preset (a new one is tested for free)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tuner import registry
from tuner.run import Plan, parse_args
from tuner.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
COMMON = {"experiment", "preset", "seed", "dataset", "alpha_train", "alpha_test", "distribution_test", "n",
          "accuracy", "status", "trial_key", "git_commit", "ray_version", "device_name", "train_seconds"}


@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_smoke_run_writes_the_expected_rows(tmp_path, name):
    args = [name, "--preset", "smoke", "--storage", str(tmp_path)]
    if registry.EXPERIMENTS[name].search == "optuna":
        args += ["--num-samples", "2"]
    done = subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = Plan(parse_args(args))
    parts = ResultStore(str(tmp_path), plan.name).parts()
    df = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    assert COMMON <= set(df.columns)
    assert set(df["status"]) == {"ok"}, df["message"].unique()
    assert df["accuracy"].between(0, 1).all()
    n_points = len(plan.configs(plan.points[0])[1].n_checkpoints)
    if plan.search == "grid":
        assert len(parts) == len(plan.points)
        assert len(df) == sum(len(plan.space.tests(p)) for p in plan.points) * n_points
    else:
        assert len(parts) == 2 and len(df) == 2 * n_points
        assert (tmp_path / plan.name / "optuna.db").exists()  # the study persists for inspection

"""A trial resumes from its last checkpoint: training picks up after the saved epoch and the
rows equal an uninterrupted run's (Tune's session calls are replaced by recorders here)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray import tune as ray_tune  # run_trial imports Tune when it runs; its calls are replaced here

from tests.conftest import FakeSession
from tuner import trial
from tuner.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(storage: Path, name: str) -> dict:
    return {"experiment": "grid_ebm", "preset": "smoke", "seed": 0, "point": {"alpha_train": 0.5},
            "overrides": {"steps": 0, "epochs": 6}, "storage": str(storage), "name": name,
            "meta": {}, "threads": 1, "checkpoint_seconds": 0.0}


def _run(monkeypatch, session: FakeSession, config: dict) -> None:
    for attr in ("report", "get_checkpoint", "get_context"):
        monkeypatch.setattr(ray_tune, attr, getattr(session, attr))
    trial.run_trial(config)


def test_a_retried_trial_resumes_from_its_checkpoint_and_matches(tmp_path, monkeypatch):
    full = FakeSession(tmp_path)
    _run(monkeypatch, full, _config(tmp_path, "full"))
    epochs = [r["epoch"] for r in full.reports if "epoch" in r]
    assert epochs == [1, 2, 3, 4, 5, 6] and len(full.checkpoints) == 6

    epoch, folder = full.checkpoints[2]  # as if the worker died after epoch 3's checkpoint
    resumed = FakeSession(tmp_path, restore_from=folder)
    _run(monkeypatch, resumed, _config(tmp_path, "resumed"))
    assert [r["epoch"] for r in resumed.reports if "epoch" in r] == [4, 5, 6]

    def metrics(name):
        table = pq.read_table(ResultStore(str(tmp_path), name).parts()[0]).to_pandas()
        return table[["alpha_test", "n", "accuracy", "energy_mean", "final_loss", "epochs_done"]]

    assert metrics("full").equals(metrics("resumed"))

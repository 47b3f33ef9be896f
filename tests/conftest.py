"""Fixtures shared by several test modules."""

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster, and reproducibly, on one thread of this shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Test-only method families (modules exporting METHODS and EXPERIMENTS, as NOISETUNE_PLUGINS
# modules do): tests/test_methods.py runs its contract over them beside the registered ones.
TEST_FAMILIES = ("tests.faulty",)


class FakeSession:
    """Stands in for ray.tune's report/get_checkpoint/get_context inside one trial; records what
    the trial reported and copies out each checkpoint as (epoch, folder)."""

    def __init__(self, tmp: Path, restore_from=None):
        self.tmp, self.restore_from = tmp, restore_from
        self.reports, self.checkpoints = [], []

    def report(self, metrics, checkpoint=None):
        self.reports.append(dict(metrics))
        if checkpoint is not None:  # copy out: Tune would persist it before the folder goes away
            keep = self.tmp / f"ck-{id(self)}-{len(self.checkpoints)}"
            shutil.copytree(checkpoint.path, keep)
            self.checkpoints.append((metrics["epoch"], keep))

    def get_checkpoint(self):
        from ray import tune
        return None if self.restore_from is None else tune.Checkpoint.from_directory(str(self.restore_from))

    def get_context(self):
        return type("Ctx", (), {"get_trial_id": staticmethod(lambda: "fake_trial")})()

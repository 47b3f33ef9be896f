"""Fixtures shared by several test modules."""

import os
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def private_data_root(tmp_path_factory):
    """Nothing a test runs writes into the user's data root (~/.cache/noisetune/data): the EBM
    evaluation caches its timed path choice there. A NOISETUNE_DATA already set is kept."""
    if "NOISETUNE_DATA" in os.environ:
        yield
        return
    os.environ["NOISETUNE_DATA"] = str(tmp_path_factory.mktemp("data-root"))
    yield
    os.environ.pop("NOISETUNE_DATA", None)


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


_HOLDER = """
import sys, ray
ray.init(include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test session closes our stdin
ray.shutdown()
"""


@pytest.fixture(scope="session")
def shared_ray():
    """The environment for `tuner.run` subprocesses that only need a running Ray: they connect to
    one local cluster started once for the session (1.1 s a connection against 7.6 s a start,
    bench/results/startup_cpu.txt). Tests that kill drivers, need their own environment in the trial
    workers (object-store credentials) or check how a cluster starts keep starting their own.
    The cluster's processes are the holder's session group, stopped by that group at the end."""
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    try:
        address = holder.stdout.readline().strip()
        assert address, f"the shared Ray cluster did not start (rc {holder.poll()})"
        yield env | {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(holder.pid, signal.SIGKILL)  # anything of its group still alive
        except ProcessLookupError:
            pass
        holder.wait()


# Seeds a family's report tests need of a smoke run (an SEM needs two); the others run their default.
SMOKE_SEEDS = {"vpn_frozen": "2", "ninr_compare": "2", "labelnoise_sesnn": "2"}


def smoke_args(name: str) -> list[str]:
    """The command line of the session's smoke run of `name` (without --storage)."""
    from tuner import registry
    args = [name, "--preset", "smoke"]
    if name in SMOKE_SEEDS:
        args += ["--seeds", SMOKE_SEEDS[name]]
    if registry.EXPERIMENTS[name].search == "optuna":
        args += ["--num-samples", "2"]
    return args


@pytest.fixture(scope="session")
def shared_smoke(shared_ray, tmp_path_factory):
    """shared_smoke(name) -> (run folder, finished process, its arguments) of `tuner.run
    <smoke_args(name)> --storage <a session folder>`, run
    at most once a session on the shared cluster: tests that read a smoke run read this one; a
    test that changes a run works on a copy."""
    import subprocess
    import sys

    storage, done = tmp_path_factory.mktemp("smoke"), {}

    def run(name: str):
        if name not in done:
            args = [*smoke_args(name), "--storage", str(storage)]
            proc = subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=Path(__file__).resolve().parents[1],
                                  capture_output=True, text=True, timeout=600, env=shared_ray)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[name] = (storage / f"{name}-smoke", proc, args)
        return done[name]
    return run


def notebook_output(name: str, results) -> str:
    """Execute analysis/notebooks/<name>.ipynb headless on `results` (it must be stored without
    outputs) and return the text its cells printed."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    repo = Path(__file__).resolve().parents[1]
    nb = nbformat.read(repo / "analysis" / "notebooks" / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
    os.environ["NOISETUNE_RESULTS"] = str(results)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(repo)}}).execute()
    finally:
        del os.environ["NOISETUNE_RESULTS"]
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def refusal(*args: str) -> str:
    """`python -m tuner.run ARGS --dry-run` must fail with one error line and no traceback;
    returns that line."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tuner.run", *args, "--dry-run"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.stderr.strip().splitlines()[-1]

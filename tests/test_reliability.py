"""Kill it, corrupt it, overload it: nothing written is lost and every result is still right.

Modelled on Ray Tune's own tests: the driver is SIGKILLed mid-run and the same command resumes;
a trial's worker is SIGKILLed and the trial resumes from its checkpoint; trials fail and diverge.
Faults are injected by `tests/faulty.py`, a method registered through NOISETUNE_PLUGINS that runs
the real service path; the driver-kill rounds use the real EBM smoke preset.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tuner.store import ResultStore
from tuner import registry

pytestmark = pytest.mark.slow  # end to end: real Ray clusters and tuner.run subprocesses

REPO = Path(__file__).resolve().parents[1]
PLUGIN_ENV = {**os.environ, "NOISETUNE_PLUGINS": "tests.faulty"}  # each run starts its own local Ray


@pytest.fixture
def env(shared_ray):
    """The fault plugin's runs on the session's Ray cluster (tests/conftest.py, `shared_ray`)."""
    return {**shared_ray, "NOISETUNE_PLUGINS": "tests.faulty"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner.run", *args]


def cli(*args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def start(*args: str, env=None) -> subprocess.Popen:
    """The command in its own session, so that killing the group takes the local Ray with it."""
    return subprocess.Popen(command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(condition, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def frame(storage: Path, name: str) -> pd.DataFrame:
    store = ResultStore(str(storage), name)
    return pd.concat([pq.read_table(p).to_pandas() for p in store.parts()], ignore_index=True)


def trainings(log_dir: Path) -> list[dict]:
    """One dict per training started: seed, level, and the epoch it started from."""
    path = log_dir / "trainings.log"
    if not path.exists():
        return []
    return [dict(kv.split("=") for kv in line.split()) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# 1. The driver is killed at random points, again and again


def test_driver_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, one_thread, shared_ray):
    """The driver alone dies, as a `ray job submit` driver would: the cluster lives on (and kills
    the dead job's trials). A laptop's local Ray dying with its driver is the checkpoint test's case."""
    args = ("grid_ebm", "--preset", "smoke", "--seeds", "3", "--max-concurrent", "1", "--storage", str(tmp_path))
    results = tmp_path / "grid_ebm-smoke" / "results"
    rng = random.Random(6)
    final: dict[str, bytes] = {}  # part name -> bytes, once its trial has finished
    parts_after = []
    # Four kills: one early in start-up, then each once one more trial has finished, plus 0-0.2 s.
    # Each later round waits for a part count above the last, so the kills land at different points
    # however fast the machine is (a warm cluster finishes a smoke trial in a fraction of a second).
    for round_ in range(4):
        proc = start(*args, env=shared_ray)
        try:
            if round_ == 0:
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                target = len(final) + 1
                wait_for(lambda: len(list(results.glob("part-*.parquet"))) >= target or proc.poll() is not None,
                         what=f"{target} part files")
                time.sleep(rng.uniform(0.0, 0.2))
        finally:
            kill_group(proc)
        parts = {p.name: p.read_bytes() for p in results.glob("part-*.parquet")} if results.exists() else {}
        for name, data in final.items():
            assert parts[name] == data, f"finished part {name} was rewritten in round {round_}"
        final |= parts
        parts_after.append(len(parts))
    assert len(set(parts_after)) >= 3, parts_after  # the kills landed at different points of the sweep
    done = cli(*args, env=shared_ray)
    assert done.returncode == 0, done.stderr[-3000:]

    store = ResultStore(str(tmp_path), "grid_ebm-smoke")
    assert len(store.parts()) == 6 and not store.unreadable_parts()
    for path in store.parts():
        name = Path(path).name
        if name in final:
            assert Path(path).read_bytes() == final[name], f"finished part {name} was rewritten"
    df = frame(tmp_path, "grid_ebm-smoke")
    assert len(df) == 24 and set(df["status"]) == {"ok"}
    assert df.groupby(["seed", "alpha_train", "alpha_test", "n"]).size().eq(1).all()

    # The same trials run uninterrupted, in this process: bitwise the same metrics.
    for (seed, alpha), got in df.groupby(["seed", "alpha_train"]):
        exp = registry.get("grid_ebm")
        method = registry.method_of(exp)
        cfg, ecfg, settings = registry.trial_configs(exp, "smoke", {"alpha_train": float(alpha), "seed": int(seed)}, {})
        data = method.load_data(cfg)
        result = method.train(cfg, data, None, None)
        want = pd.DataFrame(method.evaluate(result.model, data, settings, cfg, ecfg, int(seed)))
        key = ["alpha_test", "n"]
        got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
        for col in ("accuracy", "energy_mean", "energy_var"):  # energy_var is NaN at n = 1
            assert np.array_equal(got[col].to_numpy(float), want[col].to_numpy(float), equal_nan=True), (seed, alpha, col)


# ---------------------------------------------------------------------------------------------
# 2. A trial's worker is killed


def slow_checkpointed(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    """(log folder, args) of a faulty_grid run whose trials train 16 epochs of 0.25 s, saving
    every 0.5 s: long enough to kill something mid-training, after a checkpoint."""
    log = tmp_path / "log"
    log.mkdir()
    return log, ("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--max-concurrent", "1",
                 "--checkpoint-seconds", "0.5", "--set", f"log_dir={log}", "--set", "epochs=16",
                 "--set", "epoch_seconds=0.25")


def test_worker_killed_mid_training_resumes_from_its_checkpoint(tmp_path, env):
    log, args = slow_checkpointed(tmp_path)
    proc = start(*args, env=env | {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"})  # Tune's result.json, read below
    try:
        tune_dir = tmp_path / "faulty_grid-smoke" / "tune"
        wait_for(lambda: any(tune_dir.glob("*/checkpoint_000001")), what="a trial's second checkpoint")
        first = trainings(log)[-1]
        pid = int((log / f"pid-{first['seed']}-{first['level']}").read_text())
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0
    finally:
        kill_group(proc)

    runs = [t for t in trainings(log) if (t["seed"], t["level"]) == (first["seed"], first["level"])]
    assert [int(t["start"]) > 0 for t in runs] == [False, True], runs  # retried once, from a checkpoint
    df = frame(tmp_path, "faulty_grid-smoke")
    assert set(df["status"]) == {"ok"} and set(df["epochs_done"]) == {16} and len(df) == 4
    # What Tune saw: the retried trial's first report comes after its first run's, not from the start.
    results = [json.loads(line) for path in tune_dir.glob("*/result.json") for line in path.read_text().splitlines()]
    starts = [r["epoch"] for r in results if r.get("iterations_since_restore") == 1 and "epoch" in r
              and r["config"]["point"]["level"] == float(first["level"])]
    assert len(starts) == 2 and starts[1] > starts[0], starts


def test_a_finished_trials_checkpoints_are_deleted_unless_kept(tmp_path, env):
    """A trial keeps its latest checkpoint while it runs (num_to_keep 1) and none once its part is
    written; --keep-checkpoints keeps every one, so the models stay for a user who wants them."""
    sizes = {}
    for keep in (False, True):
        storage = tmp_path / ("kept" if keep else "pruned")
        log = storage / "log"
        log.mkdir(parents=True)
        done = cli("faulty_grid", "--preset", "smoke", "--storage", str(storage), "--checkpoint-seconds", "0.3",
                   "--set", f"log_dir={log}", "--set", "epochs=8", "--set", "epoch_seconds=0.25",
                   *(["--keep-checkpoints"] if keep else []), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert set(frame(storage, "faulty_grid-smoke")["status"]) == {"ok"}
        tune_dir = storage / "faulty_grid-smoke" / "tune"
        sizes[keep] = sorted(p.name for p in tune_dir.rglob("checkpoint_*") if p.is_dir())
    assert sizes[False] == [], sizes[False]
    assert len(sizes[True]) >= 8, sizes[True]  # 4 trials x at least 2 checkpoints each, all kept


# ---------------------------------------------------------------------------------------------
# 3. Trials that fail once, fail always, or diverge


def test_failing_and_diverging_trials_leave_the_right_rows_and_others_complete(tmp_path, env):
    log = tmp_path / "log"
    log.mkdir()
    done = cli("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--seeds", "4",
               "--max-failures", "1", "--set", "fault=by_seed", "--set", f"log_dir={log}", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    df = frame(tmp_path, "faulty_grid-smoke")
    status = df.groupby("seed")["status"].agg(set).to_dict()
    assert status == {0: {"ok"}, 1: {"ok"}, 2: {"error"}, 3: {"diverged"}}, status  # seed % 4 picks the fault
    assert len(df[df.seed.isin([0, 1])]) == 8  # 2 trainings x 2 test settings each
    errors = df[df.seed == 2]
    assert len(errors) == 2 and errors["message"].str.contains("injected failure").all()
    assert df[df.seed == 3]["message"].str.contains("loss nan").all()
    attempts = pd.DataFrame(trainings(log)).groupby("seed").size().to_dict()
    assert attempts == {"0": 2, "1": 4, "2": 4, "3": 2}  # per seed, 2 trials: retries only where failing


# ---------------------------------------------------------------------------------------------
# 4. Corrupt storage, and two drivers on one run folder


def test_corrupt_parts_are_named_set_aside_and_rerun(tmp_path, env):
    import analysis

    log = tmp_path / "log"
    log.mkdir()
    args = ("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--seeds", "2", "--set", f"log_dir={log}")
    assert cli(*args, env=env).returncode == 0
    store = ResultStore(str(tmp_path), "faulty_grid-smoke")
    original = {Path(p).name: Path(p).read_bytes() for p in store.parts()}
    truncated, garbage, *_ = sorted(original)
    store_dir = Path(store.results)
    for name, damaged in ((truncated, original[truncated][:100]), (garbage, b"not parquet at all")):
        # Damaged copies arriving by rename, as rsync or cp -a deliver them (a part overwritten in
        # place is the one change a fresh compaction does not see: analysis/load.py's docstring).
        store_dir.joinpath(name + ".incoming").write_bytes(damaged)
        store_dir.joinpath(name + ".incoming").replace(store_dir / name)

    with pytest.warns(UserWarning, match="unreadable part file") as caught:
        df = analysis.load(tmp_path / "faulty_grid-smoke")
    assert sorted(df.attrs["unreadable"]) == sorted([truncated, garbage])
    for name in (truncated, garbage):
        assert any(name in str(w.message) for w in caught), name

    before = len(trainings(log))
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("unreadable part file") == 2
    assert len(trainings(log)) - before == 2  # exactly the two damaged trials ran again
    assert sorted(Path(p).name for p in store.parts()) == sorted(original) and not store.unreadable_parts()
    cols = ["trial_key", "shift_test", "error", "status"]
    was = pd.concat([pq.read_table(io.BytesIO(b)).to_pandas() for b in original.values()])
    now = frame(tmp_path, "faulty_grid-smoke")
    # The metric of the fault method is a seeded function of its config, so equal values only show
    # that the re-run wrote the right rows; new trial ids show they were really written again.
    assert now[cols].sort_values(cols).reset_index(drop=True).equals(was[cols].sort_values(cols).reset_index(drop=True))
    damaged = {n[len("part-"):-len(".parquet")] for n in (truncated, garbage)}
    old_ids = set(was.loc[was["trial_key"].isin(damaged), "trial_id"])
    new_ids = set(now.loc[now["trial_key"].isin(damaged), "trial_id"])
    assert new_ids and not new_ids & old_ids, (old_ids, new_ids)
    corrupt = tmp_path / "faulty_grid-smoke" / "corrupt"
    kept = sorted(corrupt.glob("*.parquet.*"))
    # Each damaged part's arrays went to corrupt/ with it, and the re-run wrote fresh ones.
    assert sorted(p.name.split(".")[0] for p in corrupt.glob("*.npz.*")) == sorted(n.split(".")[0] for n in (truncated, garbage))
    for name in (truncated, garbage):
        key = name[len("part-"):-len(".parquet")]
        assert analysis.artefacts(tmp_path / "faulty_grid-smoke", key)["loss_history"].shape == (3,)
    assert [p.read_bytes() for p in kept] in ([original[truncated][:100], b"not parquet at all"],
                                              [b"not parquet at all", original[truncated][:100]])

    # Tune's own state half-written (a driver killed while Tune saves) and one part lost: the state
    # is set aside and only the trial without a part trains again.
    tune_dir = tmp_path / "faulty_grid-smoke" / "tune"
    for path in [tune_dir / "tuner.pkl", *tune_dir.glob("experiment_state-*.json")]:
        path.write_bytes(path.read_bytes()[:50])
    lost = store_dir / sorted(original)[-1]
    lost.unlink()
    parts = snapshot(Path(store.results))
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot be restored" in done.stdout and len(list(tmp_path.glob("faulty_grid-smoke/tune.broken-*"))) == 1
    assert len(trainings(log)) - before == 3 and lost.exists()

    def others(snap):
        return {k: v for k, v in snap.items() if not k.startswith(lost.stem)}
    assert others(snapshot(Path(store.results))) == others(parts)


def test_a_second_driver_on_the_same_run_is_refused_until_the_first_dies(tmp_path, env):
    args = ("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path))
    store = ResultStore(str(tmp_path), "faulty_grid-smoke")
    store.check()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tuner.store import ResultStore\n"
        f"with ResultStore({str(tmp_path)!r}, 'faulty_grid-smoke').lock():\n"
        "    print('held', flush=True); time.sleep(600)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path)
        refused = cli(*args, env=env)
        assert refused.returncode == 2
        err = refused.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"is in use by another tuner.run (pid {holder.pid} on " in err, err
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock
        holder.wait()
    with store.lock():
        pass


# ---------------------------------------------------------------------------------------------
# 6. Load: 500 tiny trials


def test_five_hundred_tiny_trials_complete_with_bounded_driver_memory_and_files(tmp_path, env):
    done = cli("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--seeds", "250",
               "--cpus-per-trial", "0.5", "--set", "epochs=1", env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    df = frame(tmp_path, "faulty_grid-smoke")
    assert len(df) == 1000 and set(df["status"]) == {"ok"}
    assert df["trial_key"].nunique() == 500
    rss = float(done.stdout.split("driver peak RSS: ")[1].split()[0])
    written = [p for p in (tmp_path / "faulty_grid-smoke").rglob("*") if p.is_file()]
    parts = len(list((tmp_path / "faulty_grid-smoke" / "results").glob("part-*.parquet")))
    print(f"\n500 trials: driver peak RSS {rss:.0f} MiB, {len(written)} files ({parts} part files)")
    assert parts == 500
    assert rss < 2048, rss  # measured ~1 GiB; Tune's per-trial state must not balloon
    # A part and its artefacts per trial, plus Tune's run-level state: no per-trial Tune logs.
    assert not [p for p in written if p.name in ("result.json", "progress.csv") or p.name.startswith("events.out")]
    assert len(written) < 500 * 2 + 20, len(written)


# ---------------------------------------------------------------------------------------------
# 6. A restored run that fails mid-way, and a driver killed while a trial trains


def test_a_restored_run_that_fails_mid_way_falls_back_to_a_fresh_run(tmp_path, env):
    log = tmp_path / "log"
    log.mkdir()
    args = ("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--seeds", "2", "--set", f"log_dir={log}")
    assert cli(*args, env=env).returncode == 0
    store = ResultStore(str(tmp_path), "faulty_grid-smoke")
    parts = {Path(p).name: Path(p).read_bytes() for p in store.parts()}
    missing = sorted(parts)[0]
    Path(store.results, missing).unlink()  # one trial's result lost: the resumed run has work to do
    before = len(trainings(log))
    done = cli(*args, env={**env, "FAULTY_RESTORED_FIT_FAILS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and "resumed Tune run failed (RuntimeError: injected" in done.stdout
    assert len(trainings(log)) - before == 1  # only the trial without a part trained again
    now = {Path(p).name: Path(p).read_bytes() for p in store.parts()}
    assert set(now) == set(parts)
    assert all(now[n] == b for n, b in parts.items() if n != missing)  # finished parts untouched


def test_a_killed_drivers_running_trial_resumes_from_its_checkpoint(tmp_path):
    log, args = slow_checkpointed(tmp_path)
    proc = start(*args, env=PLUGIN_ENV)
    try:
        tune_dir = tmp_path / "faulty_grid-smoke" / "tune"
        wait_for(lambda: any(tune_dir.glob("*/checkpoint_000001")), what="a trial's second checkpoint")
        running = trainings(log)[-1]
        time.sleep(1.0)  # Tune's own state is saved every --checkpoint-seconds too; let one save land
    finally:
        kill_group(proc)  # the driver, its local Ray and the trial's worker
    done = cli(*args, env=PLUGIN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [t for t in trainings(log) if (t["seed"], t["level"]) == (running["seed"], running["level"])]
    assert len(runs) == 2 and int(runs[0]["start"]) == 0 and int(runs[1]["start"]) > 0, runs
    df = frame(tmp_path, "faulty_grid-smoke")
    assert set(df["status"]) == {"ok"} and set(df["epochs_done"]) == {16} and len(df) == 4


def test_a_local_backend_worker_exits_when_its_driver_is_killed(tmp_path):
    """`--backend local` with the driver alone killed (SIGTERM, as `kill PID` or a scheduler sends
    it): its pool worker exits too, rather than train on as an orphan beside the next driver of
    the same run folder."""
    import psutil

    proc = start("grid_ebm", "--preset", "smoke", "--backend", "local", "--storage", str(tmp_path),
                 "--set", "steps=1000000")  # a training that outlives the test
    try:
        driver, workers = psutil.Process(proc.pid), []

        def a_worker_trains():
            try:
                workers[:] = [c for c in driver.children() if "spawn_main" in " ".join(c.cmdline())]
                return workers and all(w.cpu_times().user > 1.0 for w in workers)
            except psutil.NoSuchProcess:  # a child that ended between the listing and the look
                return False
        wait_for(a_worker_trains, 120, "a pool worker past its start-up")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, [(w.pid, w.status()) for w in alive]
    finally:
        kill_group(proc)

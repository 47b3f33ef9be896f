"""`--storage s3://...` against a real S3-compatible server (moto's, started here on 127.0.0.1).

The same code paths a cluster uses with a bucket: pyarrow's S3 filesystem for the parts, the
artefacts and the lock object, Ray Tune's own state in the bucket, analysis.load reading a URI.
The server is found through AWS_ENDPOINT_URL, which pyarrow and Ray both honour, exactly as a
user points them at MinIO or Ceph. The server is stopped by the PID this module started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from trainables.checks import ConfigError
from tuner.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
BUCKET = "noisetune-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on a free loopback port with one empty bucket; the env that reaches it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}",
                          scheme="http").create_dir(BUCKET)
        yield {**os.environ, **env}
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _paths(fs, prefix: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return [info.path for info in infos if info.type == pafs.FileType.File]


def _objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under prefix with its bytes; call it only while no driver is writing there."""
    out = {}
    for path in _paths(fs, prefix):
        with fs.open_input_stream(path) as f:
            out[path] = f.read()
    return out


def _is_part(path: str) -> bool:
    """A committed part file: a write's `.tmp-*` object is not a part, even if left by a kill."""
    return path.rsplit("/", 1)[-1].startswith("part-") and path.endswith(".parquet")


def _parts(fs, prefix: str) -> dict[str, bytes]:
    return {p: b for p, b in _objects(fs, prefix).items() if _is_part(p)}


def cli(*args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The lock object


def test_the_lock_object_names_its_holder_refuses_a_second_driver_and_is_deleted_at_exit(s3_env):
    store = ResultStore(f"s3://{BUCKET}/lock-test", "run")
    lock = f"{store.root}/run.lock"
    with store.lock():
        with store.fs.open_input_stream(lock) as f:
            holder = json.loads(f.read())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ConfigError, match=rf"in use by another tuner.run \(pid {os.getpid()} on "):
            with ResultStore(f"s3://{BUCKET}/lock-test", "run").lock():
                pass
    assert store.fs.get_file_info(lock).type == pafs.FileType.NotFound


def test_a_lock_left_by_a_dead_driver_on_this_host_is_taken_over_but_not_one_from_another_host(s3_env):
    store = ResultStore(f"s3://{BUCKET}/stale-test", "run")
    lock = f"{store.root}/run.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    store._write_atomic(lock, json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "x"}).encode())
    with store.lock():
        with store.fs.open_input_stream(lock) as f:
            assert json.loads(f.read())["pid"] == os.getpid()
    other = {"host": socket.gethostname() + "-elsewhere", "pid": dead.pid, "since": "2026-12-01 10:00:00"}
    store._write_atomic(lock, json.dumps(other).encode())
    with pytest.raises(ConfigError, match=r"-elsewhere since 2026-12-01 10:00:00.*delete the lock if that driver is gone"):
        with store.lock():
            pass
    with store.fs.open_input_stream(lock) as f:  # a refused driver leaves the holder's lock alone
        assert json.loads(f.read()) == other


# ---------------------------------------------------------------------------------------------
# End to end


def test_load_and_compaction_on_a_bucket_and_a_new_part_makes_it_stale(s3_env):
    """analysis.load on s3:// (parts read concurrently, one GET each), tuner.compact writing the
    compacted dataset into the bucket, the loader reading it while fresh and the parts after a
    later trial's part."""
    from analysis.load import load
    from tuner.compact import compact, store_of

    storage = f"s3://{BUCKET}/compaction"
    store = ResultStore(storage, "run")
    store.check()
    for i in range(3):
        store.write_part(f"k{i}", [{"trial_key": f"k{i}", "seed": i, "accuracy": 0.5 + i, "status": "ok"}] * 2)
    parts = _parts(store.fs, store.results)
    df = load(f"{storage}/run")
    assert len(df) == 6 and df.attrs["compacted"] == []
    line = compact(store_of(f"{storage}/run/results"))
    assert line.startswith("compacted 3 parts (6 rows) into ")
    fresh = load(f"{storage}/run")
    assert fresh.attrs["compacted"] and fresh.attrs["compacted"][0].startswith(f"{BUCKET}/compaction/run/compacted/rows-")
    assert fresh.equals(df) and _parts(store.fs, store.results) == parts  # the parts stay, untouched
    store.write_part("k9", [{"trial_key": "k9", "seed": 9, "accuracy": 0.1, "status": "ok"}])
    later = load(f"{storage}/run", columns=["seed"], filters=[("seed", ">", 1)])
    assert later.attrs["compacted"] == [] and later["seed"].tolist() == [2, 2, 9]


@pytest.mark.slow
def test_a_sweep_into_a_bucket_writes_parts_tune_state_and_resumes_without_rerunning(s3_env):
    storage = f"s3://{BUCKET}/sweeps"
    args = ("grid_ebm", "--preset", "smoke", "--storage", storage)
    first = cli(*args, env=s3_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"results: {storage}/grid_ebm-smoke/results" in first.stdout
    store = ResultStore(storage, "grid_ebm-smoke")
    parts = _objects(store.fs, store.results)
    assert len([p for p in parts if p.endswith(".parquet")]) == 2
    assert any("/tune/" in p for p in _objects(store.fs, store.root)), "Tune's state is not in the bucket"
    assert store.fs.get_file_info(f"{store.root}/run.lock").type == pafs.FileType.NotFound

    from analysis.load import load  # the analysis package reads the URI directly
    df = load(f"{storage}/grid_ebm-smoke/results")
    assert len(df) == 8 and set(df["status"]) == {"ok"} and df["trial_key"].nunique() == 2

    again = cli(*args, env=s3_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _objects(store.fs, store.results) == parts, "finished parts were rewritten on resume"


@pytest.mark.slow
def test_a_driver_killed_mid_run_on_a_bucket_keeps_finished_parts_and_the_rerun_completes(s3_env, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    env = {**s3_env, "NOISETUNE_PLUGINS": "tests.faulty"}
    storage = f"s3://{BUCKET}/killed"
    args = ("faulty_grid", "--preset", "smoke", "--storage", storage, "--max-concurrent", "1",
            "--set", f"log_dir={log}", "--set", "epochs=8", "--set", "epoch_seconds=0.25")
    store = ResultStore(storage, "faulty_grid-smoke")
    proc = subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Paths only: a temporary object listed here may be renamed away before it could be read.
        while not any(_is_part(p) for p in _paths(store.fs, store.results)):
            assert proc.poll() is None and time.monotonic() < deadline, "no part was written"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, 9)  # the driver, its local Ray and the running trial
        proc.wait()
    before = _parts(store.fs, store.results)
    assert len(before) == 1  # of the sweep's two trials (two levels, one seed)
    with store.fs.open_input_stream(f"{store.root}/run.lock") as f:  # SIGKILL ran no clean-up
        assert json.loads(f.read())["pid"] == proc.pid

    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking over" in done.stdout
    after = _parts(store.fs, store.results)
    assert len(after) == 2 and all(after[p] == b for p, b in before.items()), "a finished part was rewritten"
    from analysis.load import load
    df = load(f"{storage}/faulty_grid-smoke/results")
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    finished = pq.read_table(pa.BufferReader(next(iter(before.values())))).to_pandas()
    (level,) = set(finished["level"])
    trained = [line for line in (log / "trainings.log").read_text().splitlines() if f"level={level} " in line]
    assert len(trained) == 1, f"the trial that finished before the kill was trained again: {trained}"
    assert store.fs.get_file_info(f"{store.root}/run.lock").type == pafs.FileType.NotFound

"""End-to-end: a real two-node local Ray cluster (token auth ON) runs a submitted job.

The test starts a head node and a second worker node on 127.0.0.1 with `ray start`,
each in its own temporary folder and on free ports, with token authentication
enabled (``RAY_AUTH_MODE=token`` plus a fresh ``RAY_AUTH_TOKEN`` in the environment of
every process: nothing is written to ``~/.ray/auth_token``). It submits
``python -m tuner.run grid_ebm --preset smoke`` with ``ray job submit``, checks the
Parquet rows the job wrote, the job's log (progress lines, no Tune tables), the dashboard's
jobs endpoint (with the job's metadata) and the NoiseTune counters scraped from both nodes'
metrics export ports against the Parquet record, then stops exactly the
processes this cluster started (never ``ray stop``, which would kill every Ray
process of the user).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
HOST = "127.0.0.1"
MARKER_ENV = "NOISETUNE_TEST_CLUSTER"
JOB_TIMEOUT_S = 300


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on loopback right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cluster_env(tmp: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` is the venv's python
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        **{MARKER_ENV: str(tmp)},
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(cmd)}  -> rc {proc.returncode}")
    return proc


def _get(url: str, token: str | None, timeout: float = 10.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


METADATA = {"experiment": "grid_ebm", "preset": "smoke", "run": "grid_ebm-smoke"}
PROM_LINE = re.compile(r'^ray_noisetune_(\w+)\{([^}]*)\} ([0-9.eE+-]+)$')


def _noisetune_totals(ports: list[int]) -> dict[tuple[str, str], float]:
    """Sum of each NoiseTune series over both nodes' Prometheus text, keyed (name, status tag)."""
    totals: dict[tuple[str, str], float] = {}
    for port in ports:
        code, text = _get(f"http://{HOST}:{port}/metrics", None)
        if code != 200:
            continue
        for line in text.splitlines():
            m = PROM_LINE.match(line)
            if m and 'run="grid_ebm-smoke"' in m.group(2):
                status = re.search(r'status="(\w+)"', m.group(2))
                key = (m.group(1), status.group(1) if status else "")
                totals[key] = totals.get(key, 0.0) + float(m.group(3))
    return totals


def _wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as e:  # connection refused, bad JSON while starting
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _cluster_processes(tmp: Path) -> dict[int, psutil.Process]:
    """Processes of this cluster: command line names our temp dir, or the environment
    carries our marker, plus all their descendants (workers rename themselves to
    ``ray::...`` and the job driver is a grandchild of the raylet)."""
    mark = str(tmp)
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == me:
            continue
        try:
            hit = mark in " ".join(p.info["cmdline"] or [])
            if not hit:
                hit = p.environ().get(MARKER_ENV) == mark
        except (psutil.Error, OSError):
            continue
        if hit:
            found[p.pid] = p
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                if c.pid != me:
                    found.setdefault(c.pid, c)
        except psutil.Error:
            pass
    return found


def _stop_cluster(tmp: Path) -> list[int]:
    """SIGTERM then SIGKILL exactly this cluster's processes; returns the pids stopped."""
    stopped: list[int] = []
    for _ in range(5):  # a dying raylet may still have spawned a worker: sweep again
        procs = list(_cluster_processes(tmp).values())
        if not procs:
            break
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        # Grace period, then SIGKILL (raylet and gcs_server may linger on SIGTERM).
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        stopped += [p.pid for p in procs]
    return stopped


@pytest.mark.slow
def test_job_submission_on_two_node_cluster_with_token_auth():
    t0 = time.monotonic()
    # Short path: Ray puts Unix sockets under the temp dir (107-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="ntray-", dir="/tmp"))
    store = tmp / "store"
    token = secrets.token_hex(32)
    env = _cluster_env(tmp, token)
    gcs_port, dash_port, client_port, head_agent, worker_agent, head_metrics, worker_metrics = _free_ports(7)
    dash = f"http://{HOST}:{dash_port}"
    submission_id = f"noisetune-smoke-{secrets.token_hex(4)}"
    try:
        head = _run([RAY, "start", "--head",
                     "--node-ip-address", HOST,
                     "--port", str(gcs_port),
                     "--dashboard-host", HOST,
                     "--dashboard-port", str(dash_port),
                     "--include-dashboard", "true",
                     "--ray-client-server-port", str(client_port),
                     "--dashboard-agent-listen-port", str(head_agent),
                     "--metrics-export-port", str(head_metrics),
                     "--num-cpus", "1",  # one trial slot per node: the two smoke trials run one on each
                     "--temp-dir", str(tmp / "ray"),
                     "--disable-usage-stats"], env, timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        # Started with RAY_AUTH_MODE=token, so no "authentication is disabled" warning.
        assert "Token authentication is disabled" not in head.stdout + head.stderr

        worker = _run([RAY, "start",
                       "--address", f"{HOST}:{gcs_port}",
                       "--node-ip-address", HOST,
                       "--dashboard-agent-listen-port", str(worker_agent),
                       "--metrics-export-port", str(worker_metrics),
                       "--num-cpus", "1",
                       # Own temp dir: otherwise both nodes share one session folder,
                       # and when the worker node's runtime-env agent garbage-collects
                       # the job's working_dir package it deletes the driver's cwd.
                       "--temp-dir", str(tmp / "ray-w"),
                       "--disable-usage-stats"], env, timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        t_up = time.monotonic()

        # Token auth is really on: the dashboard refuses a request without the token...
        _wait_for("the dashboard", lambda: _get(f"{dash}/api/jobs/", token)[0] == 200, 60)
        status, body = _get(f"{dash}/api/jobs/", None)
        assert status == 401, (status, body)
        assert _get(f"{dash}/api/jobs/", "0" * 64)[0] == 403
        # ...and both nodes are alive.
        alive: list[dict] = []

        def two_alive():
            code, text = _get(f"{dash}/api/v0/nodes?detail=false&limit=100", token)
            if code != 200:
                return False
            alive[:] = [n for n in json.loads(text)["data"]["result"]["result"] if n.get("state") == "ALIVE"]
            return len(alive) == 2
        _wait_for("2 alive nodes", two_alive, 60)
        worker_node = next(n["node_id"] for n in alive if not n.get("is_head_node"))

        # `ray job submit` reads RAY_AUTH_MODE / RAY_AUTH_TOKEN from its environment and
        # sends "Authorization: Bearer <token>"; it blocks until the job ends.
        excludes = [".venv", ".git", "results", "data", "docker", ".pytest_cache",
                    "__pycache__", "*.egg-info", ".whl", ".gl"]
        entrypoint = ["python", "-m", "tuner.run", "grid_ebm", "--preset", "smoke",
                      "--storage", str(store)]
        sub = _run([RAY, "job", "submit",
                    "--address", dash,
                    "--submission-id", submission_id,
                    "--metadata-json", json.dumps(METADATA),
                    "--working-dir", str(REPO),
                    "--runtime-env-json", json.dumps({"excludes": excludes}),
                    "--", *entrypoint], env, timeout=JOB_TIMEOUT_S)
        out = sub.stdout + sub.stderr
        t_job = time.monotonic()
        assert sub.returncode == 0, out[-6000:]
        assert "succeeded" in out.lower(), out[-6000:]
        assert "results:" in out, out[-6000:]
        # The job's log is the sweep's progress lines (Tune's tables are opt-in), results folder first.
        assert f"grid_ebm --preset smoke: run folder {store}/grid_ebm-smoke" in out, out[-6000:]
        assert "[grid_ebm-smoke] 2/2 trials done, 0 running, 0 pending, 0 failed" in out, out[-6000:]
        assert "Trial Status" not in out and "Configuration for experiment" not in out, out[-6000:]

        # The Parquet rows the job wrote.
        parts = sorted((store / "grid_ebm-smoke" / "results").glob("part-*.parquet"))
        assert len(parts) == 2, parts
        table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
        rows = table.to_pylist()
        assert len(rows) == 8, rows
        for col in ("experiment", "preset", "alpha_train", "alpha_test", "n",
                    "accuracy", "seed", "status"):
            assert col in table.column_names, table.column_names
        assert {r["status"] for r in rows} == {"ok"}
        assert {r["experiment"] for r in rows} == {"grid_ebm"}
        assert {r["preset"] for r in rows} == {"smoke"}
        assert sorted({r["n"] for r in rows}) == [1, 4]
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
        # A trial really ran on the worker node (rows name the Ray node that trained them).
        assert {r["node_id"] for r in rows} == {n["node_id"] for n in alive}, (rows, alive)
        assert worker_node in {r["node_id"] for r in rows}

        # The dashboard's jobs endpoint lists the job as SUCCEEDED.
        code, text = _get(f"{dash}/api/jobs/", token)
        assert code == 200, (code, text)
        jobs = [j for j in json.loads(text) if j.get("submission_id") == submission_id]
        assert len(jobs) == 1, text[:2000]
        assert jobs[0]["status"] == "SUCCEEDED", jobs[0]
        assert jobs[0]["entrypoint"] == " ".join(entrypoint), jobs[0]["entrypoint"]
        assert METADATA.items() <= jobs[0]["metadata"].items(), jobs[0]["metadata"]  # the Jobs page says what it is

        # NoiseTune's metrics, exported by the nodes' metrics agents, agree with the Parquet record.
        # On a timeout the message shows the last partial totals: a count recorded just before a
        # trial's worker exits reaches the agent only through Ray's exit flush (bounded at 500 ms,
        # ray-project/ray#66180), which a loaded machine can miss.
        seen = {}
        def scraped():
            seen["last"] = totals = _noisetune_totals([head_metrics, worker_metrics])
            done = totals.get(("trials_finished_total", "ok"), 0)
            return totals if done == 2 and totals.get(("rows_written_total", ""), 0) == len(rows) else None
        try:
            totals = _wait_for("the NoiseTune counters", scraped, 90, every=3)
        except AssertionError as e:
            raise AssertionError(f"{e}; partial totals {seen.get('last')}") from None
        assert totals[("epochs_total", "")] >= 2  # every trial trained at least one epoch
        assert totals.get(("trials_finished_total", "error"), 0) == 0
        print(f"cluster up {t_up - t0:.1f} s, job {t_job - t_up:.1f} s")
    finally:
        t_stop = time.monotonic()
        stopped = _stop_cluster(tmp)
        left = _cluster_processes(tmp)
        print(f"stopped {len(stopped)} processes in {time.monotonic() - t_stop:.1f} s; "
              f"total {time.monotonic() - t0:.1f} s")
        shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"cluster processes still alive: {sorted(left)}"

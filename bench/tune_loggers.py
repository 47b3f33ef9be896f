"""What Tune's default per-trial loggers (result.json, progress.csv, TensorBoard) cost a sweep of
many short trials: the same `tuner.run` of 500 tiny trials with them on and off.

    python bench/tune_loggers.py --out bench/results/tune_loggers_cpu.txt

Runs tests/faulty.py's grid (trials that do almost nothing, so Tune's own per-trial work is what
is timed) on one local cluster started for the bench; the runs alternate, --reps of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import cpu_name, running_cluster, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def one_run(env: dict, loggers: str, seeds: int) -> tuple[float, float, int]:
    """(wall s, driver CPU s, files written) of one sweep."""
    storage = tempfile.mkdtemp()
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner.run", "faulty_grid", "--preset", "smoke", "--storage", storage,
                        "--seeds", str(seeds), "--cpus-per-trial", "0.5", "--set", "epochs=1"],
                       cwd=REPO, env=env | {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": loggers}, check=True,
                       capture_output=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        files = sum(1 for p in Path(storage).rglob("*") if p.is_file())
        return wall, cpu, files
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seeds", type=int, default=250, help="trials = 2 levels x seeds")
    p.add_argument("--out")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0",
                                                                         "NOISETUNE_PLUGINS": "tests.faulty"}
    lines = [f"machine: {cpu_name()}, {os.cpu_count()} cores; {2 * args.seeds} tiny trials per run "
             f"(tests/faulty.py), one shared local cluster; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"{'Tune loggers':18s} {'wall s':>8s} {'driver CPU s':>13s} {'files':>7s}"]
    with running_cluster(env) as address:
        env |= {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
        for _ in range(args.reps):
            for loggers, label in (("0", "on (Tune default)"), ("1", "off (tuner.run)")):
                wall, cpu, files = one_run(env, loggers, args.seeds)
                lines.append(f"{label:18s} {wall:8.1f} {cpu:13.1f} {files:7d}")
                print(lines[-1], flush=True)
    save(lines, args.out)


if __name__ == "__main__":
    main()

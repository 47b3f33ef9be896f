"""What a `tuner.run` process pays before and after its trials: imports, Ray start or connect, exit.

    python bench/startup.py --out bench/results/startup_cpu.txt

Each figure is the wall time of fresh processes (median of --reps). The test suite's shared
cluster (tests/conftest.py), the lazy torchvision imports (trainables/models.py) and reading digits
without sklearn (trainables/digits_split.py) rest on these.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time

HOLDER = """
import sys, ray
ray.init(include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@contextlib.contextmanager
def running_cluster(env: dict):
    """The address of a local Ray cluster kept up by a holder process for the with-block."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, start_new_session=True)
    try:
        yield holder.stdout.readline().strip()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def save(lines: list[str], out: str | None) -> None:
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def wall(code: str, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def median(code: str, reps: int, env=None) -> float:
    return statistics.median(wall(code, env) for _ in range(reps))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    lines = [f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}; median of {args.reps}"]
    for label, code in (("python -c pass", "pass"), ("import torch", "import torch"),
                        ("import torch, torchvision", "import torch, torchvision"),
                        ("import tuner.run", "import tuner.run"),
                        ("import tuner.trial (a worker)", "import tuner.trial"),
                        ("+ load digits (embedded set)",
                         "import tuner.trial; from trainables.data import *; load_dataset(DataConfig())"),
                        ("+ import sklearn.model_selection",
                         "import tuner.trial, sklearn.datasets, sklearn.model_selection")):
        lines.append(f"{label:32s} {median(code, args.reps, env):6.2f} s")
    lines.append(f"{'ray.init() local start + stop':32s} "
                 f"{median('import ray; ray.init(log_to_driver=False); ray.shutdown()', args.reps, env):6.2f} s")
    with running_cluster(env) as address:
        connect = f"import ray; ray.init(address={address!r}, log_to_driver=False); ray.shutdown()"
        lines.append(f"{'ray.init(address) connect':32s} "
                     f"{median(connect, args.reps, env | {'RAY_AUTH_MODE': 'token'}):6.2f} s")
    save(lines, args.out)


if __name__ == "__main__":
    main()

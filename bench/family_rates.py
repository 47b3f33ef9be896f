"""Training (and EBM sampling) rates of every family on this machine, for --dry-run's projection.

    nice -n 10 python bench/family_rates.py --out bench/results/family_rates_cpu_avx2.txt --table trainables/rates.csv
    python bench/family_rates.py --copy-mnist5k bench/results/mnist5k_cost_cpu.txt --table trainables/rates.csv

For the first trial of each experiment and preset below, the family's own `Method.cost` measures
its rates now (trainables/cost.py: the family's training code on random data of the trial's
shapes, k steps against 1 step, after a warm-up; the EBM's sampling through `evaluate`), with
the committed table switched off, at the threads a trial gets (one, as `--cpus-per-trial 1`).
Each rate is printed with its key; `--table` appends them to the rate table, naming this output
file as their source. The machine's load average is printed before and after: on a shared
machine a rate is a fraction of a quiet one's. `--copy-mnist5k` measures nothing: it copies the
quick points' step times of bench/mnist5k_cost.py's output into the table, keyed as each family
looks them up.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import platform
import time

import torch

from trainables import cost
from tuner import registry

RUNS = [  # (experiment, preset): the first trial of each is measured
    ("grid_ebm", "quick"), ("grid_ebm", "paper"),
    ("vpn_table", "quick"), ("vpn_table", "paper"),
    ("ninr_compare", "quick"), ("ninr_compare", "paper"),
    ("labelnoise_sesnn", "quick"), ("labelnoise_sesnn", "paper"),
]


def keyed(name: str, point: dict, overrides: dict) -> tuple[cost.Rate, int]:
    """The rate row this trial of the quick preset looks up on this CPU (its key; the rate a
    placeholder: Method.cost runs with the table off and a fake timer, nothing is measured), and
    its steps per stage."""
    from trainables.data import planned_sizes
    exp = registry.get(name)
    cfg, ecfg, settings = registry.trial_configs(exp, "quick", point, overrides)
    real, cost.time_steps = cost.time_steps, lambda run, *a, **k: 1.0
    cost._measured.clear()
    try:
        row = registry.method_of(exp).cost(cfg, ecfg, settings, torch.device("cpu")).used[0]
    finally:
        cost.time_steps = real
        cost._measured.clear()
    n = cfg.toy_samples if getattr(cfg, "arch", "") == "linear_toy" else planned_sizes(cfg.data).train
    return row, cost.supervised_steps(cfg, n)


def from_mnist5k(path: str) -> list[cost.Rate]:
    """Rates copied from bench/mnist5k_cost.py's output (ms per optimiser step of each quick point,
    1 thread, digits at 8 px and mnist5k at 28 px). Its `steps` column counts the steps of every
    stage, the table counts steps per stage (as the `steps` field does): rate = 1000 / ms / stages.
    Points that differ only in what the rate's key leaves out (a label-noise level, a sigma) give
    one row, their median."""
    import statistics
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mnist5k_cost  # its point labels: short(point, label)
    text = open(path).read()
    machine = text.splitlines()[1].removeprefix("machine: ")
    data = {"digits@8": {"dataset": "digits", "image_size": 8}, "mnist5k@28": {"dataset": "mnist5k", "image_size": 28}}
    found: dict[tuple, list] = {}
    for section in text.split("\n## ")[1:]:
        name = section.split(":", 1)[0]
        if name not in mnist5k_cost.EXPERIMENTS:
            continue
        space = registry.get(name).space("quick")
        labels = {mnist5k_cost.short(p, space.label(p) if space.label else ""): p for p in space.train}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 16 or cells[0] not in labels:
                continue
            for (where, overrides), at in zip(data.items(), (1, 8)):
                if "diverged" in cells[at] or labels[cells[0]].get("generator") == "resnet18":
                    continue  # a diverged cut, or 8 steps of a ResNet generator: too few to time
                row, per_stage = keyed(name, labels[cells[0]], overrides)
                stages = max(1, round(int(cells[at + 2]) / per_stage))
                found.setdefault(tuple(getattr(row, k) for k in cost.KEY), []).append(
                    (1000 / float(cells[at + 1]) / stages, row, f"{name} | {cells[0]} | {where}"))
    out = []
    for points in found.values():
        rate = statistics.median(r for r, _, _ in points)
        what = points[0][2] + (f" (median of {len(points)} points)" if len(points) > 1 else "")
        out.append(dataclasses.replace(points[0][1], rate=rate, threads=1, source=path, row=what, machine=machine))
    return out


def append(table: str, rates: list[cost.Rate]) -> int:
    """Append rows to the rate table, leaving out a key (with thread count) it already has: the
    first row of a key is the one used. Returns how many were appended."""
    have = {(tuple(getattr(r, k) for k in cost.KEY), r.threads) for r in cost.load_rates(table)}
    new = [r for r in rates if (tuple(getattr(r, k) for k in cost.KEY), r.threads) not in have]
    with open(table, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for r in new:
            w.writerow([*(getattr(r, k) for k in cost.KEY), r.threads, f"{r.rate:.4g}", r.unit, r.source, r.row,
                        r.machine])
    return len(new)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="this run's output file")
    p.add_argument("--table", default=None, help="rate table to append the rows to")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--copy-mnist5k", metavar="FILE", help="measure nothing: copy bench/mnist5k_cost.py's "
                   "step times from FILE into --table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ[cost.RATES_ENV] = os.devnull  # an empty table: every rate is measured now
    if args.copy_mnist5k:
        rows = from_mnist5k(args.copy_mnist5k)
        print(f"{len(rows)} rates in {args.copy_mnist5k}; {append(args.table, rows)} appended to {args.table}")
        return
    cost.MEASURE_BUDGET_S = float("inf")
    load = os.getloadavg()
    start = time.perf_counter()
    device = torch.device("cpu")
    measured: list[tuple[str, cost.Rate]] = []
    for name, preset in RUNS:
        exp = registry.get(name)
        point = exp.space(preset).train[0]
        cfg, ecfg, settings = registry.trial_configs(exp, preset, point, {})
        estimate = registry.method_of(exp).cost(cfg, ecfg, settings, device)
        for rate in estimate.used:
            if all(rate is not old for _, old in measured):
                measured.append((f"{name} --preset {preset}", rate))
    wall = time.perf_counter() - start
    lines = [f"# family_rates, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"machine: {platform.node()} {platform.machine()}, {cost.machine_words()} ({cost.machine_key(device)}), "
             f"torch {torch.__version__}",
             f"load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load)}; after: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores: above 2, this run shared them)",
             f"command: python bench/family_rates.py --out {args.out}" + (f" --table {args.table}" if args.table else ""),
             f"work: the first trial of each experiment below, its rates measured by the family's Method.cost "
             f"(trainables/cost.py), {args.threads} thread(s); wall {wall:.0f} s", "",
             "| experiment | kind | key | rate | unit |", "|---|---|---|---|---|"]
    lines += [f"| {what} | {r.kind} | {r.key_words()} | {r.rate:.4g} | {r.unit} |" for what, r in measured]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    if args.table:
        append(args.table, [dataclasses.replace(r, source=args.out, row=f"{what} | {r.kind}",
                                                machine=f"{r.machine}, load average {load[0]:.1f}")
                            for what, r in measured])


if __name__ == "__main__":
    main()

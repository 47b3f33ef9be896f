"""Training (and EBM sampling) rates of every family on this machine, for --dry-run's projection.

    nice -n 10 python bench/family_rates.py --out bench/results/family_rates_cpu_avx2.txt --table trainables/rates.csv

For the first trial of each experiment and preset below, the family's own `Method.cost` measures
its rates now (trainables/cost.py: the family's training code on random data of the trial's
shapes, k steps against 1 step, after a warm-up; the EBM's sampling through `evaluate`), with
the committed table switched off, at the threads a trial gets (one, as `--cpus-per-trial 1`).
Each rate is printed with its key; `--table` appends them to the rate table, naming this output
file as their source. The machine's load average is printed before and after: on a shared
machine a rate is a fraction of a quiet one's.
"""

from __future__ import annotations

import argparse
import csv
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--table", default=None, help="rate table to append the measured rows to")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ[cost.RATES_ENV] = os.devnull  # an empty table: every rate is measured now
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
        with open(args.table, "a", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            for what, r in measured:
                w.writerow([r.kind, r.family, r.model, r.image_size, r.batch_size, r.precision, r.noise_sharing,
                            r.path, r.device, r.threads, f"{r.rate:.4g}", r.unit, args.out,
                            f"{what} | {r.kind}", f"{r.machine}, load average {load[0]:.1f}"])


if __name__ == "__main__":
    main()

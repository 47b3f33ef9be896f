"""Where does SE-SNN's margin bind? (issue 32, SE-SNN item 3)

Trains SE-SNN (784-128-128-10, both hidden layers stochastic) at 40% patterned label noise on
mnist5k at 28 px with the quick preset (60 epochs, cosine), one seed, over omega x b x the three
aggregations, and prints per run the share of active hinge terms (trainables.sesnn.
hinge_active_shares on the training set), the entropy of flipped and kept samples, test accuracy
and a parameter checksum: where every term is active Eq. 5, 6 and 7 are one loss and train
bit-identical networks.

    python bench/sesnn_binding_probe.py --out bench/results/sesnn_binding_probe_cpu.txt
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OMEGAS = (1e-2, 1e-1, 1.0, 10.0)
MARGINS = {"log 1": 0.0, "log 4": math.log(4), "4": 4.0, "16": 16.0}


def one(point):
    import torch
    torch.set_num_threads(1)
    from trainables import sesnn
    omega, b_name, aggregation, seed = point
    cfg, ecfg = sesnn.preset_configs("quick", {"model": "sesnn", "label_noise": 0.4, "omega": omega,
                                               "margin": MARGINS[b_name], "aggregation": aggregation, "seed": seed})
    data = sesnn.load_data(cfg)
    t0 = time.perf_counter()
    res = sesnn.train(cfg, data)
    row = sesnn.evaluate(res.model, data, [{"attack": "none", "eps": 0.0}], cfg, ecfg, seed)[0]
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in res.model.parameters())).hexdigest()
    return point, res.columns, row["accuracy"], digest[:10], time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    points = [(o, b, a, args.seed) for o, b in itertools.product(OMEGAS, MARGINS) for a in ("sample", "neuron", "both")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(one, points))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"# sesnn_binding_probe: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"machine: {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores; 2 processes, 1 torch thread each",
             "SE-SNN 784-128-128-10 (both hidden stochastic), 40% patterned label noise, mnist5k@28, quick preset "
             f"(60 epochs, batch 64, Adam 1e-3, cosine), seed {args.seed}",
             "active: share of hinge terms (b - mean log sigma)^+ > 0 on the training set (means passed on), "
             "pooled over both layers, for Eq. 5 (neuron) / 6 (sample) / 7 (both) at the run's b; "
             "log sigma: the last stochastic layer's per-sample mean, flipped vs kept training samples", "",
             "| omega | b | trained with | active Eq.5 | active Eq.6 | active Eq.7 | log sigma flipped | kept | "
             "flipped - kept | test acc % | params sha256 | s |", "|" + "---|" * 12]
    for (omega, b, agg, _), c, acc, digest, secs in results:
        lines.append(f"| {omega:g} | {b} | {agg} | {c['hinge_active_neuron']:.3f} | {c['hinge_active_sample']:.3f} | "
                     f"{c['hinge_active_both']:.3f} | {c['log_sigma_flipped']:.3f} | {c['log_sigma_kept']:.3f} | "
                     f"{c['log_sigma_flipped'] - c['log_sigma_kept']:+.3f} | {100 * acc:.2f} | {digest} | {secs:.0f} |")
    lines += ["", "identical networks (same checksum) across aggregations at one (omega, b):"]
    for omega, b in itertools.product(OMEGAS, MARGINS):
        group = {agg: d for (o, bb, agg, _), _c, _a, d, _s in results if o == omega and bb == b}
        same = len(set(group.values())) == 1
        lines.append(f"- omega {omega:g}, b {b}: {'all three identical' if same else 'differ: ' + ', '.join(f'{k} {v}' for k, v in group.items())}")
    lines.append(f"\ntotal wall {time.perf_counter() - t0:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""CW-L2 on noise_bench's stochastic arms with fresh or fixed draws (issue 36: one attack for every arm).

The committed quick report attacked SE-SNN and VIB with the same draws on every call of ART's
CW-L2 (`cw_fixed_draws` true) but activation noise and VPN with fresh draws, because their
families could not share one draw over a batch. They can now (activation noise's hooks and VPN's
standard normals take `shared`), and `BenchEvalConfig.cw_draws` picks fixed (default) or fresh.
This bench trains each stochastic arm at its default setting on the quick preset (digits, 8 px,
the MLP, clean labels) per seed and runs the quick CW-L2 setting (100 images, 5 binary-search
steps, 10 draws) both ways on the same trained model: success rate, mean L2 of the successful
perturbations, accuracy on the attacked images, seconds. Each (arm, seed) runs in its own
process, one torch thread each.

    python bench/noise_bench_cw_draws.py --out bench/results/noise_bench_cw_draws_cpu.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(arm: str, seed: int) -> list[dict]:
    import torch

    from trainables import noise_bench as nb
    from trainables.data import load_dataset
    torch.set_num_threads(1)
    cfg, ecfg = nb.preset_configs("quick", {"arm": arm, "seed": seed})
    data = load_dataset(cfg.data)
    t0 = time.perf_counter()
    res = nb.train(cfg, data)
    trained = time.perf_counter() - t0
    out = []
    for draws in ("fresh", "fixed"):
        _, e = nb.preset_configs("quick", {"arm": arm, "seed": seed, "cw_draws": draws})
        t0 = time.perf_counter()
        row = nb.evaluate(res.model, data, [{"shift": "cw_l2", "strength": 0.0}], cfg, e, seed)[0]
        out.append({"arm": arm, "seed": seed, "cw_draws": draws, "fixed": row["cw_fixed_draws"],
                    "success": row["attack_success_rate"], "mean_l2": row["mean_l2"],
                    "accuracy": row["accuracy"], "seconds": time.perf_counter() - t0, "train_seconds": trained})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="activation_noise,vpn,sesnn,vib")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from bench.report import Report
    log = Report("noise_bench CW-L2 with fresh and fixed draws", f"{args.workers} processes, 1 thread each")
    log(f"load average at the start (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    jobs = [(a, int(s)) for a in args.arms.split(",") for s in args.seeds.split(",")]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(one, *zip(*jobs)) for r in part]
    log("quick preset: digits 8 px, MLP, clean labels, each arm at its default; CW-L2 on 100 test images, "
        "5 binary-search steps, 10 draws")
    log("")
    log("| arm | seed | draws | success rate | mean L2 | accuracy under CW | CW seconds |")
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['arm']} | {r['seed']} | {r['cw_draws']}{'' if r['fixed'] == (r['cw_draws'] == 'fixed') else ' (ran fresh)'}"
            f" | {100 * r['success']:.1f}% | {r['mean_l2']:.3f} | {100 * r['accuracy']:.1f}% | {r['seconds']:.0f} |")
    log("")
    log("Mean over seeds (fixed minus fresh, paired by seed):")
    for arm in args.arms.split(","):
        mine = [r for r in rows if r["arm"] == arm]
        by = {d: [r for r in mine if r["cw_draws"] == d] for d in ("fresh", "fixed")}
        mean = lambda key, d: sum(r[key] for r in by[d]) / len(by[d])  # noqa: E731
        log(f"- {arm}: success {100 * mean('success', 'fresh'):.1f}% fresh, {100 * mean('success', 'fixed'):.1f}% "
            f"fixed; accuracy under CW {100 * mean('accuracy', 'fresh'):.1f}% fresh, "
            f"{100 * mean('accuracy', 'fixed'):.1f}% fixed")
    log(f"load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    log.save(args.out)


if __name__ == "__main__":
    main()

"""Cost growth of sampling inference: time linear in n and in test-set size, peak memory flat in n.

Each configuration runs in a fresh subprocess, so its peak RSS (getrusage, RUSAGE_SELF) is its
own. Work: a random 10-class bank at 8 px (digits' native size, kept small so the n = 1000 row
finishes in about half a minute on 2 cores), Gaussian alpha 0.5, full placement, fp32, an 8 MB
working-memory budget (EvalConfig.memory_mb; the 64 MB default is only reached at n ~ 200 here).
Linear cost shows as constant passes/s down a column.

    python bench/ebm_cost.py --out bench/results/ebm_cost_cpu.txt   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.data import Data, DataConfig  # noqa: E402
from trainables.ebm import AutoencoderBank, EBMConfig, EvalConfig, NoiseSpec, evaluate  # noqa: E402


def child(n: int, images: int, side: int, classes: int, precision: str, memory_mb: int) -> dict:
    """One evaluation in this process: seconds, and RSS before and at the peak (MiB)."""
    torch.manual_seed(0)
    bank = AutoencoderBank.initialised(classes, 1, (30, 73, 100), seed=0)
    x = torch.rand(images, 1, side, side)
    y = torch.randint(0, classes, (images,))
    data = Data("random", x, y, x, y, [str(c) for c in range(classes)])
    cfg = EBMConfig(data=DataConfig(image_size=side), device="cpu")
    spec = [NoiseSpec("gaussian", 0.5)]
    warm = Data("random", x[:8], y[:8], x[:8], y[:8], data.class_names)
    evaluate(bank, warm, spec, cfg, EvalConfig(n_checkpoints=(10,), precision=precision))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    evaluate(bank, data, spec, cfg, EvalConfig(n_checkpoints=(n,), precision=precision, memory_mb=memory_mb))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rss_before_mb": before,
            "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(n, images, args) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{n},{images}", "--side", str(args.side),
           "--classes", str(args.classes), "--precision", args.precision, "--memory-mb", str(args.memory_mb)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", default="10,100,1000")
    p.add_argument("--images", type=int, default=100, help="test images for the n sweep")
    p.add_argument("--sizes", default="100,200,400", help="test-set sizes for the size sweep")
    p.add_argument("--size-n", type=int, default=100, help="n for the size sweep")
    p.add_argument("--side", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--memory-mb", type=int, default=8, help="EvalConfig.memory_mb: small, so n = 100 fills it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.child:
        n, images = map(int, args.child.split(","))
        print(json.dumps(child(n, images, args.side, args.classes, args.precision, args.memory_mb)))
        return
    log = Report("ebm_cost", f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads")
    log(f"work: {args.classes} classes, {args.side} px, Gaussian alpha 0.5, full placement, {args.precision}, "
        f"{args.memory_mb} MB working-memory budget (EvalConfig.memory_mb); each row a fresh process")
    for title, rows in (("n sweep", [(n, args.images) for n in map(int, args.ns.split(","))]),
                        ("test-set sweep", [(args.size_n, m) for m in map(int, args.sizes.split(","))])):
        log(f"\n## {title}\n")
        log("| n | test images | passes | seconds | passes/s | time / first row's | work / first row's | "
            "RSS before eval (MiB) | peak RSS (MiB) |")
        log("|---|---|---|---|---|---|---|---|---|")
        first = None
        for n, images in rows:
            r = run_child(n, images, args)
            passes = args.classes * images * n
            first = first or (r["seconds"], passes)
            log(f"| {n} | {images} | {passes:,} | {r['seconds']:.2f} | {passes / r['seconds']:,.0f} | "
                f"{r['seconds'] / first[0]:.2f}x | {passes / first[1]:.0f}x | {r['rss_before_mb']:.0f} | "
                f"{r['rss_peak_mb']:.0f} |")
    log.save(args.out)


if __name__ == "__main__":
    main()

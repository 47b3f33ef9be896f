"""Training throughput: the fused bank (trainables.ebm.train_bank) against C separate autoencoders.

The reference is what a researcher would write: C `Autoencoder` nn.Modules, each with its own
Adam, trained one after another for the same steps on batches of its own class. The fused path is
`train_bank` end to end (one Adam step updates all C autoencoders). No training noise in either.
Unit: one image of one class through one training step (forward, backward, Adam).

    python bench/ebm_training.py --out bench/results/ebm_training_cpu.txt   # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.data import Data, DataConfig  # noqa: E402
from trainables.ebm import Autoencoder, EBMConfig, train_bank  # noqa: E402


def separate(x_by_class: torch.Tensor, steps: int, batch: int, lr=1e-3) -> None:
    """C autoencoders trained one after another, each on its own class's images."""
    for xc in x_by_class:
        ae = Autoencoder(1)
        opt = torch.optim.Adam(ae.parameters(), lr=lr)
        for s in range(steps):
            xb = xc[torch.randint(0, len(xc), (batch,))]
            loss = ((ae(xb) - xb) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def fused(data: Data, side: int, steps: int, batch: int) -> None:
    cfg = EBMConfig(data=DataConfig(image_size=side), steps=steps, batch_size=batch, device="cpu")
    train_bank(cfg, data)


def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8,16,32")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64, help="images per class per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--profile", type=int, default=1, help="1 = profile both paths at the last size")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    log = Report("ebm_training", f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads")
    log(f"work: {args.classes} classes x {args.steps} Adam steps x batch {args.batch} per class, no noise, "
        f"best of {args.reps} reps after a 2-step warm-up")
    log("\n| side | path | seconds | images/s | speed-up |")
    log("|---|---|---|---|---|")
    for side in map(int, args.sizes.split(",")):
        torch.manual_seed(0)
        per_class = 4 * args.batch
        x = torch.rand(args.classes, per_class, 1, side, side)
        y = torch.arange(args.classes).repeat_interleave(per_class)
        data = Data("random", x.flatten(0, 1), y, x[:, :1].flatten(0, 1), y[::per_class],
                    [str(c) for c in range(args.classes)])
        separate(x, 2, args.batch)
        fused(data, side, 2, args.batch)
        times = {"separate autoencoders": best_time(lambda: separate(x, args.steps, args.batch), args.reps),
                 "fused bank": best_time(lambda: fused(data, side, args.steps, args.batch), args.reps)}
        images = args.classes * args.steps * args.batch
        for name, t in times.items():
            log(f"| {side} | {name} | {t:.2f} | {images / t:,.0f} | {times['separate autoencoders'] / t:.2f}x |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        log(f"\n## Profiles at {side} px, 3 steps (torch.profiler, top operators by self CPU time)")
        for name, fn in (("separate autoencoders", lambda: separate(x, 3, args.batch)),
                         ("fused bank", lambda: fused(data, side, 3, args.batch))):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            log(f"\n### {name}\n")
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
            log("\n".join(line[:112] for line in table.splitlines()))
    log.save(args.out)


if __name__ == "__main__":
    main()

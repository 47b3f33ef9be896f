"""Seconds per training step of the three forms of the bank's training pass, on one device.

`trainables.ebm.training_forward` picks one per device and image side: im2col + bmm
(`AutoencoderBank.__call__`), per-class convolutions (`forward_per_class`) or one grouped
convolution per layer (`forward_grouped`). This times a full step of each (forward with Gaussian
training noise on every layer, backward, Adam) after a warm-up, and checks that the three give the
same loss on the device, so the choice is made by measurement on the machine at hand.

    python bench/ebm_training_paths.py --device cuda --out bench/results/ebm_training_paths_h200.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.common import device_name, resolve_device  # noqa: E402
from trainables.ebm import AutoencoderBank  # noqa: E402


def step_seconds(bank, forward, x, steps: int, sync) -> tuple[float, float]:
    """(seconds per step, the first step's loss) over `steps` steps after 3 warm-up steps."""
    opt = torch.optim.Adam(bank.parameters(), lr=1e-3)
    gen = torch.Generator(x.device).manual_seed(0)

    def noise(i, h):
        return h + 0.5 * torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)

    with torch.no_grad():
        first = float(((forward(x, None) - x) ** 2).flatten(1).mean(1).sum())
    for k in range(3 + steps):
        if k == 3:
            sync()
            start = time.perf_counter()
        loss = ((forward(x, noise) - x) ** 2).flatten(1).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - start) / steps, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="16,32")
    p.add_argument("--batches", default="64,256", help="images per class per step")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dev = resolve_device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    log = Report("ebm_training_paths", f"{device_name(dev)}, torch {torch.__version__}")
    log(f"work: {args.classes} classes, Gaussian training noise 0.5 on every layer, Adam; seconds per step "
        f"over {args.steps} steps after 3 warm-up steps; 'loss' is the first (noiseless) loss, equal across paths")
    log("\n| side | batch | path | ms per step | images/s | loss |")
    log("|---|---|---|---|---|---|")
    for side in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            x = torch.rand(args.classes, batch, side, side, 1, device=dev, generator=torch.Generator(dev).manual_seed(1))
            for name in ("bmm", "per_class", "grouped"):
                bank = AutoencoderBank.initialised(args.classes, 1, (30, 73, 100), seed=0).to(dev)
                forward = {"bmm": bank, "per_class": bank.forward_per_class, "grouped": bank.forward_grouped}[name]
                seconds, first = step_seconds(bank, forward, x, args.steps, sync)
                log(f"| {side} | {batch} | {name} | {1000 * seconds:.2f} | {args.classes * batch / seconds:,.0f} | "
                    f"{first:.6f} |")
    log.save(args.out)


if __name__ == "__main__":
    main()

"""Sampling-inference throughput: the fused bank against a plain loop, beside the matmul limit.

Unit of work: one image x class x sample forward pass of the paper's autoencoder with Gaussian
activation noise after every layer (full placement). The plain reference, written here on
purpose, is what a researcher would write: C separate `nn.Module` autoencoders, a loop over
classes and over draws, each call a batch of test images with `randn_like` noise added by a hook.
The fused path is `trainables.ebm.evaluate` end to end (noise generation, energies, running
sums, checkpoints). Both run the same number of passes on the same random images and weights.

    python bench/ebm_sampling.py                      # CPU, 16 and 32 px
    python bench/ebm_sampling.py --device cuda --sizes 32 --images 2000 --draws 100
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.common import device_name, resolve_device  # noqa: E402
from trainables.data import Data, DataConfig  # noqa: E402
from trainables.ebm import Autoencoder, AutoencoderBank, EBMConfig, EvalConfig, evaluate  # noqa: E402
from trainables.noise import NoiseSpec  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device, dtype=torch.float32, size=2048, reps=5) -> float:
    """Measured dense matrix-multiply rate: the practical arithmetic limit of this device."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_pass(side: int, channels=1, hidden=(30, 73, 100)) -> float:
    """Multiply-adds x 2 of one full autoencoder forward pass at `side` pixels."""
    widths = (channels, *hidden)
    total, s = 0, side
    for i in range(3):  # encoder: output s/2 x s/2 pixels, each Cin*16 x Cout
        s //= 2
        total += 2 * widths[i] * 16 * widths[i + 1] * s * s
    for i in range(3):  # decoder: each input pixel scatters Cin x 16 x Cout
        total += 2 * widths[3 - i] * 16 * widths[2 - i] * s * s
        s *= 2
    return total


def plain_loop(aes, x, draws: int, alpha: float) -> torch.Tensor:
    """Energies (C, N, draws) the straightforward way: for each class, for each draw, a batch."""
    def noisy(i, h):
        return h + alpha * torch.randn_like(h)

    out = torch.empty(len(aes), x.shape[0], draws, device=x.device)
    for c, ae in enumerate(aes):
        for d in range(draws):
            out[c, :, d] = ((ae(x, noisy) - x) ** 2).flatten(1).sum(1)
    return out


def timed(fn, device, reps: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="16,32")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", type=int, default=450)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--memory-mb", type=int, default=0, help="0 = EvalConfig's auto budget")
    p.add_argument("--block-images", type=int, default=32)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    torch.manual_seed(0)
    peak = matmul_gflops(device)
    log(f"# ebm_sampling, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(f"machine: {platform.node()} {platform.machine()}, {device_name(device)}, torch {torch.__version__}")
    log(f"fp32 matmul 2048^3: {peak:.0f} GFLOP/s (the practical limit)")
    log(f"work: {args.classes} classes x {args.images} images x {args.draws} draws, Gaussian alpha 0.5, full placement")
    log("\n| side | path | passes/s | GFLOP/s | % of matmul | speed-up |")
    log("|---|---|---|---|---|---|")
    for side in [int(s) for s in args.sizes.split(",")]:
        aes = [Autoencoder(1).to(device).eval() for _ in range(args.classes)]
        bank = AutoencoderBank.from_autoencoders(aes).to(device)
        x = torch.rand(args.images, 1, side, side, device=device)
        y = torch.randint(0, args.classes, (args.images,), device=device)
        data = Data("random", x, y, x, y, [str(c) for c in range(args.classes)])
        cfg = EBMConfig(data=DataConfig(image_size=side), device=str(device))
        ecfg = EvalConfig(n_checkpoints=(args.draws,), memory_mb=args.memory_mb, block_images=args.block_images)
        passes = args.classes * args.images * args.draws
        fpp = flops_per_pass(side)
        with torch.no_grad():
            t_plain = timed(lambda: plain_loop(aes, x, args.draws, 0.5), device, args.reps)
            t_fused = timed(lambda: evaluate(bank, data, [NoiseSpec("gaussian", 0.5)], cfg, ecfg), device, args.reps)
        for name, t in (("plain loop", t_plain), ("fused bank", t_fused)):
            rate = passes / t
            log(f"| {side} | {name} | {rate:,.0f} | {rate * fpp / 1e9:.1f} | {100 * rate * fpp / 1e9 / peak:.0f}% | "
                f"{t_plain / t:.2f}x |")
    log(f"\nFLOPs per pass: {flops_per_pass(16) / 1e6:.2f} M at 16 px, {flops_per_pass(32) / 1e6:.2f} M at 32 px")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

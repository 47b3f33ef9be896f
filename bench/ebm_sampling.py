"""Sampling-inference throughput: the fused bank against a plain loop, beside the matmul limit.

Unit of work: one image x class x sample forward pass of the paper's autoencoder with Gaussian
activation noise after every layer (full placement). The plain reference, written here on
purpose, is what a researcher would write: C separate `nn.Module` autoencoders, a loop over
classes and over draws, each call a batch of test images with `randn_like` noise added by a hook.
The fused path is `trainables.ebm.evaluate` end to end (noise generation, energies, running
sums, checkpoints), in fp32 and, where the hardware runs it natively (trainables.common.fast_bf16),
in bf16 (EvalConfig.precision), each with independent and with common test noise
(EvalConfig.noise_sharing: common draws 1/C of the numbers). All run the same number of passes
on the same random images and weights. Also printed: the rate at which the noise alone can be
drawn (a ceiling on any path that draws it), a profile of each fused path, and, where bf16 is
measured, the accuracy of fp32 against bf16 on digits with a briefly trained bank. The bf16
matmul peak is measured at 2048^3 only where bf16 is native (emulated, that product ran over
10 min on an AVX2 CPU), else at 256^3.

    python bench/ebm_sampling.py --out bench/results/ebm_sampling_cpu.txt   # CPU (wall times: bench/README.md)
    python bench/ebm_sampling.py --device cuda --sizes 32 --images 2000 --draws 100
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.common import device_name, fast_bf16, resolve_device  # noqa: E402
from trainables.data import Data, DataConfig  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.ebm import (Autoencoder, AutoencoderBank, EBMConfig, EvalConfig, NoiseSpec, SamplingEvaluator,  # noqa: E402
                            evaluate, train_bank)
from trainables.noise import make_generator  # noqa: E402


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


def noise_passes_per_second(side: int, classes: int, device, reps=3) -> float:
    """Image x class x sample passes/s if drawing the noise were the only work: the fused path
    draws it exactly so (EvalConfig's streams on the CPU thread pool), the plain loop serially."""
    bank = AutoencoderBank(classes).to(device)
    ev = SamplingEvaluator(bank, EBMConfig().noise_params, EvalConfig(), side)
    per_pass = sum(c * h * w for c, h, w in ev.shapes)
    z = torch.empty(4, 2**20, device=device)
    gens = [[make_generator(4 * j + s, device) for s in range(ev.ecfg.noise_streams)] for j in range(4)]
    fill = {"noise": lambda: ev._fill(z, "gaussian", gens)}
    t = timed_rounds(fill, fill, device, reps)["noise"]
    return z.numel() / t / per_pass


def profile_table(fn, rows=8) -> str:
    """Top operators by self CPU time of one call. The noise threads do not show (see the fill
    line); aten::_convolution's self time is oneDNN's transposed convolutions (layers 4-5)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return "\n".join(line[:112] for line in table.splitlines())


def bf16_accuracy(steps: int, n_max: int, log) -> None:
    """fp32 against bf16 sampling inference on real data: digits at 8 px, one trained bank."""
    cfg = EBMConfig(data=DataConfig(dataset="digits", image_size=8), alpha_train=0.5, steps=steps,
                    batch_size=64, device="cpu")
    data = load_dataset(cfg.data)
    t = time.perf_counter()
    bank = train_bank(cfg, data).model
    log(f"\n## fp32 vs bf16 accuracy: digits 8 px, {len(data.y_test)} test images, bank trained "
        f"{steps} Adam steps of 64/class at alpha 0.5 ({time.perf_counter() - t:.0f} s)\n")
    log("| alpha_test | n | fp32 acc | bf16 acc | diff (points) | fp32 energy | bf16 energy |")
    log("|---|---|---|---|---|---|---|")
    settings = [NoiseSpec("gaussian", 0.0), NoiseSpec("gaussian", 0.5), NoiseSpec("gaussian", 1.0)]
    checkpoints = tuple(n for n in (1, 10, 100, 1000) if n <= n_max)
    rows = {p: evaluate(bank, data, settings, cfg, EvalConfig(n_checkpoints=checkpoints, precision=p))
            for p in ("fp32", "bf16")}
    for a, b in zip(rows["fp32"], rows["bf16"]):
        if a["alpha_test"] == 0 and a["n"] > 1:
            continue
        log(f"| {a['alpha_test']} | {a['n']} | {100 * a['accuracy']:.2f}% | {100 * b['accuracy']:.2f}% | "
            f"{100 * (b['accuracy'] - a['accuracy']):+.2f} | {a['energy_mean']:.4f} | {b['energy_mean']:.4f} |")


def timed_rounds(paths: dict, warm: dict, device, reps: int) -> dict[str, float]:
    """Best time of each path over `reps` interleaved rounds (every path once per round, so load
    from other work on a shared machine hits all paths alike), after one warm-up call each on a
    small slice (`warm`: the same path on fewer images: first-call costs, not the measurement)."""
    for fn in warm.values():
        fn()
    sync(device)
    best = {name: float("inf") for name in paths}
    for _ in range(reps):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def fill_share(run) -> tuple[float, float]:
    """(seconds drawing the noise, seconds in all) of one call of `run`."""
    fill = [0.0]
    real_fill = SamplingEvaluator._fill

    def timed_fill(*a):
        t0 = time.perf_counter()
        real_fill(*a)
        fill[0] += time.perf_counter() - t0
    SamplingEvaluator._fill = timed_fill
    try:
        t0 = time.perf_counter()
        run()
        return fill[0], time.perf_counter() - t0
    finally:
        SamplingEvaluator._fill = real_fill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="16,32")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images", type=int, default=450)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--reps", type=int, default=2, help="interleaved rounds; each path's best is kept")
    p.add_argument("--memory-mb", type=int, default=0, help="0 = EvalConfig's auto budget")
    p.add_argument("--block-images", type=int, default=32)
    p.add_argument("--precisions", default="auto", help="auto: fp32, and bf16 where the hardware runs it natively")
    p.add_argument("--sharings", default="independent,common", help="test-noise sharing of the fused paths")
    p.add_argument("--accuracy-steps", type=int, default=300,
                   help="0 = skip the fp32 vs bf16 accuracy check (run only where bf16 is measured)")
    p.add_argument("--profile", type=int, default=1,
                   help="1 = a torch.profiler table per fused path, on a fifth of the images")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    bf16_ok, bf16_why = fast_bf16(device)
    precisions = (["fp32", "bf16"] if bf16_ok else ["fp32"]) if args.precisions == "auto" else args.precisions.split(",")
    sharings = args.sharings.split(",")
    profiles = []
    torch.manual_seed(0)
    log = Report("ebm_sampling", f"{device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_gflops(device)
    # Emulated bf16 crawls (a 2048^3 product ran over 10 min on an AVX2 CPU): measured small there.
    size16 = 2048 if bf16_ok else 256
    peak16 = matmul_gflops(device, torch.bfloat16, size16)
    log(f"matmul: fp32 2048^3 {peak:.0f} GFLOP/s (the practical limit), bf16 {size16}^3 {peak16:.1f} GFLOP/s")
    log(f"bf16: {'native' if bf16_ok else 'not native'}: {bf16_why}"
        + ("" if bf16_ok or "bf16" in precisions else "; bf16 paths and their accuracy check skipped "
           "(EvalConfig(precision='bf16') runs fp32 here)"))
    log(f"work: {args.classes} classes x {args.images} images x {args.draws} draws, Gaussian alpha 0.5, full placement, "
        f"best of {args.reps} interleaved rounds after a warm-up")
    log("\n| side | path | passes/s | GFLOP/s | % of fp32 matmul | % of bf16 matmul | speed-up |")
    log("|---|---|---|---|---|---|---|")
    for side in [int(s) for s in args.sizes.split(",")]:
        aes = [Autoencoder(1).to(device).eval() for _ in range(args.classes)]
        bank = AutoencoderBank.from_autoencoders(aes).to(device)
        x = torch.rand(args.images, 1, side, side, device=device)
        y = torch.randint(0, args.classes, (args.images,), device=device)
        few = max(1, args.images // 5)
        data = Data("random", x, y, x, y, [str(c) for c in range(args.classes)])
        small = Data("random", x, y, x[:few], y[:few], data.class_names)
        cfg = EBMConfig(data=DataConfig(image_size=side), device=str(device))
        passes = args.classes * args.images * args.draws
        fpp = flops_per_pass(side)
        paths = {"plain loop": lambda: plain_loop(aes, x, args.draws, 0.5)}
        warm = {"plain loop": lambda: plain_loop(aes, x[:few], args.draws, 0.5)}
        for prec in precisions:
            for sharing in sharings:
                ecfg = EvalConfig(n_checkpoints=(args.draws,), memory_mb=args.memory_mb,
                                  block_images=args.block_images, precision=prec, noise_sharing=sharing)
                name = f"fused bank {prec} {sharing}"
                paths[name] = functools.partial(evaluate, bank, data, [NoiseSpec("gaussian", 0.5)], cfg, ecfg)
                warm[name] = functools.partial(evaluate, bank, small, [NoiseSpec("gaussian", 0.5)], cfg, ecfg)
        with torch.no_grad():
            times = timed_rounds(paths, warm, device, args.reps)
            if args.profile and device.type == "cpu":
                for name, run in warm.items():
                    if name == "plain loop":
                        continue
                    fill, total = fill_share(run)
                    profiles.append(f"\n### {name}, {side} px, {few} images: drawing the noise (thread pool) took "
                                    f"{fill:.2f} s of {total:.2f} s ({100 * fill / total:.0f}%, timed run)\n")
                    profiles.append(profile_table(run))
        for name, t in times.items():
            rate = passes / t
            gflops = rate * fpp / 1e9
            log(f"| {side} | {name} | {rate:,.0f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
                f"{100 * gflops / peak16:.0f}% | {times['plain loop'] / t:.2f}x |")
        if device.type == "cpu":
            noise = noise_passes_per_second(side, args.classes, device)
            log(f"| {side} | noise draws alone, independent (ceiling) | {noise:,.0f} | | | | "
                f"{noise * times['plain loop'] / passes:.2f}x |")
            log(f"| {side} | noise draws alone, common (ceiling: 1/{args.classes} of the numbers) | "
                f"{noise * args.classes:,.0f} | | | | {noise * args.classes * times['plain loop'] / passes:.2f}x |")
        for prec in precisions:
            if {"independent", "common"} <= set(sharings):
                ratio = times[f"fused bank {prec} independent"] / times[f"fused bank {prec} common"]
                log(f"| {side} | common over independent, {prec} | | | | | {ratio:.2f}x |")
    log(f"\nFLOPs per pass: {flops_per_pass(16) / 1e6:.2f} M at 16 px, {flops_per_pass(32) / 1e6:.2f} M at 32 px")
    if profiles:
        log("\n## Profiles (torch.profiler, top operators by self CPU time; main thread only)")
        for s in profiles:
            log(s)
    if args.accuracy_steps and device.type == "cpu" and "bf16" in precisions:
        bf16_accuracy(args.accuracy_steps, 100, log)
    log.save(args.out)


if __name__ == "__main__":
    main()

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

`evaluate` runs on each path of `--paths` (EvalConfig.path: fused_bank, plain_loop, or auto, which
times both once per machine and shapes and caches the winner in a fresh data root here; the bench
prints what auto chose and how long its timing took). `--variants` adds the fused bank in fp32
channels-last (`channels_last`), with a 256 MB working memory (`memory_256`: more draw blocks per
call) and with image blocks of 128 (`block_images_128`: a different noise key, the same law), the
candidates of issue 35 item 3. `--compile 1` times torch.compile (inductor) on one class's fused
layer chain against the same chain eager, with its compile time (the keyed draws stay outside the
compiled graph: drawn inside, they would not be the keyed streams).

    python bench/ebm_sampling.py --out bench/results/ebm_sampling_cpu.txt   # CPU (wall times: bench/README.md)
    python bench/ebm_sampling.py --device cuda --sizes 32 --images 2000 --draws 100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.common import device_name, fast_bf16, resolve_device  # noqa: E402
from trainables.data import Data, DataConfig  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables import ebm  # noqa: E402
from trainables.ebm import (PATH_CACHE, Autoencoder, AutoencoderBank, EBMConfig, EvalConfig, NoiseSpec,  # noqa: E402
                            SamplingEvaluator, evaluate, train_bank)
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


class ChannelsLastEvaluator(SamplingEvaluator):
    """The fused bank in fp32 with channels-last (NHWC) activations and weights, as bf16 runs:
    the channels-last candidate of issue 35 item 3 (not a path of EvalConfig)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.format = torch.channels_last
        self.layers = [[(w.contiguous(memory_format=self.format), b) for w, b in layers] for layers in self.layers]


@contextlib.contextmanager
def evaluator_class(cls):
    """evaluate() building `cls` instead of SamplingEvaluator while inside."""
    real = ebm.SamplingEvaluator
    ebm.SamplingEvaluator = cls
    try:
        yield
    finally:
        ebm.SamplingEvaluator = real


def variant_runs(variant: str, bank, data, small, cfg, ecfg) -> tuple[Callable, Callable]:
    """(measured run, warm-up run) of one `--variants` entry: the fused bank, changed one way."""
    spec = [NoiseSpec("gaussian", 0.5)]
    fused = dataclasses.replace(ecfg, path="fused_bank")
    if variant == "channels_last":
        def run(d):
            with evaluator_class(ChannelsLastEvaluator):
                return evaluate(bank, d, spec, cfg, fused)
        return functools.partial(run, data), functools.partial(run, small)
    field, value = {"memory_256": ("memory_mb", 256), "block_images_128": ("block_images", 128)}[variant]
    changed = dataclasses.replace(fused, **{field: value})
    return (functools.partial(evaluate, bank, data, spec, cfg, changed),
            functools.partial(evaluate, bank, small, spec, cfg, changed))


def layer_chain(h, target, weights, zs, alpha: float):
    """One class's fused-bank layers 2-6 under full placement, as one function torch.compile can
    take: h is layer 1's activation for every (image, draw) of a call, zs the six layers' draws;
    returns each pass's energy. The same operations as SamplingEvaluator._fused_class (fp32)."""
    h = h + alpha * zs[0]
    for i in range(2, 6):
        w, b = weights[i - 1]
        h = torch.relu(F.conv2d(h, w, b, 2, 1) if i <= 3 else F.conv_transpose2d(h, w, b, 2, 1)) + alpha * zs[i - 1]
    w, b = weights[5]
    out = ebm._conv_up(h.permute(0, 2, 3, 1).unsqueeze(0), w, b)[0]  # (N, H, W, 1): the matmul + col2im form
    out = torch.sigmoid(out) + alpha * zs[5].permute(0, 2, 3, 1)
    return (out.reshape(out.shape[0], -1) - target).pow(2).sum(-1)


def compile_gain(side: int, classes: int, draws_per_call: int, log, reps: int = 5) -> None:
    """torch.compile (inductor) of layer_chain against the same chain eager and against the fused
    bank's own class loop (SamplingEvaluator._fused_class, in place), on the shapes of one
    fused-bank call (32 images x draws_per_call draws), summed over the classes. The compile
    seconds are the first call's: cold, or from inductor's on-disk cache when these shapes were
    compiled before (a later process pays that instead)."""
    torch.manual_seed(0)
    bank = AutoencoderBank.from_autoencoders([Autoencoder(1).eval() for _ in range(classes)])
    ev = SamplingEvaluator(bank, EBMConfig().noise_params, EvalConfig(), side)
    n = 32 * draws_per_call
    x = torch.rand(32, 1, side, side)
    h1 = [ev.clean(x)[c][0].repeat_interleave(draws_per_call, 0) for c in range(classes)]
    target = x.repeat_interleave(draws_per_call, 0).reshape(n, -1)
    zs = [torch.randn(n, *shape) for shape in ev.shapes]
    weights = [ev.layers[c][:5] + [ev.output_layer[c]] for c in range(classes)]
    eager = lambda: [layer_chain(h1[c], target, weights[c], zs, 0.5) for c in range(classes)]  # noqa: E731
    compiled_chain = torch.compile(layer_chain)
    compiled = lambda: [compiled_chain(h1[c], target, weights[c], zs, 0.5) for c in range(classes)]  # noqa: E731
    # The path evaluate runs (in place where it can), fed the same draws: what compiling must beat.
    clean, spec, k = ev.clean(x), NoiseSpec("gaussian", 0.5), draws_per_call // ev.ecfg.block_draws
    fused = lambda: [ev._fused_class(c, x, clean[c], lambda i: zs[i - 1], spec, k) for c in range(classes)]  # noqa: E731
    with torch.no_grad():
        t = time.perf_counter()
        first = compiled()
        compile_s = time.perf_counter() - t
        err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(first, eager()))
        best = timed_rounds({"eager": eager, "compiled": compiled, "fused": fused}, {}, torch.device("cpu"), reps)
    gain = best["fused"] - best["compiled"]
    log(f"| {side} | {n} | {compile_s:.1f} | {1e3 * best['eager']:.0f} | {1e3 * best['fused']:.0f} | "
        f"{1e3 * best['compiled']:.0f} | {best['eager'] / best['compiled']:.2f}x | {best['fused'] / best['compiled']:.2f}x | "
        f"{compile_s / gain if gain > 0 else float('inf'):,.0f} | {err:.1e} |")


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
    p.add_argument("--paths", default="fused_bank,plain_loop,auto", help="EvalConfig.path values to run evaluate on")
    p.add_argument("--variants", default="", help="fp32 fused-bank variants: channels_last, memory_256, block_images_128")
    p.add_argument("--compile", type=int, default=0, help="1 = torch.compile of the fused layer chain, per side")
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
    if hasattr(os, "getloadavg"):
        log(f"load average at the start (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    root = tempfile.mkdtemp(prefix="ebm_sampling-")  # a fresh data root: path=auto times the paths here
    chosen = []
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
        cfg = EBMConfig(data=DataConfig(image_size=side, data_root=root), device=str(device))
        passes = args.classes * args.images * args.draws
        fpp = flops_per_pass(side)
        paths = {"plain loop": lambda: plain_loop(aes, x, args.draws, 0.5)}
        warm = {"plain loop": lambda: plain_loop(aes, x[:few], args.draws, 0.5)}
        for prec in precisions:
            for sharing in sharings:
                for path in args.paths.split(","):
                    ecfg = EvalConfig(n_checkpoints=(args.draws,), memory_mb=args.memory_mb, block_images=args.block_images,
                                      precision=prec, noise_sharing=sharing, path=path)
                    name = f"{path} {prec} {sharing}"
                    paths[name] = functools.partial(evaluate, bank, data, [NoiseSpec("gaussian", 0.5)], cfg, ecfg)
                    warm[name] = functools.partial(evaluate, bank, small, [NoiseSpec("gaussian", 0.5)], cfg, ecfg)
        base = EvalConfig(n_checkpoints=(args.draws,), memory_mb=args.memory_mb, block_images=args.block_images)
        for variant in filter(None, args.variants.split(",")):
            paths[f"fused_bank fp32 {variant}"], warm[f"fused_bank fp32 {variant}"] = variant_runs(
                variant, bank, data, small, cfg, base)
        with torch.no_grad():
            times = timed_rounds(paths, warm, device, args.reps)
            if args.profile and device.type == "cpu":
                for name, run in warm.items():
                    if name == "plain loop" or "plain_loop" in name or "auto" in name:
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
            if {"independent", "common"} <= set(sharings) and "fused_bank" in args.paths:
                ratio = times[f"fused_bank {prec} independent"] / times[f"fused_bank {prec} common"]
                log(f"| {side} | common over independent, {prec} | | | | | {ratio:.2f}x |")
        cache = Path(root) / PATH_CACHE
        for key, entry in (json.loads(cache.read_text()) if cache.exists() else {}).items():
            if json.loads(key)["side"] == side:
                seconds = ", ".join(f"{k} {v:.3f} s" for k, v in entry["seconds"].items())
                chosen.append(f"{side} px, {json.loads(key)['sharing']}, image blocks of {json.loads(key)['images']}: "
                              f"auto chose {entry['path']} {entry['precision']} "
                              f"(timing took {entry['timing_seconds']:.2f} s; one call each: {seconds})")
    for line in chosen:
        log(line)
    if hasattr(os, "getloadavg"):
        log(f"load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    log(f"\nFLOPs per pass: {flops_per_pass(16) / 1e6:.2f} M at 16 px, {flops_per_pass(32) / 1e6:.2f} M at 32 px")
    if args.compile and device.type == "cpu":
        log("\n## torch.compile (inductor, CPU) of one class's fused layer chain, summed over the classes, "
            f"{args.classes} classes, best of 5 after the compiling call\n")
        log("| side | passes a call | compile s | chain eager ms | fused_bank ms | compiled ms | over eager | "
            "over fused_bank | calls to repay | max rel. diff |")
        log("|---|---|---|---|---|---|---|---|---|---|")
        for side in [int(s) for s in args.sizes.split(",")]:
            ev = SamplingEvaluator(AutoencoderBank(args.classes), EBMConfig().noise_params, EvalConfig(), side)
            compile_gain(side, args.classes, ev.draw_blocks_per_call(32) * ev.ecfg.block_draws, log)
    if profiles:
        log("\n## Profiles (torch.profiler, top operators by self CPU time; main thread only)")
        for s in profiles:
            log(s)
    if args.accuracy_steps and device.type == "cpu" and "bf16" in precisions:
        bf16_accuracy(args.accuracy_steps, 100, log)
    log.save(args.out)


if __name__ == "__main__":
    main()

"""Accuracy per second on a trained quick bank: independent against common test noise, fused and plain.

Issue 35 item 4. One bank is trained with the family's own code (`--preset quick`: digits at 8 px,
1500 Adam steps of 64 per class, or `--steps`, Gaussian alpha_train 0.5, full placement) and evaluated on the
test set (`--images` of it) at its balanced cell (alpha_test = alpha_train) at increasing n, four ways:

- fused bank (`trainables.ebm.evaluate`, fp32) with independent and with common test noise
  (EvalConfig.noise_sharing); its rows' `eval_seconds_at_n` is the clock;
- plain loop (C `nn.Module` autoencoders holding the bank's weights, a loop over draws and classes,
  `randn_like` noise; common noise: one draw per layer and draw, added to every class), tallied by
  the same `DrawTally`, its clock stopped at each checkpoint the same way.

Each fused way runs under `--seeds` evaluation seeds, the plain loop under `--plain-seeds` (the
same bank: the spread is the test noise's). The clock is CPU time of this process by default
(`--clock cpu`, one thread): on a shared machine wall time mostly measures the other jobs (at load
10 on 2 cores this process got about a tenth of a core); `--clock wall` reads perf_counter, as the
service's rows do. The fused path's clock is replaced inside `trainables.ebm` for this process only.
Printed: accuracy and seconds at each n; the accuracy-per-second table of the EBM report
(`analysis.ebm.accuracy_per_second`); and the decision measure of the issue's claim that common
random numbers need fewer draws for the same decision. Per test image, its decision point is the
first checkpoint n from which its argmin class stays what it is at the largest n; its cost is the
seconds up to that n divided by the images (each image's share of the evaluation clock). "Seconds
per decided image" is the mean over images; independent over common is the speed-up the issue
aims at (>= 2x), with a 95% interval from a paired bootstrap over the images (same images, both
arms) per seed. Decisions that would still change past the largest n are not seen: the table says
how many images changed class at the last step (not yet settled).

    nice -n 10 python bench/ebm_accuracy_per_second.py --out bench/results/ebm_accuracy_per_second_cpu.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis import ebm as ebm_analysis  # noqa: E402
from analysis import stats  # noqa: E402
from analysis.tables import to_markdown  # noqa: E402
from bench.report import Report  # noqa: E402
from trainables.common import device_name  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.ebm import (Autoencoder, AutoencoderBank, EvalConfig, NoiseSpec, evaluate, preset_configs,  # noqa: E402
                            train_bank)
from trainables.sampling import DrawTally  # noqa: E402
import trainables.ebm as ebm_module  # noqa: E402


def use_clock(name: str):
    """The clock the evaluation reads: wall (perf_counter, what the rows record) or this process's
    CPU time. evaluate() reads `time.perf_counter` through its module's `time`, so the fused path's
    clock is swapped by giving trainables.ebm a `time` whose perf_counter is process_time."""
    clock = time.process_time if name == "cpu" else time.perf_counter
    ebm_module.time = types.SimpleNamespace(perf_counter=clock)
    return clock


def autoencoders(bank: AutoencoderBank) -> list[Autoencoder]:
    """The bank's classes as plain `nn.Module` autoencoders with the same weights."""
    hidden, output = bank.activation_names
    out = []
    for c in range(bank.num_classes):
        ae = Autoencoder(bank.in_channels, bank.hidden, hidden, output)
        with torch.no_grad():
            for layer, (w, b) in zip([*ae.encoder, *ae.decoder], bank.nchw_layers(c)):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        out.append(ae.eval())
    return out


def plain_rows(aes, x, y, spec: NoiseSpec, sharing: str, checkpoints, seed: int, clock) -> list[dict]:
    """The plain loop's rows at each n: for each draw, for each class, one batch of all images,
    noise from `torch.randn_like` after every layer of the placement (common: drawn once per layer
    and draw, shared by every class). Tallied and clocked by DrawTally, 10 draws per call."""
    torch.manual_seed(seed)
    layers = set(spec.layers)

    def per_draw(d0, d1):
        out = torch.empty(len(aes), len(x), d1 - d0)
        for d in range(d1 - d0):
            shared: dict[int, torch.Tensor] = {}

            def noisy(i, h):
                if i not in layers:
                    return h
                if sharing == "common":
                    z = shared.setdefault(i, torch.randn_like(h))
                else:
                    z = torch.randn_like(h)
                return h + spec.alpha * z

            for c, ae in enumerate(aes):
                out[c, :, d] = ((ae(x, noisy) - x) ** 2).flatten(1).sum(1)
        return out

    tally = DrawTally(checkpoints)  # with the moments, as evaluate tallies them: the same bookkeeping
    with torch.no_grad():
        tally.add_block(per_draw, y, checkpoints[-1], 10, clock, align=10)
    return [{"n": n, "accuracy": tally.correct[n] / len(y), "eval_seconds_at_n": tally.seconds[n],
             "predictions": tally.predictions(n), "eval_path": "plain_loop", "eval_precision": "fp32"}
            for n in checkpoints]


def decision_cost(rows: pd.DataFrame) -> dict:
    """One arm and seed: per image its decision point and its share of the clock there."""
    rows = rows.sort_values("n")
    preds = np.stack([np.asarray(p) for p in rows["predictions"]])
    k = ebm_analysis.decision_points(preds)
    images = preds.shape[1]
    ns, secs = rows["n"].to_numpy(), rows["eval_seconds_at_n"].to_numpy()
    return {"n": ns[k], "seconds": secs[k] / images, "final": preds[-1],
            "unsettled": int((preds[-1] != preds[-2]).sum()) if len(preds) > 1 else 0}


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, reps: int, rng) -> tuple[float, float]:
    """95% paired bootstrap interval of mean(a) / mean(b) over the images."""
    idx = rng.integers(0, len(a), (reps, len(a)))
    r = a[idx].mean(1) / b[idx].mean(1)
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=0.5, help="alpha_train = alpha_test")
    p.add_argument("--checkpoints", default="1,10,20,30,50,70,100,150,200,300")
    p.add_argument("--seeds", default="0,1", help="evaluation seeds of the fused path (the same trained bank)")
    p.add_argument("--plain-seeds", default="0", help="evaluation seeds of the plain loop (slower)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paths", default="fused,plain")
    p.add_argument("--images", type=int, default=0, help="0 = the whole test set")
    p.add_argument("--steps", type=int, default=0, help="training steps; 0 = the quick preset's 1500")
    p.add_argument("--bank", default="", help="a file to keep the trained bank in (trained and written when absent)")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--out", default=None)
    p.add_argument("--figure", default=None, help="PNG of accuracy against seconds (analysis.ebm.accuracy_vs_seconds)")
    args = p.parse_args()
    checkpoints = tuple(int(n) for n in args.checkpoints.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    plain_seeds = [int(s) for s in args.plain_seeds.split(",")] if args.plain_seeds else []
    torch.set_num_threads(args.threads)
    clock = use_clock(args.clock)
    cfg, _ = preset_configs("quick", {"alpha_train": args.alpha, "device": "cpu"} | ({"steps": args.steps} if args.steps else {}))
    data = load_dataset(cfg.data)
    device = torch.device("cpu")
    log = Report("ebm_accuracy_per_second", f"{device_name(device)}, torch {torch.__version__}, "
                 f"{torch.get_num_threads()} threads, clock: {args.clock} "
                 f"({'CPU seconds of this process' if args.clock == 'cpu' else 'wall seconds'})")
    with open("/proc/loadavg") as f:
        log(f"load average at start: {f.read().split()[0]}")
    if args.bank and Path(args.bank).exists():
        bank = AutoencoderBank(data.num_classes, cfg.data.channels, cfg.hidden_channels)
        bank.load_state_dict(torch.load(args.bank))
        log(f"bank: quick preset, alpha_train {args.alpha:g}, seed {cfg.seed}, {cfg.steps} steps (loaded from "
            f"{args.bank}, which the same train_bank call wrote)")
    else:
        t = time.perf_counter()
        bank = train_bank(cfg, data).model
        log(f"bank: quick preset, alpha_train {args.alpha:g}, seed {cfg.seed}, {cfg.steps} steps, "
            f"trained in {time.perf_counter() - t:.0f} s")
        if args.bank:
            torch.save(bank.state_dict(), args.bank)
    bank.eval()
    if args.images:
        data = dataclasses.replace(data, x_test=data.x_test[:args.images], y_test=data.y_test[:args.images])
    spec = NoiseSpec("gaussian", args.alpha, "full")
    images = len(data.y_test)
    log(f"work: {data.name} {cfg.data.image_size} px, {images} test images, {data.num_classes} classes, cell "
        f"({args.alpha:g}, {args.alpha:g}) Gaussian full placement, n in {checkpoints}, evaluation seeds {seeds}")
    aes = autoencoders(bank)
    x, y = data.x_test, data.y_test
    rows = []
    for seed in sorted(set(seeds) | set(plain_seeds)):  # arms interleaved per seed: load hits all alike
        for path in args.paths.split(","):
            if seed not in (seeds if path == "fused" else plain_seeds):
                continue
            for sharing in ("independent", "common"):
                t, c = time.perf_counter(), time.process_time()
                if path == "fused":
                    ecfg = EvalConfig(n_checkpoints=checkpoints, noise_sharing=sharing)
                    got = evaluate(bank, data, [spec], cfg, ecfg, eval_seed=seed)
                else:
                    got = plain_rows(aes, x, y, spec, sharing, checkpoints, seed, clock)
                log(f"seed {seed}, {path}, {sharing}: {time.perf_counter() - t:.1f} s wall, "
                    f"{time.process_time() - c:.1f} s CPU")
                rows += [r | {"noise_sharing": sharing, "seed": seed} for r in got]
    df = pd.DataFrame(rows).assign(
        family="ebm", method="ebm", status="ok", dataset=data.name, alpha_train=args.alpha, alpha_test=args.alpha,
        distribution_train="gaussian", distribution_test="gaussian", placement_train="full", placement_test="full",
        device_name=device_name(device))[["seed", "eval_path", "noise_sharing", "n", "accuracy", "eval_seconds_at_n",
                                          "predictions", "family", "method", "status", "dataset", "alpha_train",
                                          "alpha_test", "distribution_train", "distribution_test", "placement_train",
                                          "placement_test", "eval_precision", "device_name"]]

    log("\n## Accuracy and evaluation seconds at each n (mean over seeds; seconds: eval_seconds_at_n)\n")
    s = df.groupby(["eval_path", "noise_sharing", "n"]).agg(
        accuracy=("accuracy", "mean"), acc_min=("accuracy", "min"), acc_max=("accuracy", "max"),
        seconds=("eval_seconds_at_n", "mean")).reset_index()
    log("| path | sharing | n | accuracy % (min-max over seeds) | seconds up to n |")
    log("|---|---|---|---|---|")
    for r in s.itertuples():
        log(f"| {r.eval_path} | {r.noise_sharing} | {r.n} | {r.accuracy * 100:.2f} ({r.acc_min * 100:.2f}-"
            f"{r.acc_max * 100:.2f}) | {r.seconds:.2f} |")

    log("\n## The EBM report's accuracy-per-second table (analysis.ebm.accuracy_per_second)\n")
    table = ebm_analysis.accuracy_per_second(df)
    log(to_markdown(table.drop(columns=["dataset"])))
    if args.figure:
        fig = ebm_analysis.accuracy_vs_seconds(df)
        fig.savefig(args.figure, dpi=80, bbox_inches="tight")
        log(f"figure: {args.figure}")

    log("\n## Seconds per decided image (decision point: the first n from which an image's class stays its "
        "class at the largest n)\n")
    log("| path | seed | sharing | accuracy at largest n % | mean decision n | median | seconds per decided "
        "image (ms) | images not settled at the last step |")
    log("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    ratios = []
    for (path, seed), g in df.groupby(["eval_path", "seed"]):
        cost = {sh: decision_cost(g[g["noise_sharing"] == sh]) for sh in ("independent", "common")}
        for sh, c in cost.items():
            acc = g[(g["noise_sharing"] == sh) & (g["n"] == checkpoints[-1])]["accuracy"].iloc[0]
            log(f"| {path} | {seed} | {sh} | {acc * 100:.2f} | {c['n'].mean():.1f} | {np.median(c['n']):g} | "
                f"{c['seconds'].mean() * 1e3:.3f} | {c['unsettled']} |")
        ind, com = cost["independent"], cost["common"]
        ratios.append((path, seed, ind["seconds"].mean() / com["seconds"].mean(),
                       *bootstrap_ratio(ind["seconds"], com["seconds"], args.boot, rng),
                       ind["n"].mean() / com["n"].mean(), *bootstrap_ratio(ind["n"], com["n"], args.boot, rng),
                       float((ind["final"] == com["final"]).mean())))
    log("\n| path | seed | seconds per decided image, independent / common (95% CI) | decision n, independent / "
        "common (95% CI) | images whose final class agrees between the arms |")
    log("|---|---|---|---|---|")
    for path, seed, r, lo, hi, rn, nlo, nhi, agree in ratios:
        log(f"| {path} | {seed} | {r:.2f}x [{lo:.2f}, {hi:.2f}] | {rn:.2f}x [{nlo:.2f}, {nhi:.2f}] | {agree * 100:.1f}% |")
    for path in sorted({r[0] for r in ratios}):
        per_seed = [r for r in ratios if r[0] == path]
        if len(per_seed) > 1:
            for what, i in (("seconds per decided image", 2), ("decision n", 5)):
                est = stats.estimate([r[i] for r in per_seed])
                lo, hi = est.interval()
                log(f"{path}, {what}, independent / common over {len(per_seed)} evaluation seeds: mean {est.mean:.2f}x, "
                    f"95% t interval [{lo:.2f}, {hi:.2f}]")
    with open("/proc/loadavg") as f:
        log(f"\nload average at end: {f.read().split()[0]}")
    log.save(args.out)


if __name__ == "__main__":
    main()

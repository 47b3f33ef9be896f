"""Do the activation-noise paper's findings appear under the quick protocol?

Trains one bank per (data set, seed, alpha_train) with the `quick` preset, evaluates every
alpha_test on it, and prints the alpha_train x alpha_test accuracy table (mean +- SEM over seeds)
plus a verdict, with numbers, on each finding of PROTOCOLS.md section 1:
  (i)   balanced noise beats no noise (0, 0);
  (ii)  for each alpha_train the best alpha_test lies on or next to the diagonal;
  (iii) acc(0.5, 0) > acc(0, 0.5).
Before any verdict it prints the two checks that say whether the miniature is fair:
  (a) training converged: the residual loss ABOVE the noise floor (alpha^2 E[z^2] from noise on
      the output layer, which no training can remove) changes by < 2% over the last 20% of steps;
  (a') the same, measured without sampling noise: the residual under fixed draws of the training
      noise on every layer but the output (whose noise only adds the floor) at 80% of the steps and
      at the end; this one decides, since the per-epoch noisy losses of (a) jitter by percents;
  (b) n is large enough: at the headline cell (0.9, 0.9) (else the largest balanced cell) the
      median energy gap between the best and second-best class is >= 3x the median std of a
      class's n-draw mean energy; printed beside it, the std of the gap itself, which is what
      common noise (noise_sharing=common) shrinks.
The protocol is never tuned to make a finding appear: the verdicts report what the data say.

    python bench/ebm_phenomena.py                       # digits + textures, 3 seeds, CPU
    python bench/ebm_phenomena.py --device cuda --out bench/results/ebm_phenomena_gpu.txt
    python bench/ebm_phenomena.py --preset fair --datasets digits --alphas 0,0.5,0.9 --seeds 1 --first-seed 1
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import Report  # noqa: E402
from trainables.common import device_name, resolve_device  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.ebm import NoiseSpec, evaluate, preset_configs, train_bank  # noqa: E402


def run(dataset: str, seeds: range, alphas: list[float], device: str, overrides: dict, log, preset="quick",
        sharing: str = "independent") -> dict:
    """accuracy[(alpha_train, alpha_test)] -> list over seeds, at the largest n; plus loss tails
    and the evidence columns (energy gap, n-draw mean std) per cell."""
    acc: dict[tuple[float, float], list[float]] = {}
    evidence: dict[tuple[float, float], list[tuple[float, float]]] = {}
    tails: dict[float, list[list[float]]] = {}
    residuals: dict[float, list[tuple[float, float]]] = {}  # (at 80% of steps, at the end) per seed
    for seed, a_tr in itertools.product(seeds, alphas):
        cfg, ecfg = preset_configs(preset, {"dataset": dataset, "seed": seed, "eval_seed": seed,
                                             "alpha_train": a_tr, "device": device, **overrides})
        data = load_dataset(cfg.data)
        t0 = time.perf_counter()
        res = train_bank(cfg, data)
        t1 = time.perf_counter()
        info = res.columns  # the fixed-noise residuals of check (a'), as every row has them
        residuals.setdefault(a_tr, []).append((info["residual_at_80"], info["residual_final"]))
        rows = evaluate(res.model, data, [NoiseSpec("gaussian", a, "full", sharing) for a in alphas], cfg, ecfg,
                        ecfg.eval_seed)
        t2 = time.perf_counter()
        n_max = ecfg.n_checkpoints[-1]
        for r in rows:
            if r["n"] == n_max:
                acc.setdefault((a_tr, r["alpha_test"]), []).append(r["accuracy"])
                evidence.setdefault((a_tr, r["alpha_test"]), []).append(
                    (r["energy_gap_median"], r["energy_mean_std_median"], r["energy_gap_std_median"]))
        tails.setdefault(a_tr, []).append(res.history)
        log(f"  {dataset} seed={seed} alpha_train={a_tr}: train {t1 - t0:.0f}s "
            f"(loss {res.history[0]:.4f} -> {res.history[-1]:.4f}), eval {t2 - t1:.0f}s")
    return {"acc": acc, "tails": tails, "residuals": residuals, "cfg": cfg, "ecfg": ecfg, "data": data, "evidence": evidence}


def residual_change(history: list[float], floor: float) -> float:
    """Relative fall of the loss above `floor` over the last 20% of epochs. Each end is the mean
    of 5% of the epochs (at least one), so the per-epoch jitter of a noisy loss is not read as
    a trend."""
    k = len(history)
    w = max(1, k // 20)
    before = np.mean(history[max(0, k - k // 5 - w):k - k // 5]) - floor
    after = np.mean(history[k - w:]) - floor
    return float((before - after) / before)


def mean_sem(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def report(dataset: str, out: dict, alphas: list[float], log) -> None:
    acc, cfg, ecfg, data = out["acc"], out["cfg"], out["ecfg"], out["data"]
    n_max = ecfg.n_checkpoints[-1]
    log(f"\n## {dataset}: {data.num_classes} classes, {len(data.y_train)} train / {len(data.y_test)} test "
        f"images at {cfg.data.image_size} px; {cfg.steps} Adam steps of {cfg.batch_size} per class; "
        f"Gaussian noise, full placement; accuracy (%) at n = {n_max}, mean +- SEM over "
        f"{len(next(iter(acc.values())))} seeds")
    log("\nalpha_train \\ alpha_test | " + " | ".join(f"{a:>13}" for a in alphas))
    log("---|" + "|".join("---" for _ in alphas))
    for a_tr in alphas:
        cells = [mean_sem(acc[(a_tr, a_te)]) for a_te in alphas]
        log(f"{a_tr:>24} | " + " | ".join(f"{100 * m:6.2f} +- {100 * s:4.2f}" for m, s in cells))

    # (a) Convergence above the noise floor: Gaussian noise on the output layer adds alpha^2 * E[z^2]
    # = alpha^2 to the per-pixel MSE whatever the weights are, so a plateau is judged on the rest.
    log("")
    converged = []
    for a_tr, runs in out["tails"].items():
        floor = a_tr ** 2 if cfg.placement_train in ("full", "dec", "even") else 0.0
        change = np.mean([residual_change(t, floor) for t in runs])
        converged.append(abs(change) < 0.02)
        log(f"(a) alpha_train={a_tr}: noise floor {floor:.4f}; residual above it {np.mean([t[-1] for t in runs]) - floor:.5f}, "
            f"changed {100 * change:+.1f}% over the last 20% of steps -> {'converged' if abs(change) < 0.02 else 'NOT converged'}")
    # (a') The same question asked without sampling noise: the residual of check (a') at the step
    # that starts the last 20% and at the end, under the same fixed draws (fixed_noise_residual).
    steady = []
    for a_tr, pairs in out["residuals"].items():
        r80, r100 = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        change = (r80 - r100) / r100
        steady.append(abs(change) < 0.02)
        log(f"(a') alpha_train={a_tr}: fixed-noise residual {r80:.5f} at 80% of steps, {r100:.5f} at the end: "
            f"fell {100 * change:+.1f}% -> {'converged' if abs(change) < 0.02 else 'NOT converged'}")
    headline = (0.9, 0.9) if (0.9, 0.9) in out["evidence"] else max(k for k in out["evidence"] if k[0] == k[1])
    gap, spread, gap_std = (np.nanmean([e[i] for e in out["evidence"][headline]]) for i in range(3))
    ratio = gap / spread if spread > 0 else float("inf")
    log(f"(b) cell {headline} at n = {n_max}: median energy gap {gap:.4f}, median std of a class's n-draw mean "
        f"{spread:.4f}, ratio {ratio:.2f} -> {'n large enough' if ratio >= 3 else 'n TOO SMALL (needs >= 3)'}")
    log(f"    and the std of the gap itself (the two best classes' n-draw mean difference; below sqrt(2) x the "
        f"class std when classes share draws): {gap_std:.4f}, gap / its std {gap / gap_std:.2f}")
    fair = all(steady) and ratio >= 3  # (a'): (a) on the noisy epoch losses jitters by more than 2%
    log(f"fair miniature: {'yes' if fair else 'NO: the verdicts below are undecided whatever they say'}")

    # Loss curve tail per alpha_train: mean over seeds of the loss at the last 5 epochs, and how
    # much it still fell over the last 20% of the steps (a plateau shows as a small drop).
    log("")
    for a_tr, runs in out["tails"].items():
        last = np.mean([t[-5:] for t in runs], axis=0)
        fifth = max(1, len(runs[0]) // 5)
        drop = np.mean([(t[-fifth - 1] - t[-1]) / t[-fifth - 1] for t in runs])
        share = np.mean([(t[-fifth - 1] - t[-1]) / (t[0] - t[-1]) for t in runs])
        log(f"loss tail alpha_train={a_tr} (last 5 epochs, mean over seeds): "
            f"{' '.join(f'{v:.5f}' for v in last)}; drop over the last 20% of steps: {100 * drop:.1f}% "
            f"of its value then, {100 * share:.1f}% of the whole run's decrease")

    mean = {k: mean_sem(v) for k, v in acc.items()}
    base, base_sem = mean[(0.0, 0.0)]
    best_a = max((a for a in alphas if a > 0), key=lambda a: mean[(a, a)][0])
    best, best_sem = mean[(best_a, best_a)]
    gap = best - base
    sig = gap > 2 * math.hypot(base_sem, best_sem)
    log(f"\n(i) balanced noise beats (0,0): best balanced cell ({best_a},{best_a}) = {100 * best:.2f}% vs "
        f"(0,0) = {100 * base:.2f}%, difference {100 * gap:+.2f} points -> "
        f"{'HOLDS' if gap > 0 and sig else 'holds, within 2 SEM' if gap > 0 else 'DOES NOT HOLD'}")
    near = []
    for i, a_tr in enumerate(alphas):
        j = int(np.argmax([mean[(a_tr, a_te)][0] for a_te in alphas]))
        near.append(abs(i - j) <= 1)
        log(f"(ii) alpha_train={a_tr}: best alpha_test={alphas[j]} ({100 * mean[(a_tr, alphas[j])][0]:.2f}%), "
            f"{abs(i - j)} grid step(s) from the diagonal")
    log(f"(ii) best alpha_test on or next to the diagonal for {sum(near)}/{len(near)} rows -> "
        f"{'HOLDS' if all(near) else 'DOES NOT HOLD'}")
    if 0.5 in alphas:
        (m1, s1), (m2, s2) = mean[(0.5, 0.0)], mean[(0.0, 0.5)]
        log(f"(iii) acc(0.5,0) = {100 * m1:.2f} +- {100 * s1:.2f}% vs acc(0,0.5) = {100 * m2:.2f} +- {100 * s2:.2f}% -> "
            f"{'HOLDS' if m1 > m2 else 'DOES NOT HOLD'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,textures")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here: --first-seed 1 --seeds 2 is 1, 2")
    p.add_argument("--alphas", default="0,0.5,1.0,1.5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. image_size=16 or n_checkpoints=(1,10,100,1000)")
    p.add_argument("--sharing", default="independent", choices=("independent", "common"),
                   help="test-time noise_sharing: a fresh draw per class, or one draw shared by every class")
    p.add_argument("--out", default=None, help="also write the output to this file")
    args = p.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    import ast
    overrides = {"steps": args.steps} if args.steps else {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    dev = resolve_device(args.device)
    log = Report(f"ebm_phenomena: {args.preset} protocol {overrides or ''}, test noise_sharing {args.sharing}",
                 f"{device_name(dev)}, torch {torch.__version__}")
    t0 = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results = {ds: run(ds, seeds, alphas, args.device, overrides, log, args.preset, args.sharing)
               for ds in args.datasets.split(",")}
    for ds, out in results.items():
        report(ds, out, alphas, log)
    log(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    log.save(args.out)


if __name__ == "__main__":
    main()

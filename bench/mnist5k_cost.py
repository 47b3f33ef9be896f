"""mnist5k cost: six quick presets on digits at 8 px against mnist5k at 28 px, projected from cut trials.

Issue 38, item 2: should a quick preset move from the embedded digits (8 px, 1347 train / 450
test) to the embedded mnist5k (28 px, 4000 train / 1000 test, the papers' input size) where the
whole quick run stays within about an hour on 2 CPU cores? Every distinct training point of each
quick grid is run once (seed 0) on both data sets, in-process through
`tuner.trial.run_trial(config, local=True)` with one torch thread, and the whole quick run is
projected from it; the projection runs nothing at full length (the check runs four points in full).

- mnist5k@28 is `--set dataset=mnist5k --set image_size=28` and nothing else: every network of
  these experiments takes its input width from the data (SE-SNN's MLP and NINR's FC, MLP3 and
  CNN from the images' shape, VPN's softmax regression, DNN3 and both generators from channels x
  image_size^2; ResNet18's stem stays `cifar` up to 64 px). So the 784-input networks are the
  papers' own: 784-128-128-10 (label noise), 784-1024-1024-256-10 (defence), 784-1024-1024-10
  (DNN3). NINR's linear toy ignores the data set (16 inputs on both).
- Training is cut with `steps` (a per-stage count in all three families): CUT_EPOCHS epochs of
  the trial's own data but at least MIN_STEPS steps (at most the preset's), or --heavy-steps steps
  for ResNet18-generator points. A wrapper around `train_supervised` stamps the time after every
  optimiser step (the family's own `on_step`, if any, runs first); the mean step time excludes
  each stage's first step (warm-up) and the time inside NINR's Hessian estimates
  (`niw_hessian_top`, timed apart). What is left of `train_seconds` (model build, the Hessian
  estimates, Forward's transition estimate, first steps) is counted once per trial, not per step.
- Evaluation is run in full (the preset's test set and settings) on the cut model: its cost does
  not depend on how long the model trained. "other" is the rest of the trial (data loading, the
  part file): run_trial's wall time minus train_seconds minus the rows' eval_seconds.
- Projection per trial = fixed + step time x the preset's steps (epochs x train images // batch,
  per stage) + eval + other; a trial whose cut run diverged counts as measured (NINR's constant-lr
  SGD takes the same steps up to the divergence; the summary also gives the bound where every
  such trial runs to the end). The quick run = that, summed over points, x the experiment's
  default quick seeds, / 2 (two one-thread trials at once), and, more precisely, a 2-slot
  schedule of the trials in tuner.run's order (seed-major), never below the longest trial.
- The trials run in --workers processes at once (default 2, one thread each), as the quick run
  would: each measured time carries the contention of a neighbour trial. Each trial's CPU time
  over its wall time is recorded: well below 1 means other work on the machine took the core.
- The check runs RAY_CHECK's points (two per experiment, mnist5k@28, seed 0) at full length through
  `python -m tuner.run --only ...` (Ray, 1 CPU per trial, both at once): the ratio of the rows'
  train + eval seconds to their projected train + eval is the factor "x Ray" (Ray's own processes
  share the 2 cores; and the projection's own error), applied to the family's experiments (to
  VPN the larger one). Tune's fixed cost per command (about 27 s, bench/grid_cost.py) is left out.

    python bench/mnist5k_cost.py --out bench/results/mnist5k_cost_cpu.txt   # ~15 min on 2 cores
    python bench/mnist5k_cost.py --smoke     # one point per experiment, 1 epoch, no check: checks the bench
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import Report  # noqa: E402

EXPERIMENTS = ["labelnoise_sesnn", "adversarial_sesnn", "margin_sesnn", "ninr_compare", "ninr_phases", "vpn_table"]
DATASETS = {"digits@8": {}, "mnist5k@28": {"dataset": "mnist5k", "image_size": 28}}
PRESET = "quick"
CUT_EPOCHS = 2  # training cut per stage, in epochs of the trial's own data ...
MIN_STEPS = 400  # ... but at least this many steps (short windows time badly), at most the preset's
# Points run at full length through tuner.run on mnist5k@28 (seed 0, two at once), against their
# projections: the --only selections of one command per experiment.
RAY_CHECK = {"ninr_compare": ["arch=cnn,regularizer=none", "arch=cnn,regularizer=l2"],
             "labelnoise_sesnn": ["model=sesnn,loss=forward,label_noise=0.4", "model=deterministic,loss=ce,label_noise=0.4"]}
FAMILY = {"labelnoise_sesnn": "sesnn", "adversarial_sesnn": "sesnn", "margin_sesnn": "sesnn",
          "ninr_compare": "ninr", "ninr_phases": "ninr", "vpn_table": "vpn"}
HOUR_LIMIT_MIN = 66.0  # "within about an hour": an hour and 10%
# Whole quick runs on digits measured on this workplace's 2-core AMD EPYC at commit 80459c0
# (docs/*-quick/README.md): experiment -> (seeds, wall seconds of `python -m tuner.run <exp> --preset quick`).
MEASURED_RUNS = {"labelnoise_sesnn": (5, 273), "margin_sesnn": (3, 65), "adversarial_sesnn": (3, 481),
                 "ninr_phases": (1, 36), "ninr_compare": (5, 195)}


# --- in each worker process -----------------------------------------------------------------------

CALLS: list[dict] = []  # one per train_supervised call of the current trial
HESSIAN: list[tuple[float, float]] = []  # (start, end) of each niw_hessian_top call


def _install_timers() -> None:
    """Wrap train_supervised (as each family module imported it) and NINR's Hessian estimate."""
    import trainables.ninr
    import trainables.sesnn
    import trainables.supervised
    import trainables.vpn

    loop = trainables.supervised.train_supervised

    def timed_loop(model, x, y, **kw):
        rec = {"n": len(x), "batch_size": kw["batch_size"], "epochs": kw["epochs"], "input": tuple(x.shape[1:]),
               "stamps": []}
        inner = kw.get("on_step")

        def on_step(step, loss):
            if inner is not None:
                inner(step, loss)
            rec["stamps"].append(time.perf_counter())
        CALLS.append(rec)
        return loop(model, x, y, **(kw | {"on_step": on_step}))

    for module in (trainables.sesnn, trainables.ninr, trainables.vpn):
        module.train_supervised = timed_loop
    hessian = trainables.ninr.niw_hessian_top

    def timed_hessian(*a, **kw):
        t0 = time.perf_counter()
        try:
            return hessian(*a, **kw)
        finally:
            HESSIAN.append((t0, time.perf_counter()))
    trainables.ninr.niw_hessian_top = timed_hessian


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)
    import torchvision  # noqa: F401  (imported once here, as a reused Ray actor has it after its first trial)
    import tuner.trial  # noqa: F401
    _install_timers()


def measure(task: dict) -> dict:
    """One cut trial through run_trial(local=True): its times, step count and step time."""
    from tuner.store import ResultStore
    from tuner.trial import run_trial
    import pandas as pd
    CALLS.clear()
    HESSIAN.clear()
    config = {"experiment": task["experiment"], "preset": PRESET, "seed": 0, "point": task["point"],
              "overrides": task["overrides"], "storage": task["storage"], "name": task["name"], "meta": {},
              "threads": 1}
    t0, c0 = time.perf_counter(), time.process_time()
    run_trial(config, local=True)
    total = time.perf_counter() - t0
    cpu_share = (time.process_time() - c0) / total  # below 1: the trial waited for a core (other work on the machine)
    (part,) = ResultStore(task["storage"], task["name"]).parts()
    rows = pd.read_parquet(part)
    status = str(rows["status"].iloc[0])
    if status not in ("ok", "diverged"):
        raise RuntimeError(f"{task['experiment']} {task['point']}: {status}: {rows['message'].iloc[0]}")
    train = float(rows["train_seconds"].iloc[0])
    evaluation = float(rows["eval_seconds"].sum()) if "eval_seconds" in rows and status == "ok" else 0.0
    loop_s, intervals, done, full = 0.0, 0, 0, 0
    for c in CALLS:
        s = c["stamps"]
        done += len(s)
        full += c["epochs"] * (c["n"] // min(c["batch_size"], c["n"]))
        if len(s) >= 2:
            inside = sum(e - b for b, e in HESSIAN if b >= s[0] and e <= s[-1])
            loop_s += s[-1] - s[0] - inside
            intervals += len(s) - 1
    step = loop_s / intervals if intervals else float("nan")
    return task | {"status": status, "total": total, "cpu_share": cpu_share, "train": train, "eval": evaluation,
                   "other": total - train - evaluation, "stages": len(CALLS), "steps_done": done,
                   "full_steps": full, "step_s": step, "fixed": train - step * done if intervals else train,
                   "hessian_s": sum(e - b for b, e in HESSIAN), "input": CALLS[0]["input"] if CALLS else ()}


def projected(r: dict) -> float:
    """Seconds of one full quick trial of this point (module docstring)."""
    if r["status"] != "ok":
        return r["total"]
    return r["fixed"] + r["step_s"] * r["full_steps"] + r["eval"] + r["other"]


def undiverged(r: dict, evals: list[float]) -> float:
    """projected(r), but a diverged cut trial run to the end and evaluated (median eval of the others)."""
    if r["status"] == "ok":
        return projected(r)
    return r["fixed"] + r["step_s"] * r["full_steps"] + sorted(evals)[len(evals) // 2] + r["other"]


def schedule(durations: list[float], slots: int = 2) -> float:
    """Makespan of the trials started in order, each on the first free slot."""
    free = [0.0] * slots
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


# --- the driver ---------------------------------------------------------------------------------

def short(point: dict, label: str) -> str:
    skip = {"hidden", "stochastic_layers", "aggregation", "test_mode", "parallel_layer", "regularizer", "placement",
            "sigma_eps", "cdt_std", "model", "loss", "generator", "augmentation"}
    rest = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items() if k not in skip)
    return f"{label or '-'}" + (f" ({rest})" if rest else "")


def plan(args, storage: Path) -> tuple[list[dict], dict]:
    """Every (experiment, data set, point) task with its cut, and each experiment's points and seeds."""
    from trainables.data import DataConfig, load_dataset
    from tuner import registry
    from tuner.run import parse_seeds
    n_train = {label: len(load_dataset(DataConfig(**({"dataset": "digits", "image_size": 8} | ds))).y_train)
               for label, ds in DATASETS.items()}
    tasks, info = [], {}
    for name in args.experiments:
        exp = registry.get(name)
        space = exp.space(PRESET)
        points = space.train[:1] if args.smoke else space.train
        info[name] = {"points": points, "seeds": len(parse_seeds(None, PRESET, exp.default_seeds)),
                      "labels": [short(p, space.label(p) if space.label else "") for p in points]}
        for label, ds in DATASETS.items():
            for i, point in enumerate(points):
                cfg, _, _ = registry.trial_configs(exp, PRESET, point | {"seed": 0}, dict(ds))
                n = cfg.toy_samples if getattr(cfg, "arch", "") == "linear_toy" else n_train[label]
                per_epoch = n // min(cfg.batch_size, n)
                heavy = point.get("generator") == "resnet18"
                if args.smoke:
                    steps = per_epoch
                elif heavy:
                    steps = args.heavy_steps
                else:
                    steps = min(cfg.epochs * per_epoch, max(CUT_EPOCHS * per_epoch, MIN_STEPS))
                tasks.append({"experiment": name, "data": label, "index": i, "point": point,
                              "overrides": dict(ds) | {"steps": steps}, "storage": str(storage),
                              "name": f"{name}-{label.replace('@', '_')}-{i}", "heavy": heavy})
    return tasks, info


def ray_run(name: str, overrides: dict, only: list[str], storage: Path, run_name: str) -> tuple[float, list]:
    """`python -m tuner.run <name> --preset quick --seeds 1 --only ...` with these overrides (Ray, 1 CPU
    per trial): wall seconds, and (point, train seconds, eval seconds) per trial from its rows."""
    import pandas as pd
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v!r}")]
    cmd = [sys.executable, "-m", "tuner.run", name, "--preset", PRESET, "--seeds", "1", "--storage", str(storage),
           "--name", run_name, *sets, *[a for o in only for a in ("--only", o)]]
    log_path = storage / f"{run_name}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {rc}); see {log_path}")
    out = []
    for part in sorted((storage / run_name / "results").glob("part-*.parquet")):
        rows = pd.read_parquet(part)
        out.append((rows.iloc[0].to_dict(), float(rows["train_seconds"].iloc[0]), float(rows["eval_seconds"].fillna(0).sum())))
    return wall, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated, default the six")
    p.add_argument("--heavy-steps", type=int, default=8, help="steps per stage of a ResNet18-generator point")
    p.add_argument("--workers", type=int, default=2, help="trials at once, one torch thread each")
    p.add_argument("--no-check", action="store_true", help="skip the full-length tuner.run check")
    p.add_argument("--smoke", action="store_true", help="first point of each experiment, 1 epoch, no check")
    p.add_argument("--out", default=None, help="also write the output to this file")
    args = p.parse_args()
    args.experiments = args.experiments.split(",")
    import torch
    t_start = time.perf_counter()
    flags = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    log = Report("mnist5k_cost: quick presets, digits@8 against mnist5k@28",
                 f"{mp.cpu_count()} CPU cores, torch {torch.__version__}, python {platform.python_version()}")
    log("CPU flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16")))
    log(f"command: python bench/mnist5k_cost.py {' '.join(sys.argv[1:])}")
    storage = Path(tempfile.mkdtemp(prefix="mnist5k_cost-", dir="/tmp"))
    tasks, info = plan(args, storage)
    cut = "1 epoch per stage" if args.smoke else (f"{CUT_EPOCHS} epochs per stage, at least {MIN_STEPS} steps, at most "
                                                  f"the preset's; ResNet18-generator points {args.heavy_steps} steps")
    log(f"{len(tasks)} cut trials (seed 0) in {args.workers} processes, 1 torch thread each; cut: {cut}; "
        "evaluation in full")
    order = sorted(tasks, key=lambda t: (not t["heavy"], t["data"] != "mnist5k@28"))  # long ones first
    results = []
    with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker) as pool:
        for r in pool.imap_unordered(measure, order):
            results.append(r)
            print(f"  [{len(results)}/{len(tasks)}] {r['experiment']} {r['data']} #{r['index']}: {r['status']}, "
                  f"train {r['train']:.1f} s ({r['steps_done']} steps), eval {r['eval']:.1f} s", flush=True)
    measured_wall = time.perf_counter() - t_start
    by = {(r["experiment"], r["data"], r["index"]): r for r in results}
    shares = sorted(r["cpu_share"] for r in results)
    log(f"cut trials: {measured_wall:.0f} s wall; CPU time / wall time per trial: median {shares[len(shares) // 2]:.2f}, "
        f"lowest {shares[0]:.2f} ({sum(s < 0.9 for s in shares)} trials below 0.90: they waited for a core)")

    summary = {}
    for name in args.experiments:
        meta = info[name]
        k, seeds = len(meta["points"]), meta["seeds"]
        rs = {d: [by[(name, d, i)] for i in range(k)] for d in DATASETS}
        inputs = {d: "x".join(map(str, rs[d][0]["input"])) for d in DATASETS}
        log(f"\n## {name}: {k} training points x {seeds} default quick seeds = {k * seeds} trials\n")
        log("input per example: " + ", ".join(f"{d} {inputs[d]}" for d in DATASETS)
            + ("" if name != "ninr_phases" else " (linear_toy points: 16 inputs on both)"))
        log("\nper point (one trial): steps measured, ms per step, preset steps, fixed s, eval s, other s, projected s")
        log("\n| point | " + " | ".join(f"{d} meas. | ms/step | steps | fixed | eval | other | proj. s" for d in DATASETS)
            + " | ratio |")
        log("|---|" + "---|" * (7 * len(DATASETS) + 1))
        for i in range(k):
            cells = []
            for d in DATASETS:
                r = rs[d][i]
                mark = "" if r["status"] == "ok" else f" ({r['status']})"
                cells.append(f"{r['steps_done']}{mark} | {1e3 * r['step_s']:.2f} | {r['full_steps']} | {r['fixed']:.2f} "
                             f"| {r['eval']:.2f} | {r['other']:.2f} | {projected(r):.1f}")
            ratio = projected(rs["mnist5k@28"][i]) / projected(rs["digits@8"][i])
            log(f"| {meta['labels'][i]} | " + " | ".join(cells) + f" | {ratio:.1f}x |")
        row = {"trials": k * seeds, "seeds": seeds, "rs": rs}
        for d in DATASETS:
            per = [projected(r) for r in rs[d]]
            evals = [r["eval"] for r in rs[d] if r["status"] == "ok"]
            row[d] = {"sum2": sum(per) * seeds / 2 / 60, "sched": schedule(per * seeds) / 60,
                      "longest": max(per) / 60, "diverged": sum(r["status"] != "ok" for r in rs[d]),
                      "undiverged": schedule([undiverged(r, evals) for r in rs[d]] * seeds) / 60,
                      "train": sum(r["fixed"] + r["step_s"] * r["full_steps"] if r["status"] == "ok" else r["train"]
                                   for r in rs[d]) * seeds / 60,
                      "eval": sum(r["eval"] + r["other"] for r in rs[d]) * seeds / 60}
        for d in DATASETS:
            v = row[d]
            log(f"\n{d}: slot-minutes train {v['train']:.1f} + eval and other {v['eval']:.1f}; "
                f"quick run {v['sum2']:.1f} min (sum / 2), {v['sched']:.1f} min (2-slot schedule; longest trial "
                f"{v['longest']:.1f} min)" + (f"; {v['diverged']} cut trial(s) diverged, counted as measured: "
                                              f"{v['undiverged']:.1f} min if they ran to the end" if v["diverged"] else ""))
        if name in MEASURED_RUNS and not args.smoke:
            s, wall = MEASURED_RUNS[name]
            per = [projected(r) for r in rs["digits@8"]]
            log(f"digits, earlier whole run: {s} seeds took {wall} s of wall time (docs, commit 80459c0); projected here "
                f"{schedule(per * s):.0f} s (2-slot schedule, no Tune fixed cost)")
        summary[name] = row

    factors = {}
    checks = {n: o for n, o in RAY_CHECK.items() if n in summary and not args.smoke and not args.no_check}
    if checks:
        from tuner.run import parse_value
        log("\n## Check: full-length trials through tuner.run (mnist5k@28, seed 0, Ray, 1 CPU per trial, two at once) "
            "against their projections\n")
        log("| experiment | point | projected train + eval s | tuner.run rows' train + eval s | ratio |")
        log("|---|---|---|---|---|")
        for name, only in checks.items():
            ds = DATASETS["mnist5k@28"]
            wall, trials = ray_run(name, dict(ds), only, storage, f"check-{name}")
            wanted = [{k: parse_value(v) for k, v in (pair.split("=", 1) for pair in o.split(","))} for o in only]
            got_sum = proj_sum = 0.0
            for i, (point, r) in enumerate(zip(info[name]["points"], summary[name]["rs"]["mnist5k@28"])):
                if not any(all(point.get(k) == v for k, v in w.items()) for w in wanted):
                    continue
                (row, train, evaluation), = [t for t in trials if all(t[0].get(k) == v for k, v in point.items())]
                proj = projected(r) - r["other"]
                got_sum, proj_sum = got_sum + train + evaluation, proj_sum + proj
                log(f"| {name} | {info[name]['labels'][i]} | {proj:.1f} | {train + evaluation:.1f} "
                    f"({train:.1f} + {evaluation:.1f}) | {(train + evaluation) / proj:.2f}x |")
            factors[FAMILY[name]] = got_sum / proj_sum
            log(f"| {name} | both, tuner.run command wall {wall:.0f} s | {proj_sum:.1f} | {got_sum:.1f} | "
                f"**{got_sum / proj_sum:.2f}x** |")
        factors.setdefault("vpn", max(factors.values()))
        log("\nx Ray below: " + ", ".join(f"{f} {v:.2f}" for f, v in factors.items())
            + " (VPN: the larger; no VPN point was run in full, its ResNet18 trials take about 2 h each)")

    log("\n## Summary: the whole quick run on 2 cores, projected (2-slot schedule; sum / 2 in brackets)\n")
    log(f"verdict rule: fits in about an hour when the mnist5k@28 projection x Ray is at most {HOUR_LIMIT_MIN:.0f} "
        "min; 'no divergence' counts every diverged cut trial as run to the end\n")
    log("| experiment | trials | digits@8 min | mnist5k@28 min | ratio | mnist5k@28 x Ray min | x Ray, no divergence "
        "| mnist5k@28 verdict |")
    log("|---|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        a, b = row["digits@8"], row["mnist5k@28"]
        factor = factors.get(FAMILY.get(name, ""), 1.0)
        verdict = "fits in about an hour" if b["sched"] * factor <= HOUR_LIMIT_MIN else "does not fit in about an hour"
        log(f"| {name} | {row['trials']} | {a['sched']:.1f} ({a['sum2']:.1f}) | {b['sched']:.1f} ({b['sum2']:.1f}) "
            f"| {b['sched'] / a['sched']:.1f}x | {b['sched'] * factor:.1f} | {b['undiverged'] * factor:.1f} | {verdict} |")
    log(f"\ntotal bench wall time {time.perf_counter() - t_start:.0f} s; /proc/pressure/cpu at the end: "
        + Path("/proc/pressure/cpu").read_text().splitlines()[0])
    shutil.rmtree(storage, ignore_errors=True)
    log.save(args.out)


if __name__ == "__main__":
    main()

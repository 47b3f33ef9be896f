"""Grid cost: grid_ebm's quick grid through tuner.run against the naive Tune layout.

tuner.run trains once per alpha_train and evaluates every alpha_test on that model (4 trials);
the naive layout is one Ray trial per (alpha_train, alpha_test) cell that retrains each time
(16 trials). Both run as one command, timed from process start to exit, with a local Ray, 1 CPU
per trial and as many trials at once as Ray has CPUs. The naive layout is written here on
purpose, from the registry's cells and tuner.trial's config builder, and the bench checks that
both layouts give the same accuracy in every cell: one grid, laid out two ways.

    python bench/grid_cost.py --out bench/results/grid_cost_cpu.txt   # ~8 min on 2 CPU cores
    python bench/grid_cost.py --steps 1500    # the real quick preset (~45 min on 2 cores)
    python bench/grid_cost.py --smoke         # ~4 min: 5 steps, 40 test images, n <= 10

Training is cut (default 100 of the preset's 1500 steps) so that the bench fits in 10 minutes;
evaluation is the quick preset's, unchanged. Per-trial Ray overhead comes from two tuner.run
sweeps of near-zero work and different trial counts (see `overhead`). The 20 x 20 paper-grid
numbers are a projection from the measured costs and are printed as one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import Report  # noqa: E402
from tuner import registry  # noqa: E402
from tuner.trial import _reporter, eval_seed, trial_point  # noqa: E402

EXPERIMENT, PRESET, SEED = "grid_ebm", "quick", 0
SMOKE = {"test_limit": 40, "n_checkpoints": (1, 10)}
TINY = {"steps": 1, "test_limit": 20, "n_checkpoints": (1,)}  # near-zero work per trial
# CIFAR-10, the paper preset's data set (not loaded here): training images per class, test images.
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST = 5000, 10000


def timed(cmd: list[str], log_path: Path) -> float:
    """Wall seconds of a command, its output kept in log_path; a failure stops the bench."""
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        sys.exit(f"{' '.join(cmd)} failed (rc {rc}); end of {log_path}:\n{tail}")
    return wall


def run_tuner(tmp: Path, name: str, overrides: dict, seeds: int = 1) -> tuple[float, pd.DataFrame]:
    """`python -m tuner.run grid_ebm --preset quick ...`: wall seconds and its result rows."""
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v!r}")]
    cmd = [sys.executable, "-m", "tuner.run", EXPERIMENT, "--preset", PRESET, "--storage", str(tmp),
           "--name", name, "--seeds", str(seeds), *sets]
    wall = timed(cmd, tmp / f"{name}.log")
    parts = sorted((tmp / name / "results").glob("part-*.parquet"))
    df = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    if (df["status"] != "ok").any():
        sys.exit(f"{name}: rows not ok: {df.loc[df['status'] != 'ok', 'message'].iloc[0]}")
    return wall, df


def per_trial(df: pd.DataFrame) -> pd.DataFrame:
    """Train and eval seconds per trial; a setting's rows repeat its eval_seconds once per n."""
    settings = df.drop_duplicates(["trial_key", "alpha_test"])
    return settings.groupby("trial_key").agg(train_s=("train_seconds", "first"), eval_s=("eval_seconds", "sum"))


# --- the naive layout, run in its own process (`--naive-json`) as tuner.run runs in its own -----

def naive_trial(config: dict) -> None:
    """One cell: the trial's configs built as tuner.run builds them, one training, one test setting."""
    import torch
    from ray import tune
    config = config | config["cell"]  # {"point": {"alpha_train": a}, "test": {...}}
    exp = registry.get(config["experiment"])
    method = registry.method_of(exp)
    point = trial_point(config, exp.space(config["preset"]))
    cfg, ecfg, _ = registry.trial_configs(exp, config["preset"], point, config["overrides"])
    torch.set_num_threads(1)  # a tuner.run trial uses int(cpus per trial) threads
    t0 = time.perf_counter()
    data = method.load_data(cfg)
    t1 = time.perf_counter()
    result = method.train(cfg, data, _reporter(30.0), None)  # same progress reports and checkpoints
    t2 = time.perf_counter()
    rows = method.evaluate(result.model, data, [method.check_setting(config["test"])], cfg, ecfg,
                           eval_seed(ecfg, point["seed"]))
    t3 = time.perf_counter()
    tune.report({"load_seconds": t1 - t0, "train_seconds": t2 - t1, "eval_seconds": t3 - t2,
                 **{f"acc_n{r['n']}": r["accuracy"] for r in rows}, "done": True})


def naive_main(overrides: dict, out: Path) -> None:
    """A Tune grid over every (alpha_train, test setting) cell of the quick grid, 1 CPU per trial."""
    import ray
    from ray import tune
    space = registry.get(EXPERIMENT).space(PRESET)
    cells = [{"point": p, "test": t} for p in space.train for t in space.tests(p)]
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # as tuner.run
    ray.init(log_to_driver=False)
    base = {"experiment": EXPERIMENT, "preset": PRESET, "seed": SEED, "overrides": overrides}
    tuner = tune.Tuner(tune.with_resources(naive_trial, {"cpu": 1, "gpu": 0}),
                       param_space=base | {"cell": tune.grid_search(cells)},
                       # tuner.run reuses actors too: the two layouts differ in the grid only.
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="naive", storage_path=str(out.parent / "naive"),
                                                 failure_config=tune.FailureConfig(max_failures=2), verbose=1))
    grid = tuner.fit()
    slots = ray.cluster_resources().get("CPU", 0)
    ray.shutdown()
    rows = []
    for r in grid:
        if r.error:
            raise r.error
        cell = r.config["cell"]
        rows.append({"alpha_train": cell["point"]["alpha_train"], "alpha_test": cell["test"]["alpha"]}
                    | {k: v for k, v in r.metrics.items() if k.endswith("_seconds") or k.startswith("acc_n")})
    out.write_text(json.dumps({"slots": slots, "rows": rows}))


def run_naive(tmp: Path, overrides: dict) -> tuple[float, int, pd.DataFrame]:
    out = tmp / "naive.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--naive-json", str(out), "--overrides",
           json.dumps(overrides)]
    wall = timed(cmd, tmp / "naive.log")
    got = json.loads(out.read_text())
    return wall, int(got["slots"]), pd.DataFrame(got["rows"])


# --- analysis -----------------------------------------------------------------------------------

def same_accuracy(ours: pd.DataFrame, naive: pd.DataFrame) -> tuple[int, float]:
    """(cells x n compared, max |accuracy difference|): zero when both layouts ran the same grid."""
    diffs = []
    for r in naive.itertuples():
        for col in [c for c in naive.columns if c.startswith("acc_n")]:
            hit = ours[(ours.alpha_train == r.alpha_train) & (ours.alpha_test == r.alpha_test)
                       & (ours.n == int(col[5:]))]
            if len(hit) != 1:
                sys.exit(f"cell ({r.alpha_train}, {r.alpha_test}) {col}: {len(hit)} rows in tuner.run's results")
            diffs.append(abs(float(hit.accuracy.iloc[0]) - getattr(r, col)))
    return len(diffs), max(diffs)


def overhead(tmp: Path, seeds: tuple[int, int], slots: int) -> dict:
    """Ray's cost, from two tuner.run sweeps of near-zero work with k1 < k2 trials.

    wall = F + (k / slots) * (w + o): F is the command's fixed cost (interpreter, imports,
    ray.init, shutdown), w the measured in-trial train + eval seconds, o what else a trial costs
    a CPU slot (actor start or reuse, data loading, reports, result writing). The slope between
    the two sweeps gives w + o, so o needs no guess at F; F is the intercept.
    """
    runs = []
    for s in seeds:
        wall, df = run_tuner(tmp, f"tiny-{s}", TINY, seeds=s)
        t = per_trial(df)
        runs.append({"trials": len(t), "wall": wall, "work": float((t.train_s + t.eval_s).sum())})
    (a, b) = runs
    slope = (b["wall"] - a["wall"]) / (b["trials"] - a["trials"])  # wall s per extra trial
    o = slope * slots - (b["work"] - a["work"]) / (b["trials"] - a["trials"])
    fixed = a["wall"] - a["trials"] * slope
    return {"runs": runs, "per_trial": o, "fixed": fixed}


def projection(k: int, train: float, o: float, e: float, e0: float, fixed: float, slots: int) -> tuple:
    """Wall seconds of a k x k grid (one clean test setting per row) in both layouts.

    CPU-slot seconds: ours = k (T + o) + k ((k-1) e + e0); naive = k^2 (T + o) + k ((k-1) e + e0);
    wall = F + slot-seconds / slots (slots kept busy). A cell's evaluation is the same work in
    both layouts, so naive / ours reaches k only when evaluation and F are free.
    """
    evals = k * ((k - 1) * e + e0)
    ours = fixed + (k * (train + o) + evals) / slots
    naive = fixed + (k * k * (train + o) + evals) / slots
    return ours, naive, naive / ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="training steps (the quick preset has 1500)")
    p.add_argument("--smoke", action="store_true", help="5 steps, 40 test images, n <= 10: checks the bench")
    p.add_argument("--out", default=None, help="also write the output to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary storage folder")
    p.add_argument("--naive-json", help=argparse.SUPPRESS)
    p.add_argument("--overrides", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_json:
        naive_main({k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.overrides).items()},
                   Path(args.naive_json))
        return
    import ray
    import torch
    steps = 5 if args.smoke else args.steps
    overrides = {"steps": steps} | (SMOKE if args.smoke else {})
    tmp = Path(tempfile.mkdtemp(prefix="grid_cost-", dir="/tmp"))
    t_start = time.perf_counter()
    log = Report(f"grid_cost: {EXPERIMENT} --preset {PRESET}", f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                 f"ray {ray.__version__}, python {platform.python_version()}")
    log(f"command: python bench/grid_cost.py {' '.join(sys.argv[1:])}")
    log(f"overrides of the quick preset in both layouts: {overrides}; seed {SEED}; 1 CPU per trial")

    wall_o, rows_o = run_tuner(tmp, "ours", overrides)
    wall_n, slots, naive = run_naive(tmp, overrides)
    t_o = per_trial(rows_o)
    log(f"Ray CPU slots: {slots}; temporary storage {tmp}")
    log("\n## Measured: the same grid in two layouts\n")
    log("| layout | trainings | trials | wall s | train s (sum) | eval s (sum) | other slot-s per trial |")
    log("|---|---|---|---|---|---|---|")
    for label, wall, tr, ev in (("tuner.run (train once per alpha_train)", wall_o, t_o.train_s, t_o.eval_s),
                                ("naive (one trial per cell)", wall_n, naive.train_seconds, naive.eval_seconds)):
        other = (slots * wall - tr.sum() - ev.sum()) / len(tr)
        log(f"| {label} | {len(tr)} | {len(tr)} | {wall:.1f} | {tr.sum():.1f} | {ev.sum():.1f} | {other:.1f} |")
    log("\nother slot-s per trial = (slots x wall - train - eval) / trials: the command's start and Ray "
        "start-up,\nper-trial overhead, data loading, and slots left idle, spread over the trials.")
    log(f"\nwall-time ratio naive / tuner.run at {steps} steps: {wall_n / wall_o:.2f}x")
    compared, worst = same_accuracy(rows_o, naive)
    log(f"same grid: {compared} (cell, n) accuracies compared, max |difference| = {worst:.3g}"
        + (" (bitwise equal)" if worst == 0 else ""))

    ov = overhead(tmp, (1, 3) if args.smoke else (1, 16), slots)
    # What F is made of: the same interpreter and imports (`--list` imports the trainables), and a
    # bare local Ray start and stop.
    t_imports = timed([sys.executable, "-m", "tuner.run", "--list"], tmp / "list.log")
    t_ray = timed([sys.executable, "-c", "import ray; ray.init(log_to_driver=False); ray.shutdown()"],
                  tmp / "ray.log")
    load = float(naive.load_seconds.mean())
    log("\n## Measured: Ray overhead (tuner.run, near-zero work: " + ", ".join(f"{k}={v}" for k, v in TINY.items())
        + ")\n")
    log("| sweep | trials | wall s | in-trial train + eval s (sum) |")
    log("|---|---|---|---|")
    for r in ov["runs"]:
        log(f"| seeds {r['trials'] // 4} | {r['trials']} | {r['wall']:.1f} | {r['work']:.2f} |")
    log(f"\nper-trial overhead o = {ov['per_trial']:.2f} CPU-slot seconds (slope between the sweeps x {slots} "
        f"slots - in-trial work); {ov['per_trial'] / slots:.2f} s of wall time per trial with {slots} slots busy;"
        f"\nof which data loading: {load:.2f} s (mean in the naive trials; a reused actor has the loaders imported).")
    log(f"fixed cost F of one tuner.run command (the intercept): {ov['fixed']:.1f} s; alone, "
        f"`python -m tuner.run --list` (interpreter + imports)\ntakes {t_imports:.1f} s and a bare "
        f"`ray.init(); ray.shutdown()` {t_ray:.1f} s; the rest is Tune's setup and teardown, result files "
        "and the summary.")

    # Projection inputs, all measured above.
    o = ov["per_trial"]
    t_step = float(t_o.train_s.mean()) / steps
    settings = rows_o.drop_duplicates(["trial_key", "alpha_test"])
    e, e0 = (float(settings.loc[pick, "eval_seconds"].mean()) for pick in
             (settings.alpha_test > 0, settings.alpha_test == 0))
    en, e0n = (float(naive.loc[pick, "eval_seconds"].mean()) for pick in
               (naive.alpha_test > 0, naive.alpha_test == 0))
    images, n_max = int(rows_o.test_images.iloc[0]), int(rows_o.n.max())
    pcfg, pecfg, _ = registry.trial_configs(registry.get(EXPERIMENT), "paper", {"alpha_train": 0.0, "seed": 0}, {})
    p_steps = pcfg.epochs * -(-CIFAR_TRAIN_PER_CLASS // pcfg.batch_size)
    batch = int(rows_o.batch_size.iloc[0])
    p_train = t_step * p_steps * pcfg.batch_size / batch  # per image-pass cost at 8 px, paper counts
    p_eval = (CIFAR_TEST * pecfg.n_checkpoints[-1]) / (images * n_max)
    cases = [
        (f"4 x 4, this bench ({steps} steps; checks the model)", 4, t_step * steps, e, e0),
        ("20 x 20, quick protocol (1500 steps, n <= 100, 450 test images)", 20, t_step * 1500, e, e0),
        (f"20 x 20, paper preset counts ({p_steps} steps x {pcfg.batch_size}, n <= {pecfg.n_checkpoints[-1]}, "
         f"{CIFAR_TEST} test images)", 20, p_train, e * p_eval, e0 * CIFAR_TEST / images),
        ("20 x 20, quick protocol, evaluation free (the bound)", 20, t_step * 1500, 0.0, 0.0),
    ]
    log(f"\n## Projection (a model, not a measurement): wall seconds of a k x k grid on {slots} slots\n")
    log(f"inputs measured above: {t_step:.4f} s per training step (batch {batch}/class, 10 classes, 1 thread); "
        f"eval {e:.2f} s per noisy test setting\n({e0:.2f} s for alpha_test = 0) in tuner.run, used for both "
        f"layouts (a cell's evaluation is the same work;\nmeasured alone in a naive trial: {en:.2f} s and "
        f"{e0n:.2f} s); o = {o:.2f} s per trial.")
    log(f"wall = F + slot-s / {slots}, F = {ov['fixed']:.1f} s;  slot-s: ours = k (T + o) + k ((k-1) e + e0), "
        "naive = k^2 (T + o) + k ((k-1) e + e0);\nso without F, ratio ~ k (T + o + E) / (T + o + k E), "
        "E = mean eval per cell.")
    log("\n| grid | T s per training | eval s per noisy cell | tuner.run wall s | naive wall s | ratio |")
    log("|---|---|---|---|---|---|")
    for label, k, train, pe, pe0 in cases:
        ours, nv, ratio = projection(k, train, o, pe, pe0, ov["fixed"], slots)
        log(f"| {label} | {train:.1f} | {pe:.1f} | {ours:.0f} | {nv:.0f} | {ratio:.2f}x |")
    log("\nThe paper-preset row scales the 8 px costs per image pass by pass counts (training steps x batch; "
        "test images x n);\nimage size multiplies both alike (F and o excepted). The ratio approaches k = 20 only when "
        "k x eval per cell\nis small against a training: evaluation is paid once per cell in both layouts.")
    log(f"\ntotal bench wall time {time.perf_counter() - t_start:.0f} s")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    log.save(args.out)


if __name__ == "__main__":
    main()

"""`python -m tuner.run EXPERIMENT`: run a registered experiment as a Ray Tune sweep.

Everything the command is given is checked before Ray starts; a bad value ends with one line
that names the field and its allowed values. On a cluster, `ray job submit -- python -m
tuner.run grid_ebm` connects to it (RAY_ADDRESS is set by the job); elsewhere a local Ray
instance starts. The same command run again resumes the experiment.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import logging
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from tuner import registry
from tuner.store import ResultStore, trial_key
from trainables.checks import ConfigError, check_choice

DEFAULT_SEEDS = {"paper": 10}  # seeds of a preset when --seeds is not given; other presets 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")  # \Z: "$" would let "name\n" through
SHOWN_RATES = 6  # rate rows --dry-run names (a sweep over many models uses many)
MAX_SEEDS = 1000  # seeds are per-run counts like 10; a typo like --seeds 1000000000 must not plan forever


class _Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line, like every other refusal of the CLI (no usage block)."""

    def error(self, message):
        self.exit(2, f"error: {' '.join(message.splitlines())}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m tuner.run", description=__doc__.splitlines()[0])
    p.add_argument("experiment", nargs="?", help="registered experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list experiments with trial counts per preset")
    p.add_argument("--preset", default="paper", help="one of the method's presets, e.g. paper | quick | smoke "
                   "(default paper)")
    p.add_argument("--dataset", help="data set (shortcut for --set dataset=NAME)")
    p.add_argument("--seeds", default=None, help="a count N (seeds 0..N-1) or a list like 0,3,7")
    p.add_argument("--storage", default="results", help="results folder or URI (s3://...); default ./results")
    p.add_argument("--name", default=None, help="run name under storage (default: EXPERIMENT-PRESET)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="fraction of a GPU per trial")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-concurrent", type=int, default=0, help="0 = as many as resources allow")
    p.add_argument("--search", default=None, help="grid | optuna (default: the experiment's)")
    p.add_argument("--num-samples", type=int, default=20, help="trials for --search optuna")
    p.add_argument("--resume", default="auto", help="auto | never")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0,
                   help="seconds between a training's checkpoints (a retried trial resumes from the last)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every checkpoint of every trial under RUN/tune/ (default: a running trial keeps "
                   "its latest only, and a finished trial's are deleted once its Parquet part is written)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--dry-run", action="store_true", help="print the trials and the work, start nothing")
    p.add_argument("--progress-seconds", type=float, default=30.0,
                   help="seconds between progress lines (also printed at each trial's end)")
    p.add_argument("--verbose", action="store_true", help="Tune's own status and trial tables as well")
    p.add_argument("--backend", default="ray", help="ray (a Tune sweep) | local (grid trials in a pool of "
                   "plain processes, no Ray needed: one GPU box, or a machine without Ray)")
    p.add_argument("--workers", type=int, default=1, help="trials at once with --backend local")
    p.add_argument("--only", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                   help="run only the grid trials that match: the fields of one --only must all match, and "
                   "a trial runs if any --only matches (e.g. --only seed=1 --only seed=2,FIELD=VALUE); "
                   "trial keys stay those of the whole sweep, so a later run without --only skips them")
    return p.parse_args(argv)


def parse_value(text: str):
    """A Python literal (number, bool, tuple, list, None) when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # {[]: 1}, ------1, ...
        return text


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; allowed: --set field=value, e.g. --set epochs=5")
        value = parse_value(value.strip())
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def parse_seeds(text: str | None, preset: str, defaults: dict | None = None) -> list[int]:
    """--seeds as a list; without it, the experiment's default count for the preset (else the service's)."""
    if text is None:
        return list(range((DEFAULT_SEEDS | (defaults or {})).get(preset, 1)))
    value = parse_value(text)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SEEDS:
        return list(range(value))
    if (isinstance(value, tuple) and 0 < len(value) <= MAX_SEEDS
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in value)):
        return sorted(set(value))
    hint = f" (for seed {value} alone, write --seeds {value},)" if value == 0 else ""
    raise ConfigError(f"seeds={text!r} is not allowed{hint}; allowed: a count in [1, {MAX_SEEDS}] or a list of "
                      "seeds in [0, 2**63) like 0,1,2")


def select(points: list[dict], only: list[str]) -> list[dict]:
    """The points that match any of the --only conjunctions (all of them when there is none).
    Refuses a field that is not swept and a value no point takes, naming the allowed ones."""
    if not only:
        return points
    wanted = []
    for item in only:
        conj = {}
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"--only {item!r} is not FIELD=VALUE[,FIELD=VALUE]; allowed: e.g. "
                                  "--only seed=1,FIELD=VALUE with swept fields (see --dry-run)")
            taken = sorted({p[key] for p in points if key in p}, key=repr)
            if not taken:
                swept = sorted({k for p in points for k in p})
                raise ConfigError(f"only={key!r} is not swept here; allowed: {', '.join(swept)}")
            value = parse_value(value.strip())
            if value not in taken:
                raise ConfigError(f"only {key}={value!r} matches no trial; allowed: {', '.join(map(repr, taken))}")
            conj[key] = value
        wanted.append(conj)
    chosen = [p for p in points if any(all(p.get(k) == v for k, v in conj.items()) for conj in wanted)]
    if not chosen:
        raise ConfigError(f"only={only!r} matches no trial together; allowed: field values that some trial "
                          "takes at once (see --dry-run)")
    return chosen


class Plan:
    """Everything a run needs, validated: built before Ray starts, so bad input costs nothing."""

    def __init__(self, args: argparse.Namespace):
        self.exp = registry.get(args.experiment)
        self.method = registry.method_of(self.exp)
        check_choice("preset", args.preset, self.method.presets)
        check_choice("resume", args.resume, ("auto", "never"))
        check_choice("backend", args.backend, ("ray", "local"))
        self.search = args.search or self.exp.search
        check_choice("search", self.search, ("grid", "optuna"))
        if args.backend == "local" and self.search != "grid":
            raise ConfigError(f"search={self.search!r} needs Tune; allowed with --backend local: grid")
        if isinstance(args.workers, bool) or args.workers < 1:
            raise ConfigError(f"workers={args.workers} is out of range; allowed: integers >= 1")
        self.preset = args.preset
        self.space = self.exp.space(args.preset)
        if self.search == "optuna" and not self.space.optuna:
            raise ConfigError(f"search='optuna' is not available for {self.exp.name}; allowed: grid")
        if self.search == "grid" and not self.space.train:
            raise ConfigError(f"search='grid' is not available for {self.exp.name}; allowed: optuna")
        self.overrides = parse_overrides(args.set)
        if args.dataset:
            self.overrides["dataset"] = args.dataset
        for field_name, value in (("num_samples", args.num_samples), ("max_failures", args.max_failures),
                                  ("max_concurrent", args.max_concurrent)):
            if isinstance(value, bool) or value < (1 if field_name == "num_samples" else 0):
                raise ConfigError(f"{field_name}={value} is out of range; allowed: integers >= "
                                  f"{1 if field_name == 'num_samples' else 0}")
        for field_name in ("checkpoint_seconds", "progress_seconds"):
            if not 0 < getattr(args, field_name) < float("inf"):
                raise ConfigError(f"{field_name}={getattr(args, field_name)} is out of range; allowed: a number > 0")
        if self.search == "optuna" and "://" in args.storage:
            raise ConfigError("search='optuna' keeps its study in a local SQLite file; allowed: a local --storage")
        if not 0 < args.cpus_per_trial < float("inf") or (  # "not <" also refuses nan
                args.gpus_per_trial is not None and not 0 <= args.gpus_per_trial < float("inf")):
            raise ConfigError("cpus_per_trial must be > 0 and gpus_per_trial >= 0; allowed: e.g. 1 and 0.25")
        swept = {k for point in self.space.train for k in point} | set(self.space.optuna or {}) | {"seed"}
        clash = sorted(swept & set(self.overrides))
        if clash:
            raise ConfigError(f"{', '.join(clash)} is swept by {self.exp.name}; allowed: --set of other fields")
        self.seeds = parse_seeds(args.seeds, args.preset, self.exp.default_seeds)
        if args.only and self.search != "grid":
            raise ConfigError("only= picks grid trials; allowed with --only: --search grid")
        self.points = select(self._points(), args.only)
        for point in self.points:  # every trial's configs, so a bad value fails here
            self.configs(point)
        self.name = args.name or f"{self.exp.name}-{args.preset}"
        if not SAFE_NAME.match(self.name):
            raise ConfigError(f"name={self.name!r} is not allowed; allowed: letters, digits, '_', '-', '.' "
                              "(starting with a letter or digit, at most 100)")
        if "://" not in args.storage:  # trials run in other working folders
            args.storage = os.path.abspath(args.storage)
        self.store = ResultStore(args.storage, self.name)
        self.args = args

    def _points(self) -> list[dict]:
        if self.search == "grid":
            return [dict(p) | {"seed": s} for s in self.seeds for p in self.space.train]
        mid = {k: (v[1] + v[2]) / 2 if v[0] == "uniform" else v[1][0] for k, v in self.space.optuna.items()}
        return [mid | {"seed": self.seeds[0]}]  # a representative point, validated only

    def cells(self, points: list[dict] | None = None) -> list[dict]:
        """Points as trial cells ({"seed", "point"}), the form run_trial and Tune's cell list take."""
        return [{"seed": p["seed"], "point": {k: v for k, v in p.items() if k != "seed"}}
                for p in (self.points if points is None else points)]

    def configs(self, point: dict):
        """(train config, eval config, test settings) of one trial, refusing bad values."""
        return registry.trial_configs(self.exp, self.preset, point, self.overrides)

    def check_data(self) -> None:
        """Load the first trial's data once, in the driver, before Ray starts: a data set that is
        missing (and cannot be downloaded) is one ConfigError line here, not a failure per trial.
        Trials of one experiment share their data set; a --set that changes it applies to all."""
        cfg, _, _ = self.configs(self.points[0])
        self.method.load_data(cfg)

    def error_message(self, point: dict) -> str | None:
        """The message of a trial's error row ("ErrorClass: message"), if its part holds one."""
        table = self.store.read_part(trial_key(self.exp.name, self.preset, point, self.overrides))
        if table is None or "message" not in table.column_names:
            return None
        return next((m for m in table.column("message").to_pylist() if m), None)

    def missing(self, readable: set[str] | None = None) -> list[dict]:
        """Grid trials ({"seed", "point"}) without a readable part file (any status). `readable`:
        the part paths already known to read, so that they are not read again."""
        if self.search != "grid":
            return []

        def has_part(key: str) -> bool:
            if readable is not None:
                return self.store.part_path(key) in readable
            return self.store.read_part(key) is not None
        return self.cells([p for p in self.points
                           if not has_part(trial_key(self.exp.name, self.preset, p, self.overrides))])

    def work(self) -> str:
        """A one-line estimate of the work: trainings, test-setting evaluations, the method's words."""
        cfg, ecfg, settings = self.configs(self.points[0])
        if self.search == "optuna":
            return (f"{self.args.num_samples} Optuna trials, one training each; per trial: "
                    f"{self.method.describe(cfg, ecfg, settings)}")
        evaluations = sum(len(self.space.tests(p)) for p in self.points)
        return (f"{len(self.points)} trainings, {evaluations} test-setting evaluations; first trial: "
                f"{self.method.describe(cfg, ecfg, settings)}")

    def projection(self) -> list[str]:
        """--dry-run's lines on what the sweep will cost on the devices at hand: every trial's
        Method.cost (measured rates, trainables/cost.py) summed into a wall time, and the rate rows
        used. A trial the method cannot price is named, never guessed."""
        if self.method.cost is None:
            return [f"projected: no projection ({self.method.name} prices no trials)"]
        import torch
        from trainables.cost import device_at_hand, projection_lines
        # A trial's threads, at most this machine's cores (a measurement made now cannot use more;
        # an absurd --cpus-per-trial must not reach torch.set_num_threads, which takes a C int).
        threads = max(1, min(int(self.args.cpus_per_trial), os.cpu_count() or 1))
        before = torch.get_num_threads()
        gpus = bool(self.args.gpus_per_trial)
        points = self.points if self.search == "grid" else self.points * self.args.num_samples
        estimates, device = [], None
        torch.set_num_threads(threads)  # as each trial runs (tuner.trial): a measurement made now runs so too
        try:
            for point in points:
                cfg, ecfg, settings = self.configs(point)
                device = device_at_hand(getattr(cfg, "device", "auto"), gpus)
                estimates.append(self.method.cost(cfg, ecfg, settings, device))
        finally:
            torch.set_num_threads(before)
        at_once = self.args.max_concurrent or (self.args.workers if self.args.backend == "local" else 0) \
            or max(1, (os.cpu_count() or 1) // threads)
        return projection_lines(estimates, device, threads, at_once, shown=SHOWN_RATES)


def run_metadata() -> dict:
    """Provenance written into every row."""
    import torch
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:  # --backend local runs where Ray is not installed
        ray_version = "not installed"
    try:
        version = metadata.version("noisetune")
    except metadata.PackageNotFoundError:
        version = "unknown"
    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    # A copy of the tree without .git (a GPU box the tree was sent to) names its commit and state in
    # NOISETUNE_GIT_COMMIT and NOISETUNE_GIT_DIRTY.
    commit = (git("rev-parse", "--short", "HEAD") or "").strip() or os.environ.get("NOISETUNE_GIT_COMMIT", "unknown")
    status = git("status", "--porcelain", "--untracked-files=no")  # uncommitted edits to tracked files
    if status is None and "NOISETUNE_GIT_DIRTY" in os.environ:
        status = "dirty" if os.environ["NOISETUNE_GIT_DIRTY"] == "true" else ""
    return {"noisetune_version": version, "git_commit": commit,
            "git_dirty": "unknown" if status is None else str(bool(status.strip())).lower(),
            "torch_version": torch.__version__, "ray_version": ray_version, "driver_host": socket.gethostname()}


def list_experiments() -> str:
    lines = [f"{'experiment':<20} {'method':<16} {'trainings per seed, by preset':<34} description"]
    for name, exp in registry.EXPERIMENTS.items():
        presets = registry.method_of(exp).presets
        counts = " ".join(f"{p}={len(exp.space(p).train) if exp.search == 'grid' else 'tpe'}" for p in presets)
        lines.append(f"{name:<20} {exp.method:<16} {counts:<34} {exp.description}")
    return "\n".join(lines)


def param_space(plan: Plan, meta: dict, resources_cpu: float, cells: list[dict] | None = None) -> dict:
    from ray import tune
    base = {"experiment": plan.exp.name, "preset": plan.preset, "overrides": plan.overrides,
            "storage": plan.args.storage, "name": plan.name, "meta": meta,
            "threads": max(1, int(resources_cpu)), "checkpoint_seconds": plan.args.checkpoint_seconds}
    if cells is not None:  # a chosen subset of (seed, point) pairs
        return base | {"cell": tune.grid_search(cells)}
    if plan.search == "grid":
        return base | {"seed": tune.grid_search(plan.seeds),
                       "point": tune.grid_search(list(plan.space.train))}
    dists = {k: tune.uniform(v[1], v[2]) if v[0] == "uniform" else tune.choice(v[1])
             for k, v in plan.space.optuna.items()}
    return base | {"seed": plan.seeds[0]} | dists


AUTH_NOTE = ("Ray's token authentication is on, as NoiseTune's cluster setups need it: ignore Ray's hint to opt "
             "out of it (a client of this cluster sets RAY_AUTH_MODE to token; README, 'On a cluster')")


class RayWords(logging.Filter):
    """Ray's start-up lines in NoiseTune's words: its hint to switch token authentication off is
    replaced by AUTH_NOTE, once; colour codes are kept only when the output is a terminal."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, terminal: bool, out=print):
        super().__init__()
        self.terminal, self.out, self.said = terminal, out, False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "RAY_AUTH_MODE" in message and "opt out" in message:  # Ray's hint to switch token auth off
            if not self.said:
                self.out(AUTH_NOTE, flush=True)
                self.said = True
            return False
        if not self.terminal and self.ANSI.search(message):
            record.msg, record.args = self.ANSI.sub("", message), ()
        return True


def checkpoint_pruner():
    """A Tune callback that deletes a completed trial's checkpoints (they only serve to resume it;
    its Parquet part is written before its last report). Local storage only: an object store's
    copies stay (num_to_keep=1 still bounds them to one per trial)."""
    from ray import tune

    class CheckpointPruner(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            path = trial.path
            if not path or "://" in str(path) or not os.path.isdir(path):
                return
            for entry in os.listdir(path):
                if entry.startswith("checkpoint_"):
                    shutil.rmtree(os.path.join(path, entry), ignore_errors=True)

    return CheckpointPruner()


def build_tuner(plan: Plan, meta: dict, cells: list[dict] | None = None, fresh: bool = False, progress=None):
    """A Tuner that resumes this run's Tune state when it can, else a new one.

    `cells` (a list of {"seed", "point"}) runs just those trials under a new Tune name; `fresh`
    sets aside Tune state that failed to restore. Returns (tuner, restored).
    """
    import ray
    from ray import tune
    from tuner.trial import run_trial
    gpus = plan.args.gpus_per_trial
    if gpus is None:
        gpus = plan.exp.gpu_per_trial if ray.cluster_resources().get("GPU", 0) > 0 else 0
    trainable = tune.with_resources(run_trial, {"cpu": plan.args.cpus_per_trial, "gpu": gpus})
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = "tune" if cells is None else f"tune-rerun-{stamp}"
    if plan.search == "optuna":  # the study, not Tune's state, carries an Optuna run on (optuna_remaining)
        name, fresh = f"tune-optuna-{stamp}", True
    local = "://" not in plan.args.storage
    if fresh and not local:
        name = f"tune-{stamp}"  # object stores cannot move a folder aside
    path = f"{plan.store.tune_path}/{name}"
    if fresh and local and os.path.isdir(path):
        shutil.move(path, f"{path}.broken-{stamp}")  # kept for inspection
    keep = plan.args.keep_checkpoints
    callbacks = ([progress] if progress is not None else []) + ([] if keep else [checkpoint_pruner()])
    run_config = tune.RunConfig(name=name, storage_path=plan.store.tune_path,
                                failure_config=tune.FailureConfig(max_failures=plan.args.max_failures),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if keep else 1),
                                callbacks=callbacks, stop=progress, verbose=1 if plan.args.verbose else 0)
    if cells is None and not fresh and plan.args.resume == "auto" and tune.Tuner.can_restore(path):
        try:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
            # A restored Tuner brings back the pickled RunConfig, callbacks included: this run's
            # progress callback and verbosity replace the old ones (Ray 2.60 has no public way).
            restored = getattr(tuner, "_local_tuner", None)
            if restored is not None:
                restored._run_config.callbacks, restored._run_config.stop = callbacks, progress
                restored._run_config.verbose = run_config.verbose
            print(f"resuming {path}", flush=True)
            return tuner, True
        except Exception as exc:  # half-written state from a killed driver: results are in the parts
            print(f"warning: Tune state at {path} cannot be restored ({type(exc).__name__}: {exc}); "
                  "starting afresh, trials with finished part files are skipped", flush=True)
            return build_tuner(plan, meta, fresh=True, progress=progress)
    if plan.args.resume == "never" and local and os.path.isdir(path):
        shutil.rmtree(path)  # Tune's state only; finished part files are replaced trial by trial
    search_alg, kwargs = None, {}
    if plan.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        class FinalOnlyOptuna(OptunaSearch):
            """Progress reports (epoch, loss) carry no metric: Optuna sees the final result only."""

            def on_trial_result(self, trial_id, result):
                if self.metric in result:
                    super().on_trial_result(trial_id, result)

        study = optuna.storages.RDBStorage(f"sqlite:///{plan.store.root}/optuna.db")
        done, remaining = optuna_remaining(plan)
        # Seeded by the trials already done: a continued study's sampler must not re-propose them.
        search_alg = FinalOnlyOptuna(metric=plan.exp.metric, mode=plan.exp.mode, study_name=plan.name,
                                     storage=study, seed=done)
        kwargs = {"num_samples": remaining}
    # reuse_actors: a trial reuses a finished trial's worker instead of starting a Python process
    # and importing torch again (seconds per trial on a small machine).
    tune_config = tune.TuneConfig(search_alg=search_alg, max_concurrent_trials=plan.args.max_concurrent or None,
                                  reuse_actors=True, **kwargs)
    space = param_space(plan, meta, plan.args.cpus_per_trial, cells)
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config), False


def optuna_remaining(plan: Plan) -> tuple[int, int]:
    """(complete trials already in the run's study, trials still to run for --num-samples).
    A second run of the same command continues the same study: TPE sees the earlier trials'
    values, and only the missing trials run (a larger --num-samples adds trials)."""
    import optuna
    path = f"{plan.store.root}/optuna.db"
    if not os.path.exists(path):
        return 0, plan.args.num_samples
    try:
        study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{path}")
    except KeyError:  # the database exists but holds no study of this name yet
        return 0, plan.args.num_samples
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return done, max(0, plan.args.num_samples - done)


def read_rows(plan: Plan) -> pd.DataFrame:
    """Every row of the run's part files (empty if none), by analysis.load (the compacted dataset
    while it is current; an unreadable part is warned about by name); attrs["parts"] is how many files."""
    if not plan.store.parts():
        return pd.DataFrame()
    from analysis.load import load  # here: the analysis package is not needed before a run ends
    return load(plan.store.results_location)


def summarize(plan: Plan, df: pd.DataFrame | None = None) -> str:
    """Status counts, and the experiment's metric (mean over seeds) on each trial's headline rows,
    by the method's summary columns that vary."""
    df = read_rows(plan) if df is None else df
    if df.empty:
        return "no result rows yet"
    lines = [f"{df.attrs['parts']} part files, {len(df)} rows; status: "
             + ", ".join(f"{k}={v}" for k, v in df.groupby("status")["trial_key"].nunique().items())]
    metric = plan.exp.metric
    ok = df[df["status"] == "ok"]
    if "headline" in ok:
        ok = ok[ok["headline"].fillna(False).astype(bool)]
    if len(ok) and metric in ok:
        present = [k for k in plan.method.summary_columns if k in ok]
        keys = [k for k in present if ok[k].nunique() > 1] or present[:1]
        values = ok.groupby(keys, dropna=False)[metric] if keys else ok[metric]
        table = values.agg(["mean", "count"])
        text = table.to_string() if keys else f"mean {table['mean']:.4g} over {int(table['count'])} rows"
        lines.append(f"{metric} of each trial's headline rows (mean over seeds):\n{text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_experiments())
        return 0
    try:
        if not args.experiment:
            raise ConfigError(f"experiment is missing; allowed: {', '.join(registry.EXPERIMENTS)}")
        plan = Plan(args)
        if args.dry_run:
            print(f"{plan.exp.name} --preset {plan.preset}: {plan.exp.description}")
            note(plan)
            for point in plan.points:
                label = f"trial {trial_key(plan.exp.name, plan.preset, point, plan.overrides)}" \
                    if plan.search == "grid" else "search space midpoint (checked)"
                print(f"  {label}: {point}")
            print(f"work: {plan.work()}")
            for line in plan.projection():
                print(line)
            print(f"results would go to {plan.store.results_location}")
            return 0
        plan.check_data()  # a missing data set is refused here, once, before anything is written
        plan.store.check()
        # Refuse another run's folder before the lock file is written: a refusal changes nothing.
        plan.store.claim(plan.exp.name, plan.preset, plan.overrides, plan.seeds, write=False)
        # Every refusal comes before this line: once it is printed, the run has started.
        print(f"{plan.exp.name} --preset {plan.preset}: run folder {plan.store.root}, "
              f"Parquet parts in {plan.store.results_location}", flush=True)
        note(plan)
        with contextlib.ExitStack() as held:
            held.enter_context(plan.store.lock())
            plan.store.claim(plan.exp.name, plan.preset, plan.overrides, plan.seeds)
            return sweep(plan)
    except ConfigError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line, whatever the message
        return 2


def peak_rss_mib() -> float:
    """This process's peak resident memory. /proc's VmHWM belongs to this program's own memory map;
    ru_maxrss is not used where VmHWM exists, because Linux carries it over exec from the process
    that forked us (a large pytest parent would be reported as the driver's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep(plan: Plan) -> int:
    """Run (or resume) the sweep; afterwards, run again any trial whose part file is missing."""
    for path in plan.store.unreadable_parts():
        moved = plan.store.quarantine(path)
        print(f"warning: unreadable part file {path.rsplit('/', 1)[-1]} moved to {moved}; its trial runs again",
              flush=True)
    total = len(plan.points)
    if plan.search == "optuna":
        db = f"{plan.store.root}/optuna.db"
        if plan.args.resume == "never" and os.path.exists(db):  # a new study; the old one kept aside
            os.replace(db, f"{db}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        done, total = optuna_remaining(plan)
        print(f"Optuna study {plan.name}: {done} complete trials kept, {total} to run for --num-samples "
              f"{plan.args.num_samples}", flush=True)
    elif plan.args.resume == "auto" and not plan.missing(readable=set(plan.store.parts())):  # the rest read above
        total = 0
        print(f"all {len(plan.points)} trials have part files", flush=True)
    if not total:  # a finished sweep run again: no cluster to start, nothing to wait for
        print("nothing to run; Ray not started", flush=True)
        return finish(plan)
    if plan.args.backend == "local":
        return run_local(plan)
    import ray
    from tuner.progress import Progress
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune's per-trial result.json, progress.csv and TensorBoard files repeat what the Parquet parts
    # hold; they cost ~22% of the driver's CPU time on 500 tiny trials, and 3.5x the files
    # (bench/results/tune_loggers_cpu.txt). TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings them back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if plan.args.checkpoint_seconds < 10:
        # Tune saves its own state (which checkpoint each trial has) every 10 s or more ("auto"): a
        # driver killed in between would restart a trial from an older checkpoint than it has.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(plan.args.checkpoint_seconds))
    if not plan.args.verbose:  # our progress lines instead of Tune's tables, boxes and tracebacks
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    plugins = os.environ.get(registry.PLUGINS_ENV)
    words = RayWords(terminal=sys.stderr.isatty())
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(words)
    ray.init(address=plan.args.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False,
             runtime_env={"env_vars": {registry.PLUGINS_ENV: plugins}} if plugins else None)
    meta = run_metadata()
    progress = Progress(plan.name, total, plan.exp.metric, plan.exp.mode, plan.args.progress_seconds,
                        explain=plan.error_message)
    # A slice (--only) runs just its trials under a Tune name of its own, never the whole sweep's state.
    tuner, restored = build_tuner(plan, meta, cells=plan.cells() if plan.args.only else None, progress=progress)
    try:
        tuner.fit()
    except Exception as exc:  # noqa: BLE001 - a restored state that breaks mid-run: start afresh
        if not restored:
            raise
        print(f"warning: resumed Tune run failed ({type(exc).__name__}: {exc}); starting afresh, "
              "trials with finished part files are skipped", flush=True)
        build_tuner(plan, meta, fresh=True, progress=progress)[0].fit()
    if progress.fatal:
        print(f"error: sweep stopped at its first unfixable fault: {progress.fatal}", file=sys.stderr, flush=True)
        return 1
    missing = plan.missing()
    if missing:  # Tune saw them finish, but their part files are gone or unreadable
        print(f"{len(missing)} finished trials have no readable part file; running them again", flush=True)
        build_tuner(plan, meta, cells=missing, progress=progress)[0].fit()
    return finish(plan)


def _exit_with_driver(driver_pid: int) -> None:
    """Pool initializer: a worker whose driver has died (killed, out of memory) exits within a
    second, rather than train on as an orphan beside the next driver of the same run folder."""
    import threading

    def watch():
        while os.getppid() == driver_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def run_local(plan: Plan) -> int:
    """Every grid trial in a pool of `--workers` spawned processes (spawn: CUDA works in each), no Ray.

    The trials, rows and part files are Tune's (tuner.trial.run_trial with local=True); a trial
    whose part is finished is skipped, one that fails is tried again up to --max-failures times,
    and a stopped run started again trains its unfinished trials from the start (no checkpoints).
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tuner.trial import run_trial
    base = {"experiment": plan.exp.name, "preset": plan.preset, "overrides": plan.overrides,
            "storage": plan.args.storage, "name": plan.name, "meta": run_metadata(),
            "threads": max(1, int(plan.args.cpus_per_trial)), "checkpoint_seconds": plan.args.checkpoint_seconds}
    todo = [base | cell for cell in plan.cells()]
    print(f"{len(todo)} trials on {plan.args.workers} local worker(s), no Ray", flush=True)
    failures, done, start = {}, 0, time.monotonic()
    with ProcessPoolExecutor(plan.args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_driver, initargs=(os.getpid(),)) as pool:
        running = {pool.submit(run_trial, c, True): c for c in todo}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                config = running.pop(future)
                label = f"seed={config['seed']} {config['point']}"
                if future.exception() is None:
                    done += 1
                    print(f"[{time.monotonic() - start:6.0f} s] {done}/{len(todo)} done: {label}", flush=True)
                    continue
                failures[label] = failures.get(label, 0) + 1
                print(f"trial {label} failed ({type(future.exception()).__name__}: {future.exception()}); "
                      f"attempt {failures[label]} of {plan.args.max_failures + 1}", flush=True)
                if failures[label] <= plan.args.max_failures:
                    running[pool.submit(run_trial, config, True)] = config
    return finish(plan)


def note(plan: Plan) -> None:
    """The method's line on what this preset can show, if it has one."""
    if plan.preset in plan.method.preset_notes:
        print(plan.method.preset_notes[plan.preset], flush=True)


DECIDING_SEEDS = 3  # seeds the first command to decide a claim runs (the reports' "run at least 3 seeds")


def decide_line(plan: Plan, df: pd.DataFrame | None = None) -> str:
    """For a grid run on fewer than DECIDING_SEEDS seeds, which command decides its claims and
    what it costs, from this run's own training time ('' otherwise)."""
    if plan.search != "grid" or len(plan.seeds) >= DECIDING_SEEDS or plan.args.only:
        return ""
    df = read_rows(plan) if df is None else df
    seconds = 0.0 if df.empty or "train_seconds" not in df else \
        float(df.drop_duplicates("trial_key")["train_seconds"].fillna(0.0).sum())
    per_seed = seconds / len(plan.seeds)
    extra = [s for s in range(DECIDING_SEEDS + len(plan.seeds)) if s not in plan.seeds][:DECIDING_SEEDS - len(plan.seeds)]
    seeds = ",".join(map(str, sorted(plan.seeds + extra)))
    command = (f"python -m tuner.run {plan.exp.name} --preset {plan.preset} --seeds {seeds} "
               f"--name {plan.name}-{DECIDING_SEEDS}seeds" + (f" --dataset {plan.args.dataset}" if plan.args.dataset else "")
               + "".join(f" --set {s}" for s in plan.args.set) + f" --storage {plan.args.storage}")
    return (f"{len(plan.seeds)} seed{'s' if len(plan.seeds) != 1 else ''}: the report can decide no claim (the verdict "
            f"rule's 95% interval over seeds needs {DECIDING_SEEDS}). To decide them:\n    {command}\n"
            f"about {_hours(per_seed * DECIDING_SEEDS)} of training in all (this run: {_hours(seconds)}), divided by "
            "the trials that run at once")


def _hours(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"


def finish(plan: Plan) -> int:
    print(f"\nresults: {plan.store.results_location}")
    try:  # the parts as one file for fast reads (tuner/compact.py); the parts are the record either way
        from tuner.compact import compact
        print(compact(plan.store), flush=True)
    except Exception as exc:  # noqa: BLE001 - a finished run never fails on its read cache
        print(f"not compacted ({type(exc).__name__}: {exc}); analysis.load reads the parts", flush=True)
    rows = read_rows(plan)  # one read (of the compacted file) for the summary and the deciding command
    print(summarize(plan, rows))
    print(f"driver peak RSS: {peak_rss_mib():.0f} MiB")
    note(plan)
    line = decide_line(plan, rows)
    if line:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Python's exit would run a last collection over every object torch, Ray and Tune made;
    # everything is written and closed by now, so leave them to the process's end.
    gc.freeze()
    sys.exit(code)

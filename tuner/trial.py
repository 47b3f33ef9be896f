"""One Ray Tune trial: train one configuration once, evaluate every test setting, write a part.

A 20 x 20 alpha grid is 20 trials per seed, not 400: the test settings of a trial are evaluated
on the one trained model. Progress goes to Tune after each epoch (at most once a second) with a
checkpoint every `checkpoint_seconds`, so a retried trial resumes from its last checkpoint.
A part file already holding final rows means the trial is done: it is not trained again.
Nothing here knows a family: the method's interface (trainables.common.Method) says the rest.
`run_trial(config, local=True)` is the same trial without Ray (`tuner.run --backend local`): no
progress reports, checkpoints or metrics, the same rows and part file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import traceback

import torch

from trainables.common import (STATUS_ERROR, STATUS_OK, config_row, load_checkpoint,
                               save_checkpoint)
from tuner import registry
from tuner.metrics import TrialMetrics
from tuner.store import ResultStore, trial_key


def trial_point(config: dict, space) -> dict:
    """The trial's point (training fields and seed) from its Tune config."""
    point = dict(config.get("point") or {}) | {k: config[k] for k in (space.optuna or {})}
    point["seed"] = config["seed"]
    return point


def eval_seed(ecfg, seed: int) -> int:
    """The evaluation seed: the eval config's `eval_seed` when it has one set, else the trial's seed."""
    value = getattr(ecfg, "eval_seed", None)
    return seed if value is None else value


def assemble(config: dict, run: dict, setting: dict, provenance: dict) -> dict:
    """One row: config | run columns | setting row | provenance. One column, one source: a column
    that two of them give (a method writing a config field, a run column a setting row repeats)
    is a ValueError, never a silent overwrite."""
    row, source = {}, {}
    for name, part in (("config", config), ("run columns", run), ("setting row", setting), ("trial", provenance)):
        for column, value in part.items():
            if column in source:
                raise ValueError(f"column {column!r} comes from both the {source[column]} and the {name}; "
                                 "a row column has one source")
            row[column], source[column] = value, name
    return row


def node_id() -> str:
    """The Ray node this trial runs on (hosts can share a name; node ids cannot), "" outside Ray."""
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def run_trial(config: dict, local: bool = False) -> None:
    """The Tune function trainable (`config` is one point of the service's param_space); with
    `local`, the same trial in a plain process (Ray is imported only when it is not local)."""
    if local:
        tune = _NO_TUNE
    else:
        from ray import tune
    config = config | (config.get("cell") or {})  # a re-run of chosen (seed, point) pairs
    exp = registry.get(config["experiment"])
    method = registry.method_of(exp)
    space = exp.space(config["preset"])
    point = trial_point(config, space)
    cfg, ecfg, settings = registry.trial_configs(exp, config["preset"], point, config["overrides"])
    store = ResultStore(config["storage"], config["name"])
    key = trial_key(exp.name, config["preset"], point, config["overrides"])
    meta = config["meta"] | {
        "family": method.family, "method": method.name, "experiment": exp.name, "preset": config["preset"],
        "trial_key": key, "trial_id": f"local-{key}" if local else tune.get_context().get_trial_id(),
        "host": os.uname().nodename, "node_id": "" if local else node_id(),
        "tune_metric": exp.metric, "tune_mode": exp.mode, "summary_by": json.dumps(list(method.summary_columns)),
        "overrides": json.dumps(config["overrides"], sort_keys=True, default=str)}  # the run's --set, readable
    table = store.read_part(key)
    if store.finished(table):
        tune.report({exp.metric: headline(method, table.to_pylist(), exp.metric, exp.mode), "skipped": True,
                     "settings": len(settings), "status": table.column("status")[0].as_py()})
        return
    watch = None if local else TrialMetrics(exp.name, config["name"], meta["trial_id"])
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    fields = config_row(cfg) | config_row(ecfg)
    evaluation_seed = eval_seed(ecfg, point["seed"])
    # Which columns are configuration (analysis keeps every one that varies apart, never pooled);
    # the eval config's eval_seed is written resolved, as provenance.
    trial_columns = meta | {"eval_seed": evaluation_seed, "config_columns": json.dumps(sorted(fields)),
                            "label": space.label(point) if space.label else ""}
    fields.pop("eval_seed", None)
    arrays = {}
    try:
        data = method.load_data(cfg)
        checkpoint = tune.get_checkpoint()
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = load_checkpoint(os.path.join(folder, "state.pt"))
        t0 = time.perf_counter()
        callback = None if local else _reporter(config.get("checkpoint_seconds", 30.0), watch)
        result = method.train(cfg, data, callback, state)
        train_seconds = time.perf_counter() - t0
        arrays = dict(result.artefacts)
        # The trial's final_loss is the last epoch's, unless the method measures its own.
        run = {"final_loss": result.history[-1] if result.history else float("nan")} | result.columns
        done = trial_columns | {"train_seconds": train_seconds, "epochs_done": result.epochs_done}
        if result.status == STATUS_OK:
            rows = method.evaluate(result.model, data, settings, cfg, ecfg, evaluation_seed)
            if isinstance(rows, tuple):  # (rows, arrays)
                rows, more = rows
                arrays |= more
            final = {id(r) for r in method.final_rows(rows)}
            # A config field that is also a setting column (e.g. a noise-sharing mode) is the default
            # of settings that do not name it: the setting row, which says what ran, carries it.
            defaults = set(fields) & set(method.setting_columns.values())
            rows = [assemble({k: v for k, v in fields.items() if k not in defaults or k not in r}, run, r,
                             done | {"status": STATUS_OK, "message": "", "headline": id(r) in final})
                    for r in rows]
        else:
            rows = [assemble(fields, run, {}, done | {"status": result.status, "message": result.message,
                                                      "headline": False})]
    except Exception as exc:
        # Left behind if every retry fails; a later successful attempt replaces it.
        store.write_part(key, [fields | trial_columns | {
            "status": STATUS_ERROR, "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:]}])
        if watch is not None:
            watch.finished(STATUS_ERROR, 1, exp.metric, float("nan"))
        raise
    store.write_part(key, rows, arrays)
    best = headline(method, rows, exp.metric, exp.mode)
    if watch is not None:
        watch.finished(rows[0]["status"], len(rows), exp.metric, best)
    tune.report({exp.metric: best, "status": rows[0]["status"], "done": True,
                 "settings": len(settings) if rows[0]["status"] == STATUS_OK else 0, "rows": len(rows)})


class _NoTune:
    """The three calls a local trial makes of Tune, answered without Ray."""

    @staticmethod
    def get_checkpoint():
        return None  # a local trial that was stopped trains again from the start

    @staticmethod
    def report(metrics: dict, checkpoint=None) -> None:
        pass


_NO_TUNE = _NoTune()


def headline(method, rows: list[dict], metric: str, mode: str) -> float:
    """The trial's headline for Tune: the best `metric` (by `mode`) over the method's final rows."""
    values = [r[metric] for r in method.final_rows([r for r in rows if r.get("status") in (None, STATUS_OK)])
              if r.get(metric) is not None and not (isinstance(r[metric], float) and math.isnan(r[metric]))]
    if not values:
        return float("nan")
    return max(values) if mode == "max" else min(values)


def _reporter(checkpoint_seconds: float, watch: TrialMetrics | None = None):
    """A training callback that reports progress and checkpoints every `checkpoint_seconds`."""
    from ray import tune
    last = {"report": 0.0, "checkpoint": time.monotonic()}

    def callback(progress) -> None:
        now = time.monotonic()
        if watch is not None:
            watch.epoch(now)
        metrics = dict(progress.metrics) | {"epoch": progress.epoch, "loss": progress.loss, "done_share": progress.done}
        if now - last["checkpoint"] >= checkpoint_seconds:
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(progress.state(), os.path.join(folder, "state.pt"))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            last["checkpoint"] = last["report"] = now
        elif now - last["report"] >= 1.0:
            tune.report(metrics)
            last["report"] = now

    return callback

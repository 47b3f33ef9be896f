"""A test-only method family that misbehaves on request (NOISETUNE_PLUGINS=tests.faulty).

It is a family of its own, with nothing in common with the EBM family: a training field `level`,
test settings {"shift": x} written to the column `shift_test`, a metric `error` that Tune
minimises, and an artefact (the loss history) beside each part. So it checks that the service
(tuner.run, Ray Tune, tuner.trial, the store, analysis.report) needs nothing family-specific.

Faults are injected at known points: a failure on the first attempt only, a failure on every
attempt, a NaN loss, an unfixable ConfigError (seed 2), slow epochs to kill a worker in. Every training start is logged to
`<log_dir>/trainings.log` (seed and the epoch it starts from) and the worker's PID to
`<log_dir>/pid-<seed>-<level>`, so tests can count trainings and kill exactly the process
running a trial.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from search_spaces.base import Experiment, Space
from trainables.checks import ConfigError, check_choice, check_int, check_keys, check_range
from trainables.common import STATUS_DIVERGED, STATUS_OK, Method, Progress, TrainResult, configs_from_preset

FAULTS = ("none", "fail_once", "always_fail", "nan", "by_seed", "unfixable_seed2")
BY_SEED = ("none", "fail_once", "always_fail", "nan")  # fault="by_seed": seed % 4 picks one


@dataclass(frozen=True)
class FaultyConfig:
    seed: int = 0
    level: float = 0.0
    fault: str = "none"
    epochs: int = 3
    epoch_seconds: float = 0.0
    log_dir: str = ""

    def __post_init__(self):
        check_choice("fault", self.fault, FAULTS)
        check_int("epochs", self.epochs, 1)


@dataclass(frozen=True)
class FaultyEvalConfig:
    repeats: int = 1  # evaluation "draws" (a field of the eval config, like any family's)


PRESETS = {"paper": {}, "quick": {}, "smoke": {}}


def configs(preset: str, overrides: dict):
    return configs_from_preset(PRESETS, FaultyConfig(), FaultyEvalConfig, preset, overrides)


def _log(cfg: FaultyConfig, name: str, text: str, append=True) -> None:
    if cfg.log_dir:
        with open(os.path.join(cfg.log_dir, name), "a" if append else "w") as f:
            f.write(text)


def train(cfg: FaultyConfig, data, callback=None, state=None) -> TrainResult:
    start = int(state["epoch"]) if state else 0
    fault = BY_SEED[cfg.seed % 4] if cfg.fault == "by_seed" else cfg.fault
    _log(cfg, f"pid-{cfg.seed}-{cfg.level}", str(os.getpid()), append=False)
    _log(cfg, "trainings.log", f"seed={cfg.seed} level={cfg.level} start={start}\n")
    if fault == "unfixable_seed2" and cfg.seed == 2:  # the same for every retry: the sweep must stop
        raise ConfigError("injected unfixable fault (fault=unfixable_seed2)")
    marker = os.path.join(cfg.log_dir, f"failed-{cfg.seed}-{cfg.level}")
    if fault == "always_fail" or (fault == "fail_once" and not os.path.exists(marker)):
        _log(cfg, os.path.basename(marker), "x")
        raise RuntimeError(f"injected failure (fault={fault}, seed={cfg.seed})")
    gen = torch.Generator().manual_seed(cfg.seed)
    history = list(state.get("history", [])) if state else []
    for epoch in range(cfg.epochs):
        loss = float(torch.rand((), generator=gen)) / (epoch + 1)  # the same stream whatever `start` is
        if epoch < start:
            continue
        time.sleep(cfg.epoch_seconds)
        if fault == "nan":
            loss = math.nan
        history.append(loss)
        if not math.isfinite(loss):
            return TrainResult(None, STATUS_DIVERGED, epoch + 1, history, message=f"loss {loss} at epoch {epoch + 1}")
        if callback is not None:
            callback(Progress(epoch + 1, loss, lambda e=epoch + 1, h=list(history): {"epoch": e, "history": h},
                              (epoch + 1) / cfg.epochs))
    return TrainResult({"seed": cfg.seed, "level": cfg.level}, STATUS_OK, cfg.epochs, history,
                       artefacts={"loss_history": np.array(history)})


def check_setting(setting: dict) -> dict:
    check_keys("test setting", setting, ("shift",))
    check_range("shift", setting.get("shift"), 0.0)
    return dict(setting)


def evaluate(model, data, settings, cfg, ecfg, eval_seed: int) -> list[dict]:
    """One row per test setting; the 'error' is a deterministic function of the configuration."""
    gen = torch.Generator().manual_seed(1000 * eval_seed + int(100 * cfg.level))
    return [{"shift_test": s["shift"], "error": float(torch.rand((), generator=gen)) + s["shift"]} for s in settings]


METHODS = [Method("faulty", "faulty", configs, lambda cfg: None, train, evaluate, check_setting,
                  setting_columns={"shift": "shift_test"}, summary_columns=("level", "shift_test"),
                  describe=lambda cfg, ecfg, settings: f"{cfg.epochs} epochs, {len(settings)} shifts",
                  diverging={"fault": "nan"})]


def _space(preset: str) -> Space:
    return Space([{"level": a} for a in (0.0, 0.5)], lambda point: [{"shift": s} for s in (0.0, 0.5)])


EXPERIMENTS = [Experiment("faulty_grid", "fault injection (tests only)", "faulty", _space, metric="error", mode="min")]


# Driver-side fault: with FAULTY_RESTORED_FIT_FAILS set, a Tune run restored from its saved state
# fails in the middle of fit(), after one trial has started (what a state that restores but is
# inconsistent does); the driver must fall back to a fresh run without losing finished parts.
if os.environ.get("FAULTY_RESTORED_FIT_FAILS"):
    from ray import tune as _tune

    _restore = _tune.Tuner.restore.__func__

    def _failing_restore(cls, *args, **kwargs):
        tuner = _restore(cls, *args, **kwargs)

        def fit():
            raise RuntimeError("injected: the restored run fails mid-way")

        tuner.fit = fit
        return tuner

    _tune.Tuner.restore = classmethod(_failing_restore)

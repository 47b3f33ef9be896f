"""A method that misbehaves on request, registered through NOISETUNE_PLUGINS=tests.faulty.

It exercises the real service path (tuner.run, Ray Tune, tuner.trial, the store) with faults
injected at known points: a failure on the first attempt only, a failure on every attempt, a NaN
loss, slow epochs to kill a worker in. Every training start is logged to `<log_dir>/trainings.log`
(seed and the epoch it starts from) and the worker's PID to `<log_dir>/pid-<seed>`, so tests can
count trainings and kill exactly the process running a trial.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

from search_spaces.base import Experiment, Space
from trainables.common import (STATUS_DIVERGED, STATUS_OK, Method, Progress, TrainResult,
                               configs_from_preset)
from trainables.noise import check_choice

FAULTS = ("none", "fail_once", "always_fail", "nan", "by_seed")
BY_SEED = ("none", "fail_once", "always_fail", "nan")  # fault="by_seed": seed % 4 picks one


@dataclass(frozen=True)
class FaultyConfig:
    seed: int = 0
    alpha_train: float = 0.0
    fault: str = "none"
    epochs: int = 3
    epoch_seconds: float = 0.0
    log_dir: str = ""

    def __post_init__(self):
        check_choice("fault", self.fault, FAULTS)


@dataclass(frozen=True)
class FaultyEvalConfig:
    eval_seed: int = 0


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
    _log(cfg, f"pid-{cfg.seed}-{cfg.alpha_train}", str(os.getpid()), append=False)
    _log(cfg, "trainings.log", f"seed={cfg.seed} alpha={cfg.alpha_train} start={start}\n")
    marker = os.path.join(cfg.log_dir, f"failed-{cfg.seed}-{cfg.alpha_train}")
    if fault == "always_fail" or (fault == "fail_once" and not os.path.exists(marker)):
        _log(cfg, os.path.basename(marker), "x")
        raise RuntimeError(f"injected failure (fault={fault}, seed={cfg.seed})")
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
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
            callback(Progress(epoch + 1, loss, lambda e=epoch + 1: {"epoch": e}))
    return TrainResult({"seed": cfg.seed, "alpha": cfg.alpha_train}, STATUS_OK, cfg.epochs, history)


def evaluate(model, data, settings, cfg, ecfg) -> list[dict]:
    """One row per test setting; the 'accuracy' is a deterministic function of the configuration."""
    gen = torch.Generator().manual_seed(1000 * cfg.seed + int(100 * cfg.alpha_train))
    return [{"alpha_test": s["alpha"], "n": 1, "accuracy": float(torch.rand((), generator=gen))}
            for s in settings]


METHODS = [Method("faulty", configs, lambda cfg: None, train, evaluate)]


def _space(preset: str) -> Space:
    return Space([{"alpha_train": a} for a in (0.0, 0.5)],
                 lambda point: [{"distribution": "gaussian", "alpha": a} for a in (0.0, 0.5)])


EXPERIMENTS = [Experiment("faulty_grid", "fault injection (tests only)", "faulty", _space)]

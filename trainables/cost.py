"""What a sweep will cost before it starts: a table of measured rates, and the arithmetic each
family's `Method.cost` makes with it (issue 35 item 5).

A rate is a measurement, never a guess. Every row of `rates.csv` (beside this file) names the
bench output it was copied from, the row in that file, and the machine that produced it. Where the
machine at hand has no row, the family measures one in a few seconds ("measured now", by its own
training or evaluation code on random data of the trial's shapes) and says so. A GPU without a row
gets none: CPU rows are never scaled to a GPU, nor one GPU's rows to another.

Rows are matched exactly on their key (kind, family, model, image size, batch size, precision,
noise sharing, path, device); `device` is `machine_key`: `cpu-<capability>` (PyTorch's
`get_cpu_capability`, e.g. cpu-avx2, cpu-avx512) or `cuda-<device name>`.
"""

from __future__ import annotations

import csv
import functools
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from trainables.common import check_device, cpu_model, threads_text
from trainables.data import Data

RATES_PATH = Path(__file__).with_name("rates.csv")
RATES_ENV = "NOISETUNE_RATES"  # another table in the same format (a site's own measurements, tests)
KEY = ("kind", "family", "model", "image_size", "batch_size", "precision", "noise_sharing", "path", "device")
MEASURE_BUDGET_S = 30.0  # seconds of "measured now" one process spends at most; past it a row stays missing
MEASURE_TARGET_S = 2.0  # seconds one measurement aims to spend timing steps (after a warm-up)


@dataclass(frozen=True)
class Rate:
    """One measured rate: `rate` units per second of work of the key's shape on `device`."""

    kind: str  # train (unit: steps/s, steps of the method's `steps` field) | eval (passes/s)
    family: str
    model: str  # the family's words for what ran (its key: the same words from the same config)
    image_size: str
    batch_size: str  # "" where it does not apply
    precision: str
    noise_sharing: str
    path: str
    device: str  # machine_key
    threads: int  # torch threads of the measurement (CPU); 0 on GPU
    rate: float
    unit: str
    source: str  # bench/results/<file>, or "measured now"
    row: str  # which row of the source, in its own words
    machine: str  # the machine as the source names it (and the load it ran under)

    def key_words(self) -> str:
        """The row's key in words: what ran, on what (its empty fields left out)."""
        names = {"image_size": "{} px", "batch_size": "batch {}", "noise_sharing": "{} noise"}
        return ", ".join(names.get(k, "{}").format(getattr(self, k)) for k in KEY[1:] if getattr(self, k))

    def describe(self) -> str:
        origin = "measured now" if self.source == "measured now" else f"{self.source} row {self.row!r}"
        threads = f", {self.threads} thread{'s' * (self.threads != 1)}" if self.threads else ""
        return f"{self.rate:,.4g} {self.unit} ({origin}{threads})"


def load_rates(path: str | os.PathLike | None = None) -> list[Rate]:
    """The rate table: `path`, else $NOISETUNE_RATES, else trainables/rates.csv."""
    path = Path(path or os.environ.get(RATES_ENV) or RATES_PATH)
    stamp = path.stat().st_mtime_ns if path.exists() else None
    return _read(str(path), stamp)


@functools.lru_cache(maxsize=8)
def _read(path: str, stamp) -> list[Rate]:
    if stamp is None:
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    return [Rate(**{k: r[k] for k in KEY}, threads=int(r["threads"] or 0), rate=float(r["rate"]), unit=r["unit"],
                 source=r["source"], row=r["row"], machine=r["machine"]) for r in rows]


def machine_key(device: torch.device) -> str:
    """The rate table's name for a device kind: cpu-<capability> or cuda-<device name>."""
    if device.type == "cuda":
        return f"cuda-{torch.cuda.get_device_name(device)}"
    return f"{device.type}-{torch.backends.cpu.get_cpu_capability().lower()}"


def machine_words(threads: int | None = None) -> str:
    """This machine's CPU in a few words, with `threads` (default: this process's torch threads)."""
    return f"{cpu_model() or 'CPU'} {torch.backends.cpu.get_cpu_capability()}, " \
        f"{threads_text(threads or torch.get_num_threads())}"


def device_at_hand(cfg_device: str, gpus: bool) -> torch.device:
    """The device a trial of this sweep trains on: the config's, or with `auto` a GPU where the run
    asks for one (--gpus-per-trial) or this machine has one, else the CPU."""
    if cfg_device != "auto":
        check_device(cfg_device)  # a family whose config does not check it: refused here, in one line
        return torch.device(cfg_device)
    return torch.device("cuda" if gpus or torch.cuda.is_available() else "cpu")


@dataclass
class Estimate:
    """A trial's projected seconds, part by part, with the rate row each part used."""

    seconds: float = 0.0
    core_seconds: float = 0.0  # seconds x the rows' CPU threads: how much of a CPU the trial keeps busy
    parts: list[str] = field(default_factory=list)  # "training: 2,000 steps at <rate>"
    used: list[Rate] = field(default_factory=list)  # the rows the parts used
    missing: list[str] = field(default_factory=list)  # parts with no rate, and why

    def add(self, what: str, amount: float, rate: Rate | str) -> None:
        """`amount` units of work at `rate` (a Rate, or the reason there is none)."""
        if isinstance(rate, str):
            self.missing.append(f"{what}: {rate}")
            return
        seconds = amount / rate.rate
        self.seconds += seconds
        self.core_seconds += seconds * rate.threads
        self.parts.append(f"{what}: {amount:,.0f} {rate.unit.split('/')[0]} at {rate.rate:,.4g} {rate.unit}")
        self.used.append(rate)


_measured: dict[tuple, Rate | str] = {}  # this process's measurements (or why one failed), by key
_spent = [0.0]  # seconds of measurement spent in this process


def rate_for(key: dict, device: torch.device, measure: Callable[[], tuple[float, int]] | None = None,
             rates: list[Rate] | None = None) -> Rate | str:
    """The table's row for `key` (KEY's fields but device; a field left out must be empty in the
    row) on `device`, one measured at this process's thread count where there is one; else, on
    this machine, a rate from `measure()` -> (rate, threads), within the measurement budget; else
    the reason why there is none (a sentence starting "no measured rate for")."""
    table = load_rates() if rates is None else rates
    device_key = machine_key(device) if device.type != "cuda" or torch.cuda.is_available() else "cuda"
    want = {k: str(key.get(k, "")) for k in KEY} | {"device": device_key}
    found = [row for row in table if all(getattr(row, k) == v for k, v in want.items())]
    if found:  # a row measured at the trials' thread count first (the process's, set as a trial's)
        return min(found, key=lambda row: row.threads != threads_on(device))
    words = ", ".join(f"{k} {v}" for k, v in want.items() if v and k not in ("kind", "family", "device"))
    if device_key == "cuda":
        gpus = sorted({row.device for row in table if row.device.startswith("cuda")
                       and all(getattr(row, k) == v for k, v in want.items() if k != "device")})
        have = f"; rows exist for {', '.join(gpus)}, not used: the GPU is not known here" if gpus else ""
        return f"no measured rate for a GPU (none here to name or measure; {words}){have}"
    done = _measured.get(tuple(sorted(want.items())))
    if done is not None:
        return done
    if measure is None:
        return f"no measured rate for {device_key} ({words})"
    if _spent[0] >= MEASURE_BUDGET_S:
        return (f"no measured rate for {device_key} ({words}); not measured now: this run's "
                f"{MEASURE_BUDGET_S:.0f} s of measurements are spent (bench/family_rates.py adds rows)")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # a dry run prints its plan, not a measurement's warnings
            warnings.simplefilter("ignore")
            value, threads = measure()
        unit = "steps/s" if want["kind"] == "train" else "passes/s"
        machine = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_words()
        done = Rate(**want, threads=threads, rate=value, unit=unit, source="measured now", row=words,
                    machine=machine)
    except Exception as exc:  # noqa: BLE001 - a failed measurement leaves the part unpriced, never the plan
        done = f"no measured rate for {device_key} ({words}); measuring it failed: {type(exc).__name__}: {exc}"
    _spent[0] += time.perf_counter() - start
    _measured[tuple(sorted(want.items()))] = done
    return done


def time_steps(run: Callable[[int], object], target_s: float = MEASURE_TARGET_S, most: int = 10) -> float:
    """Steps per second of `run(k)` (k steps with a fixed cost around them), by the difference
    between a 1-step and a (1 + m)-step run after a 1-step warm-up (first-call costs), m sized to
    about `target_s`: the fixed cost (model building, checks before and after) drops out. A
    warm-up over 4 x `target_s` (a step of a large model) is the measurement: one step with its
    fixed cost, a rate on the slow side, rather than minutes of measuring."""
    t0 = time.perf_counter()
    run(1)
    if time.perf_counter() - t0 > 4 * target_s:
        return 1 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    run(1)
    one = time.perf_counter() - t0
    m = max(1, min(most, int(target_s / max(one, 1e-3))))
    t0 = time.perf_counter()
    run(1 + m)
    more = time.perf_counter() - t0
    return m / (more - one) if more > one else (1 + m) / more


def planned_steps(steps: int, epochs: int, per_epoch: int) -> int:
    """Optimiser steps of a training: `steps` when set, else epochs x steps per epoch."""
    return steps or epochs * per_epoch


def supervised_steps(cfg, train_size: int) -> int:
    """Steps of a training on the shared supervised loop (trainables/supervised.py: an epoch is
    train_size // batch_size steps), per stage where a method trains in stages."""
    return planned_steps(cfg.steps, cfg.epochs, train_size // min(cfg.batch_size, train_size))


def threads_on(device: torch.device) -> int:
    """The CPU threads a measurement on `device` keeps busy (0 on a GPU)."""
    return torch.get_num_threads() if device.type == "cpu" else 0


def price_training(est: Estimate, family: str, model: str, image_size, cfg, steps: int, device: torch.device,
                   train: Callable, data: Callable[[], object], what: str = "training", path: str = "") -> None:
    """Add a training's `steps` at the rate of (family, model, image size, cfg.batch_size, path)
    on `device`. Measured now (where the table has no row) by the family's own `train` with
    `steps=k` on `data()`, random data of the trial's shapes: the rate counts steps of the
    config's `steps` field, per stage where the method trains in stages, as the projection does."""
    key = {"kind": "train", "family": family, "model": model, "image_size": image_size,
           "batch_size": cfg.batch_size, "path": path}

    def measure():
        measured_on = data()
        return time_steps(lambda k: train(replace(cfg, steps=k, device=str(device)), measured_on)), threads_on(device)

    est.add(what, steps, rate_for(key, device, measure))


def measured_per_class(batch_size: int, classes: int) -> int:
    """Images per class of the random data a training rate is measured on: a dozen batches in all,
    so the measured steps fit in one epoch."""
    return -(-batch_size * 12 // classes)


def synthetic_data(classes: int, channels: int, side: int, per_class: int, test: int, seed: int = 0) -> Data:
    """Random images in [0, 1] with balanced labels, of a data set's shapes: what a measurement of
    speed trains on (the data's values do not change the arithmetic)."""
    gen = torch.Generator().manual_seed(seed)
    y_train = torch.arange(classes).repeat_interleave(per_class)
    y_test = torch.arange(test) % classes
    return Data("synthetic", torch.rand(len(y_train), channels, side, side, generator=gen), y_train,
                torch.rand(test, channels, side, side, generator=gen), y_test, [str(c) for c in range(classes)])


def duration(seconds: float) -> str:
    """Seconds as a person plans with them: 45 s, 12 min, 3 h 10 min, 4.2 days, 3.1 years."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = seconds / 86400
    return f"{days:,.1f} days" if days < 730 else f"{days / 365.25:,.1f} years"


def wall_seconds(estimates: list[Estimate], device: torch.device, cores: int) -> float:
    """Wall time of the trials: on a CPU their core-seconds shared by the `cores` the sweep may
    use (the rows' thread counts say how much of a CPU each trial keeps busy), never less than the
    longest trial; on a GPU one after another, since trials that share it share its measured rate
    (packing small trials onto one GPU is not priced)."""
    if not estimates:
        return 0.0
    longest = max(e.seconds for e in estimates)
    if device.type == "cuda":
        return sum(e.seconds for e in estimates)
    return max(longest, sum(e.core_seconds for e in estimates) / max(1, cores))


def projection_lines(estimates: list[Estimate], device: torch.device, threads: int, at_once: int,
                     shown: int = 6) -> list[str]:
    """--dry-run's lines for a sweep's trials: the wall time on `device` (trials of `threads`
    CPU threads, up to `at_once` of them at a time), the first priced trial's parts, the rate
    rows used (the first `shown`; measured-now ones say so), and the trials that have no rate."""
    if device.type == "cuda":
        where = f"one {torch.cuda.get_device_name(device)}" if torch.cuda.is_available() else "a GPU"
    else:
        where = f"this CPU ({machine_words(threads)} per trial, {machine_key(device)}), up to {at_once} trials at once"
    priced = [e for e in estimates if not e.missing]
    lines = []
    if priced:
        cores = 1 if device.type == "cuda" else min(os.cpu_count() or 1, at_once * threads)
        share = "" if len(priced) == len(estimates) else f" ({len(priced)} of {len(estimates)} trials priced)"
        lines.append(f"projected: {duration(wall_seconds(priced, device, cores))} on {where}{share}; "
                     f"{duration(sum(e.seconds for e in priced))} of trial time in all")
        first = "first trial's" if priced[0] is estimates[0] else "first priced trial's"
        lines += [f"  {first} {part}" for part in priced[0].parts]
        rows = list({id(rate): rate for e in priced for rate in e.used}.values())
        for rate in rows[:shown]:
            what = "measured now" if rate.source == "measured now" else "rate row used"
            lines.append(f"  {what}: {rate.kind} ({rate.key_words()}): {rate.describe()}; machine: {rate.machine}")
        if len(rows) > shown:
            now = sum(r.source == "measured now" for r in rows)
            lines.append(f"  ... {len(rows)} rate rows in all, {now} of them measured now")
    missing = [e for e in estimates if e.missing]
    if missing:
        lines.append(f"projected: no projection for {len(missing)} of {len(estimates)} trials on {where}: "
                     f"{missing[0].missing[0]}")
    return lines


def no_projection(what: str) -> Estimate:
    """An estimate that prices nothing, and says why."""
    return Estimate(missing=[what])


"""Pieces every trainable shares: result rows, training progress, checkpoints, devices.

Kept here so that a new method module only writes its model, its loss and its inference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainables.noise import ConfigError

STATUS_OK, STATUS_DIVERGED, STATUS_ERROR = "ok", "diverged", "error"


def config_row(*configs) -> dict[str, Any]:
    """Flatten dataclass configs into one row; tuples become JSON text so Parquet stays flat."""
    row: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                row.update(config_row(value))
                continue
            if isinstance(value, (tuple, list)):
                value = json.dumps(list(value))
            row[f.name] = value
    return row


def replace_fields(cfg, overrides: dict[str, Any]):
    """dataclasses.replace that also reaches nested dataclass fields and names bad keys."""
    own = {f.name: f for f in dataclasses.fields(cfg)}
    direct, nested = {}, {}
    for key, value in overrides.items():
        if key in own:
            group = getattr(cfg, key)
            if dataclasses.is_dataclass(group) and not isinstance(value, type(group)):  # --set data=5
                raise ConfigError(f"{key}={value!r} is not allowed: {key} is a group of fields; allowed: "
                                  f"--set one of {', '.join(sorted(all_field_names(group)))}")
            direct[key] = value
            continue
        owner = next((f.name for f in own.values()
                      if dataclasses.is_dataclass(getattr(cfg, f.name))
                      and key in {g.name for g in dataclasses.fields(getattr(cfg, f.name))}), None)
        if owner is None:
            raise ConfigError(f"unknown config field {key!r}; allowed: {', '.join(sorted(all_field_names(cfg)))}")
        nested.setdefault(owner, {})[key] = value
    for owner, values in nested.items():
        direct[owner] = replace_fields(getattr(cfg, owner), values)
    return dataclasses.replace(cfg, **direct)


def configs_from_preset(presets: dict[str, dict], train_default, eval_cls, preset: str,
                        overrides: dict | None = None) -> tuple[Any, Any]:
    """(train config, eval config) of a preset with `overrides`; each field goes where it is declared."""
    from trainables.noise import check_choice
    check_choice("preset", preset, tuple(presets))
    values = presets[preset] | dict(overrides or {})
    eval_names = {f.name for f in dataclasses.fields(eval_cls)}
    cfg = replace_fields(train_default, {k: v for k, v in values.items() if k not in eval_names})
    return cfg, eval_cls(**{k: v for k, v in values.items() if k in eval_names})


def all_field_names(cfg) -> set[str]:
    """Every leaf field name of a (nested) dataclass config."""
    names = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        names |= all_field_names(value) if dataclasses.is_dataclass(value) else {f.name}
    return names


def n_checkpoints(n_max: int) -> tuple[int, ...]:
    """1, 10, 100, ... up to n_max, with n_max itself last."""
    if not isinstance(n_max, int) or n_max < 1:
        raise ConfigError(f"n_max={n_max!r} is out of range; allowed: integers >= 1")
    points = [10**k for k in range(int(math.log10(n_max)) + 1) if 10**k <= n_max]
    return tuple(points) if points[-1] == n_max else (*points, n_max)


def check_checkpoints(points) -> tuple[int, ...]:
    """Sorted unique positive draw counts, or a ConfigError naming `n_checkpoints`."""
    points = tuple(points) if isinstance(points, (tuple, list)) else (points,)  # None, b"..": refused below
    if not points or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in points):
        raise ConfigError(f"n_checkpoints={points!r} is out of range; allowed: a non-empty list of integers >= 1")
    return tuple(sorted(set(points)))


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; an unavailable explicit device is refused up front."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} is not available here; allowed: auto, cpu")
    return dev


def device_name(device: torch.device) -> str:
    """Human-readable device name for result rows."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclass
class Progress:
    """What a training loop hands its callback after each epoch."""

    epoch: int
    loss: float
    state: Callable[[], dict]  # builds a checkpoint dict on demand (cost paid only when saved)


@dataclass
class TrainResult:
    """The outcome of a training run; `model` is usable even when the run diverged."""

    model: Any
    status: str
    epochs_done: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""


@dataclass(frozen=True)
class Method:
    """What the service needs of a trainable family: one of these per method module.

    configs(preset, overrides) -> (train config, eval config), refusing bad values up front;
    train(cfg, data, callback, state) -> TrainResult; evaluate(model, data, settings, cfg, ecfg)
    -> rows, one per (test setting, n), each carrying every config field.
    """

    name: str
    configs: Callable[[str, dict], tuple[Any, Any]]
    load_data: Callable[[Any], Any]
    train: Callable[..., TrainResult]
    evaluate: Callable[..., list[dict]]
    presets: tuple[str, ...] = ("paper", "quick", "smoke")


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | os.PathLike, device="cpu") -> dict:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickles."""
    return torch.load(os.fspath(path), map_location=device, weights_only=True)

"""Pieces every trainable shares: the Method interface, result rows, progress, checkpoints, devices.

Kept here so that a new method module only writes its model, its loss and its inference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from trainables.checks import ConfigError, check_choice

STATUS_OK, STATUS_DIVERGED, STATUS_ERROR = "ok", "diverged", "error"
STATUS_SKIPPED = "skipped"  # the method found nothing to train (its message says why); final, never re-run


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


def check_device(device) -> None:
    """Refuse a device string torch cannot parse; availability is checked where training runs."""
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device={device!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from exc


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
    return f"cpu ({threads_text(torch.get_num_threads())})"


def threads_text(threads: int) -> str:
    return f"{threads} thread{'' if threads == 1 else 's'}"


# CPU flags of native bfloat16 arithmetic: AVX-512 BF16 and AMX on x86, the BF16 extension on Arm.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel lists it; "" where there is no such file (not Linux)."""
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as the kernel lists them (x86 `flags`, Arm `Features`); empty where
    there is no such file (not Linux)."""
    try:
        with open(path) as f:
            return {flag for line in f if line.split(":")[0].strip() in ("flags", "Features")
                    for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def fast_bf16(device: torch.device, flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether bfloat16 layers run natively on `device`, and a few words saying why (for a warning
    or a bench line). On a CPU without native bf16, PyTorch emulates it: oneDNN's convolutions give
    way to aten's slow ones and a bf16 matmul crawls (issue 35; the matmul line of
    bench/results/ebm_sampling_cpu_avx2_32px.txt), so
    bf16 only pays on AVX-512 BF16 / AMX / Arm BF16 CPUs and on GPUs from compute capability 8.0
    (Ampere tensor cores) on."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"CUDA compute capability {major}.{minor} ({'>=' if major >= 8 else '<'} 8.0)"
    if device.type != "cpu":
        return False, f"no bf16 check for device type {device.type}"
    have = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    capability = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"CPU {capability} with {', '.join(have)}"
    return False, f"CPU {capability} without {', '.join(BF16_CPU_FLAGS)} (bf16 is emulated)"


@dataclass
class Progress:
    """What a training loop hands its callback after each epoch."""

    epoch: int
    loss: float
    state: Callable[[], dict]  # builds a checkpoint dict on demand (cost paid only when saved)
    done: float = float("nan")  # share of the whole training done (0-1; NaN: not known)
    metrics: dict[str, float] = field(default_factory=dict)  # more of the method's own progress (reported as is)


@dataclass
class TrainResult:
    """The outcome of a training run; `model` is usable even when the run diverged.

    `columns` holds the run's own row columns, measured at training time (its device, a final
    loss of its own, phase or label-noise measurements): the trial writes them on every row of the
    run. `artefacts` holds arrays to keep beside the trial's rows (a learned std map, a weight-norm
    trajectory): the store writes them next to the part file, and analysis loads them by trial key.
    """

    model: Any
    status: str
    epochs_done: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""
    artefacts: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)


def _all_rows(rows: list[dict]) -> list[dict]:
    return rows


def _describe(cfg, ecfg, settings) -> str:
    return f"{len(settings)} test settings"


@dataclass(frozen=True)
class Method:
    """What the service needs of a trainable: one per method, listed in its family's METHODS.

    The service (CLI, trial, store, report) knows nothing else of a method:
    - configs(preset, values) -> (train config, eval config), refusing bad values up front;
    - load_data(cfg) -> data; train(cfg, data, callback, state) -> TrainResult, whose `columns`
      are the run's own row columns (a `final_loss` there replaces the trial's history[-1]);
    - evaluate(model, data, settings, cfg, ecfg, eval_seed) -> rows, or (rows, {name: array}); one
      row per test setting (and draw count, ...) holding only its setting columns and metrics;
      `eval_seed` is the evaluation seed the trial resolved (the eval config's, else the trial's).
      The trial adds config fields, run columns and provenance; a column given twice is an error;
    - check_setting(dict) -> the setting `evaluate` takes, or one ConfigError line;
    - setting_columns: test-setting key -> the row column it is written to;
    - summary_columns: the columns of the end-of-run table (those that vary are shown);
    - final_rows(rows) -> the rows the trial's headline metric comes from (e.g. at the largest n);
    - describe(cfg, ecfg, settings) -> a few words on one trial's work, for --dry-run;
    - cost(cfg, ecfg, settings, device) -> a cost.Estimate of one trial on `device` (a
      torch.device): its projected seconds from measured rates and the rows it used, for --dry-run;
      None: the method makes no projection (trainables/cost.py);
    - diverging: overrides under which training diverges (the contract test checks the status);
    - preset_notes: preset -> a line the CLI prints before and after such a run (what the preset
      can and cannot show).
    """

    name: str
    family: str
    configs: Callable[[str, dict], tuple[Any, Any]]
    load_data: Callable[[Any], Any]
    train: Callable[..., TrainResult]
    evaluate: Callable[..., Any]
    check_setting: Callable[[dict], Any]
    setting_columns: dict[str, str] = field(default_factory=dict)
    summary_columns: tuple[str, ...] = ()
    final_rows: Callable[[list[dict]], list[dict]] = _all_rows
    describe: Callable[[Any, Any, list], str] = _describe
    cost: Callable[[Any, Any, list, torch.device], Any] | None = None
    presets: tuple[str, ...] = ("paper", "quick", "smoke")
    diverging: dict = field(default_factory=dict)
    preset_notes: dict[str, str] = field(default_factory=dict)


def _write_atomic(path: str | os.PathLike, write: Callable[[str], None], suffix: str) -> None:
    """write(temporary path) in path's folder, then rename: a crash or a concurrent reader never
    sees half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves half a file."""
    _write_atomic(path, lambda tmp: torch.save(state, tmp), ".pt")


def write_json_atomic(value: Any, path: str | os.PathLike) -> None:
    """JSON text written atomically (a small cache or state file that another process may read)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
    _write_atomic(path, write, ".json")


def load_checkpoint(path: str | os.PathLike, device="cpu") -> dict:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickles."""
    return torch.load(os.fspath(path), map_location=device, weights_only=True)


def loss_tail(history) -> tuple[float, float]:
    """(relative change, share of the run's decrease) of the training loss over the last 20% of
    epochs: L80 is the mean over the 10% of epochs that end at 80%, L_end over the last 10%;
    change = (L_end - L80) / L80, share = (L80 - L_end) / (L_first - L_end). A loss that falls
    towards 0 (memorised labels) keeps a large relative change; the share says whether the curve
    has flattened on the scale of the run. NaN for fewer than 10 epochs."""
    h = np.asarray(history, float)
    k = len(h) // 10
    if k < 1:
        return float("nan"), float("nan")
    at80, end = h[int(0.8 * len(h)) - k:int(0.8 * len(h))].mean(), h[-k:].mean()
    change = float((end - at80) / abs(at80)) if at80 else float("nan")
    share = float((at80 - end) / (h[0] - end)) if h[0] != end else float("nan")
    return change, share


def params_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of the sha256 of every parameter's bytes, in order: two runs with
    one digest trained bit-identical networks (two settings that do not change the computation)."""
    import hashlib
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

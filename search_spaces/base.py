"""The shape of an experiment: which trainings to run, which test settings each evaluates."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable


def grid(**axes) -> list[dict]:
    """Every combination of the axes' values, as one dict of field values per point."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


@dataclass(frozen=True)
class Space:
    """One preset's trainings and test settings.

    `train` lists the training configurations (field values; the service crosses them with the
    seeds), `tests(point)` gives the test settings evaluated on each trained model, `fixed`
    overrides fields of every trial. With `search="optuna"`, `optuna` maps a field to
    ("uniform", low, high) or ("choice", [values]) and `train` is ignored. `label(point)`, if
    given, names a trial's point for people (e.g. "SE-SNN+Forward"): the rows' `label` column.
    """

    train: list[dict]
    tests: Callable[[dict], list[dict]]
    fixed: dict = field(default_factory=dict)
    optuna: dict | None = None
    test_only: tuple[str, ...] = ()  # point keys that only `tests` reads (not training fields)
    label: Callable[[dict], str] | None = None  # point -> a human label; not part of the trial key


@dataclass(frozen=True)
class Experiment:
    """A registered experiment; `space(preset)` builds its Space."""

    name: str
    description: str
    method: str  # name of the Method (in a family's METHODS) that trains and evaluates it
    space: Callable[[str], Space]
    metric: str = "accuracy"  # a row column: its best over the method's final rows is reported to Tune
    mode: str = "max"  # max | min
    gpu_per_trial: float = 0.25  # small banks share a GPU; used only where GPUs exist
    search: str = "grid"  # grid | optuna
    default_seeds: dict = field(default_factory=dict)  # preset -> seeds when --seeds is not given (the paper's count)

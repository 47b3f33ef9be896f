"""Every experiment the service can run, by name, and the method that trains it.

Experiments outside this tree: NOISETUNE_PLUGINS="pkg.mod,other.mod" names modules that define
METHODS (list of trainables.common.Method) and/or EXPERIMENTS (list of Experiment); they are
registered beside the built-in ones, in the driver and in every Ray worker.
"""

from __future__ import annotations

import difflib
import importlib
import os

from search_spaces import ebm as ebm_spaces
from search_spaces.base import Experiment
from trainables import discriminative, ebm
from trainables.common import Method
from trainables.noise import ConfigError

PLUGINS_ENV = "NOISETUNE_PLUGINS"


def _plugins() -> tuple[list, list, str | None]:
    """(methods, experiments, error) of the modules named in NOISETUNE_PLUGINS."""
    methods, experiments = [], []
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # reported by get(), so the CLI refuses with one line
            return [], [], f"{PLUGINS_ENV}: module {name!r} cannot be imported ({type(exc).__name__}: {exc})"
        methods += list(getattr(module, "METHODS", []))
        experiments += list(getattr(module, "EXPERIMENTS", []))
    return methods, experiments, None


_PLUGIN_METHODS, _PLUGIN_EXPERIMENTS, PLUGIN_ERROR = _plugins()
METHODS: dict[str, Method] = {m.name: m for m in (ebm.METHOD, discriminative.METHOD, *_PLUGIN_METHODS)}


def _register(experiments: list[Experiment]) -> dict[str, Experiment]:
    out: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.name in out:
            raise ValueError(f"experiment {exp.name!r} is registered twice")
        if exp.method not in METHODS:
            raise ValueError(f"experiment {exp.name!r} names unknown method {exp.method!r}")
        out[exp.name] = exp
    return out


EXPERIMENTS: dict[str, Experiment] = _register([*ebm_spaces.EXPERIMENTS, *_PLUGIN_EXPERIMENTS])


def get(name: str) -> Experiment:
    """The experiment called `name`, or a ConfigError listing the names (and a near match)."""
    if PLUGIN_ERROR:
        raise ConfigError(PLUGIN_ERROR)
    if name not in EXPERIMENTS:
        hint = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        near = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"experiment={name!r} is not registered{near}; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]

"""Every experiment the service can run, by name, and the method that trains it."""

from __future__ import annotations

import difflib

from search_spaces import ebm as ebm_spaces
from search_spaces.base import Experiment
from trainables import discriminative, ebm
from trainables.common import Method
from trainables.noise import ConfigError

METHODS: dict[str, Method] = {m.name: m for m in (ebm.METHOD, discriminative.METHOD)}


def _register(experiments: list[Experiment]) -> dict[str, Experiment]:
    out: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.name in out:
            raise ValueError(f"experiment {exp.name!r} is registered twice")
        if exp.method not in METHODS:
            raise ValueError(f"experiment {exp.name!r} names unknown method {exp.method!r}")
        out[exp.name] = exp
    return out


EXPERIMENTS: dict[str, Experiment] = _register([*ebm_spaces.EXPERIMENTS])


def get(name: str) -> Experiment:
    """The experiment called `name`, or a ConfigError listing the names (and a near match)."""
    if name not in EXPERIMENTS:
        hint = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        near = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"experiment={name!r} is not registered{near}; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]

"""Every method and experiment the service can run, by name, loaded family by family.

A family is one unit: `trainables/<family>.py` exports METHODS (trainables.common.Method) and
`search_spaces/<family>.py` exports EXPERIMENTS (search_spaces.base.Experiment). Built-in families
are named in FAMILIES; modules outside this tree are named in NOISETUNE_PLUGINS="pkg.mod,other.mod"
and may export either list or both. Both load through the same path, in the driver and in every
Ray worker; a duplicate name, or an experiment of an unknown method, is refused.
"""

from __future__ import annotations

import difflib
import importlib
import os

from search_spaces.base import Experiment
from trainables.checks import ConfigError
from trainables.common import Method

FAMILIES = ("ebm", "vpn", "ninr", "sesnn")  # built-in families; a new one is added here once
PLUGINS_ENV = "NOISETUNE_PLUGINS"


def family_modules() -> list[str]:
    """Module names to load: each built-in family's two modules, then the plugins."""
    builtin = [f"{package}.{family}" for family in FAMILIES for package in ("trainables", "search_spaces")]
    return builtin + [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]


def load(names: list[str]) -> tuple[dict[str, Method], dict[str, Experiment]]:
    """Methods and experiments of the named modules; ConfigError on an import failure or a clash."""
    methods: dict[str, Method] = {}
    experiments: dict[str, Experiment] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # reported by get(), so the CLI refuses with one line
            raise ConfigError(f"{PLUGINS_ENV}: module {name!r} cannot be imported ({type(exc).__name__}: {exc})") from exc
        for method in getattr(module, "METHODS", []):
            if method.name in methods:
                raise ConfigError(f"method {method.name!r} of {name} is registered twice; allowed: unique names")
            methods[method.name] = method
        for exp in getattr(module, "EXPERIMENTS", []):
            if exp.name in experiments:
                raise ConfigError(f"experiment {exp.name!r} of {name} is registered twice; allowed: unique names")
            experiments[exp.name] = exp
    for exp in experiments.values():
        if exp.mode not in ("max", "min"):
            raise ConfigError(f"experiment {exp.name!r} has mode={exp.mode!r}; allowed: max, min")
        if exp.method not in methods:
            raise ConfigError(f"experiment {exp.name!r} names unknown method {exp.method!r}; "
                              f"allowed: {', '.join(methods)}")
    return methods, experiments


try:
    METHODS, EXPERIMENTS = load(family_modules())
    LOAD_ERROR = None
except ConfigError as exc:  # the built-ins alone still load, so --list and tests keep working
    METHODS, EXPERIMENTS = load(family_modules()[:2 * len(FAMILIES)])
    LOAD_ERROR = str(exc)


def get(name: str) -> Experiment:
    """The experiment called `name`, or a ConfigError listing the names (and a near match)."""
    if LOAD_ERROR:
        raise ConfigError(LOAD_ERROR)
    if name not in EXPERIMENTS:
        hint = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        near = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"experiment={name!r} is not registered{near}; allowed: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def method_of(exp: Experiment) -> Method:
    return METHODS[exp.method]


def trial_configs(exp: Experiment, preset: str, point: dict, overrides: dict):
    """(train config, eval config, test settings) of one trial: the one place configs are built,
    by the driver (to refuse bad values before Ray starts) and by the worker (to run them).

    Later sources win: the space's fixed fields, then --set overrides, then the point's training
    fields (the seed included). Each test setting is checked by the method.
    """
    method = METHODS[exp.method]
    if preset not in method.presets:
        raise ConfigError(f"preset={preset!r} is not allowed for {exp.name}; allowed: {', '.join(method.presets)}")
    space = exp.space(preset)
    train = {k: v for k, v in point.items() if k not in space.test_only}
    cfg, ecfg = method.configs(preset, space.fixed | overrides | train)
    settings = [method.check_setting(s) for s in space.tests(point)]
    if not settings:
        raise ConfigError(f"{exp.name} has no test settings for point {point}; allowed: at least one")
    return cfg, ecfg, settings

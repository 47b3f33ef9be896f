"""Every method and experiment the service can run, by name, loaded family by family.

A family is one unit: `trainables/<family>.py` exports METHODS (trainables.common.Method) and
`search_spaces/<family>.py` exports EXPERIMENTS (search_spaces.base.Experiment) and re-exports its
METHODS. A family is registered by an entry point of the group `noisetune.families` (pyproject.toml,
`[project.entry-points."noisetune.families"]`): the family's name -> the module exporting both lists.
Every installed distribution's entry points are loaded, this project's and any other package's;
then modules that are not installed, named in NOISETUNE_PLUGINS="pkg.mod,other.mod", which may
export either list or both. Both load through the same path, in the driver and in every Ray worker.
Refused, each with one ConfigError line naming the module: a module that cannot be imported, a
family or a name registered twice, a method whose `family` is not its entry point's name, an
experiment of an unknown method. A module refused that way is left out and the others load;
get() then refuses every experiment with that line (LOAD_ERROR), so the fault is never missed.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass
from importlib import metadata

from search_spaces.base import Experiment
from trainables.checks import ConfigError
from trainables.common import Method

GROUP = "noisetune.families"  # entry-point group: family name -> module with METHODS and EXPERIMENTS
DISTRIBUTION = "noisetune"  # this project: its own entry points must be found, or it is not installed
PLUGINS_ENV = "NOISETUNE_PLUGINS"


@dataclass(frozen=True)
class Source:
    """One module to load: an entry point of GROUP (its name is the family of the module's methods)
    or a NOISETUNE_PLUGINS module (its methods name their own family)."""

    module: str
    family: str | None = None
    entry: metadata.EntryPoint | None = None

    def load(self):
        return self.entry.load() if self.entry is not None else importlib.import_module(self.module)

    def __str__(self) -> str:
        if self.entry is None:
            return f"{PLUGINS_ENV} module {self.module!r}"
        dist = getattr(self.entry, "dist", None)
        of = f"{dist.name} {dist.version}" if dist else "an unknown distribution"
        return f"entry point {GROUP}: {self.family} = {self.module!r} (of {of})"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


def group_entries(group: str) -> tuple[list, list[str]]:
    """The entry points of `group`, this project's first, each distribution's from the first copy of
    its metadata on sys.path that declares any (a stale `noisetune.egg-info` left in the source tree
    by an older build comes first when run from there, declaring none); and where this project's
    metadata without them lies."""
    entries, seen, stale = [], set(), []
    for dist in metadata.distributions():
        name = _normal(dist.name)
        found = [] if name in seen else list(dist.entry_points.select(group=group))
        if found:
            seen.add(name)
            entries += found
        elif name == DISTRIBUTION and name not in seen:
            stale.append(str(getattr(dist, "_path", dist.locate_file(""))))
    return sorted(entries, key=lambda e: _normal(e.dist.name) != DISTRIBUTION), stale


def entry_sources() -> list[Source]:
    """A Source per entry point of GROUP; a ConfigError saying how to install the project if none
    of them is its own."""
    entries, stale = group_entries(GROUP)
    if not any(_normal(e.dist.name) == DISTRIBUTION for e in entries):
        why = f"its metadata at {', '.join(stale)} declares none" if stale else "it is not installed"
        raise ConfigError(f"no {GROUP!r} entry points of the {DISTRIBUTION!r} distribution were found ({why}): "
                          f"the method families are registered by installing the project; run `pip install -e .` "
                          f"in the repository (again after a change to pyproject.toml's entry points)")
    return [Source(e.value, e.name, e) for e in entries]


def plugin_sources() -> list[Source]:
    return [Source(n.strip()) for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]


def family_modules() -> list[Source]:
    """What to load: every entry point of GROUP, then the NOISETUNE_PLUGINS modules."""
    return entry_sources() + plugin_sources()


def load(sources: list) -> tuple[dict[str, Method], dict[str, Experiment]]:
    """Methods and experiments of the sources (Source objects or module names); ConfigError on an
    import failure, a clash, or a method whose family is not its entry point's name."""
    methods: dict[str, Method] = {}
    experiments: dict[str, Experiment] = {}
    families: dict[str, Source] = {}
    origin: dict[str, Source] = {}  # experiment -> the source that registered it
    for source in [s if isinstance(s, Source) else Source(s) for s in sources]:
        if source.family is not None:
            if source.family in families:
                raise ConfigError(f"family {source.family!r} of {source} is registered twice (also by "
                                  f"{families[source.family]}); allowed: unique names")
            families[source.family] = source
        try:
            module = source.load()
        except Exception as exc:  # reported by get(), so the CLI refuses with one line
            raise ConfigError(f"{source} cannot be imported ({type(exc).__name__}: {exc})") from exc
        for method in getattr(module, "METHODS", []):
            if method.name in methods:
                raise ConfigError(f"method {method.name!r} of {source} is registered twice; allowed: unique names")
            if source.family is not None and method.family != source.family:
                raise ConfigError(f"method {method.name!r} of {source} has family={method.family!r}; allowed: "
                                  f"{source.family!r}, its entry point's name")
            methods[method.name] = method
        for exp in getattr(module, "EXPERIMENTS", []):
            if exp.name in experiments:
                raise ConfigError(f"experiment {exp.name!r} of {source} is registered twice; allowed: unique names")
            experiments[exp.name], origin[exp.name] = exp, source
    for exp in experiments.values():
        if exp.mode not in ("max", "min"):
            raise ConfigError(f"experiment {exp.name!r} of {origin[exp.name]} has mode={exp.mode!r}; allowed: max, min")
        if exp.method not in methods:
            raise ConfigError(f"experiment {exp.name!r} of {origin[exp.name]} names unknown method {exp.method!r}; "
                              f"allowed: {', '.join(methods)}")
    return methods, experiments


def load_all(sources: list[Source]) -> tuple[dict[str, Method], dict[str, Experiment], str | None]:
    """load(sources), or, if that is refused, every source that loads beside those before it, and
    the refusals (one line each, naming the module) as the load error."""
    try:
        return *load(sources), None
    except ConfigError:
        kept, errors = [], []
        for source in sources:
            try:
                load(kept + [source])
                kept.append(source)
            except ConfigError as exc:
                errors.append(" ".join(str(exc).splitlines()))
        return *load(kept), "; ".join(errors)


SOURCES = family_modules()
METHODS, EXPERIMENTS, LOAD_ERROR = load_all(SOURCES)
# Every family name: the entry points' names, then any other family a NOISETUNE_PLUGINS method declares.
FAMILIES = tuple(dict.fromkeys([s.family for s in SOURCES if s.family is not None]
                               + [m.family for m in METHODS.values()]))


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

"""Property tests of the CLI's input handling: any argv is accepted or refused in one line.

`tuner.run.main` runs in-process on argv built from valid and junk pieces (experiment names with
path traversal, presets, --seeds, --set with every real config field and junk ones, resources,
--name, --storage). Outcomes allowed: refused (exit 2, stderr exactly one `error: ...` line, no
traceback, nothing under the storage folder changed), a dry run (exit 0, nothing written), or
accepted, which here means reaching `ray.init`, stubbed to raise a private exception so that no
Ray starts. Any other exception is a bug in the parser or the validation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainables.common import all_field_names
from tuner import registry
from tuner import run as cli
from tuner.store import ResultStore

ray = pytest.importorskip("ray")

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIELDS = sorted({name for method in registry.METHODS.values() for cfg in method.configs("smoke", {})
                 for name in all_field_names(cfg)})  # every leaf field of every method's configs
GROUPS = ["data", "noise_params"]  # fields that hold a nested config, not a value
EXPERIMENTS = list(registry.EXPERIMENTS)
PRIOR = "prior-run"  # a finished run of another experiment, already in the storage folder


class Accepted(Exception):
    """Raised by the stubbed ray.init (and the local backend's run_local): the input passed every check."""


def _refuse_to_start(*args, **kwargs):
    raise Accepted


# --------------------------------------------------------------------------------------
# strategies

JUNK_NAMES = ["", ".", "..", "../x", "../../etc/passwd", "/etc/passwd", "/tmp/x", "a/b", "a/../b", "grid_ebm/..",
              ".hidden", "-x", "--x", "grid_ebm\n", "grid_ebm ", " grid_ebm", "a\x00b", "ｇrid_ebm", "grid\u2028ebm",
              "\udcff", "x" * 101, "CON", "~", "$HOME", "%s", "{}", "a" * 100]
junk_text = st.text(max_size=12) | st.text(st.characters(codec="utf-8"), max_size=6)

numbers = st.one_of(
    st.integers(-3, 30), st.integers(), st.just(2**63), st.just(10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 1e-300, 1e308, 0.25, 0.5, 1.0]))
literals = st.recursive(numbers | st.booleans() | st.none() | st.text(max_size=5),
                        lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=4), max_leaves=6)
value_text = st.one_of(
    literals.map(repr), literals.map(str), junk_text,
    st.sampled_from(["nan", "inf", "-inf", "1e400", "{[]: 1}", "{{}}", "-" * 3000 + "1", "(" * 300, "1" * 5000,
                     "1,", "1,2,3", "(30, 73, 100)", "'gaussian'", "gaussian", "cauchy", "full", "odd", "digits",
                     "cifar10", "None", "True", "b'ab'", "...", "1j", "__import__('os')", "=", "a=b"]))


def mostly(valid: st.SearchStrategy, junk: st.SearchStrategy, one_in: int = 5) -> st.SearchStrategy:
    """valid, except one draw in `one_in` from junk: each example then has few bad pieces, so many
    reach the config checks and acceptance instead of all stopping at the first bad option."""
    return st.integers(0, one_in - 1).flatmap(lambda i: junk if i == one_in - 1 else valid)  # 0, the simplest: valid


def option(flag: str, values: st.SearchStrategy, one_in: int = 4) -> st.SearchStrategy:
    """[flag, value] in one example in `one_in`, else nothing; sometimes as --flag=value."""
    given = st.tuples(values, st.booleans()).map(lambda vb: [f"{flag}={vb[0]}"] if vb[1] else [flag, vb[0]])
    return st.integers(0, one_in - 1).flatmap(lambda i: given if i == 0 else st.just([]))


# A valid value per field (its default in the smoke configs), so --set reaches each field's check.
def leaves(cfg) -> dict:
    """{leaf field name: value} of a nested dataclass config."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(leaves(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


DEFAULTS = {name: value for method in registry.METHODS.values() for cfg in method.configs("smoke", {})
            for name, value in leaves(cfg).items()}


@st.composite
def set_item(draw) -> str:
    key = draw(mostly(st.sampled_from(FIELDS), st.sampled_from(GROUPS + ["seed", "eval_seed"]) | junk_text, 4))
    valid = st.just(repr(DEFAULTS[key])) if key in DEFAULTS else value_text
    value = draw(mostly(valid, value_text, 2))
    return draw(mostly(st.just(f"{key}={value}"), st.sampled_from([f"{key} = {value}", f"{key}{value}",
                                                                    f"={value}", f"{key}=", key]), 8))


def set_items() -> st.SearchStrategy:
    return st.lists(set_item(), max_size=3)


small_seeds = st.one_of(st.integers(1, 4).map(str), st.lists(st.integers(0, 9), min_size=1, max_size=3)
                        .map(lambda s: ",".join(map(str, s))))
seeds = mostly(small_seeds, st.sampled_from(["0", "-1", "1001", "1000000000", "99999999999999999999,", f"{2**63},",
                                             "1.5", "nan", "[]", "()", "(1,)", "0,0", "True", "{1: 2}", "1e3"])
               | junk_text, 3)
safe_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
names = safe_names | st.sampled_from(JUNK_NAMES + [PRIOR]) | junk_text
resource_junk = st.one_of(numbers.map(str), junk_text, st.sampled_from(["nan", "inf", "-1", "0", "1e999", "0x10"]))


def resource(*valid: str) -> st.SearchStrategy:
    return mostly(st.sampled_from(valid), resource_junk, 3)


@st.composite
def argvs(draw) -> tuple[list[str], str]:
    """(argv, which storage): mostly close to valid, with a few bad pieces of every kind."""
    experiment = draw(mostly(st.sampled_from(EXPERIMENTS), st.sampled_from(JUNK_NAMES) | junk_text, 8))
    preset = draw(mostly(st.sampled_from(["smoke"] * 6 + ["quick", "paper"]), junk_text, 8))
    parts = [
        option("--preset", st.just(preset), 1),
        option("--seeds", seeds),
        option("--name", names),
        option("--dataset", mostly(st.sampled_from(["digits", "textures", "cifar10", ""]), junk_text, 3)),
        option("--search", st.sampled_from(["grid", "grid", "optuna", "bayes"])),
        option("--resume", st.sampled_from(["auto", "never", "maybe"])),
        option("--cpus-per-trial", resource("1", "0.5", "2")),
        option("--gpus-per-trial", resource("0", "0.25", "1")),
        option("--max-concurrent", resource("0", "1", "4")),
        option("--num-samples", resource("1", "20")),
        option("--max-failures", resource("0", "2")),
        option("--checkpoint-seconds", resource("30", "0.5")),
        option("--address", st.sampled_from(["auto", "127.0.0.1:1", "ray://nowhere:1"]) | junk_text, 8),
        option("--backend", st.sampled_from(["local", "local", "ray", "dask"]), 6),
        option("--only", mostly(st.sampled_from(["alpha_train=0.5", "seed=0", "alpha_train=0.0,seed=0",
                                                 "alpha_test=1", "alpha_train", "seed=7"]), junk_text, 4), 6),
        option("--dry-run", st.just(""), 2).map(lambda a: ["--dry-run"] if a else []),
        mostly(st.just([]), st.lists(st.sampled_from(["--bogus", "-x", "--", "--set", "--list"]) | junk_text,
                                     min_size=1, max_size=2), 6),
    ]
    argv = [] if draw(st.integers(0, 19)) == 19 else [experiment]
    for part in parts:
        argv += draw(part)
    for item in draw(set_items()):
        argv += ["--set", item]
    storage = draw(mostly(st.just("store"), st.sampled_from(["store/sub", "file", "", "default",
                                                              "nosuchscheme://bucket/x"]), 4))
    return argv, storage


# --------------------------------------------------------------------------------------
# the harness


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its contents (None for a folder)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.join(folder, d)] = None
        for f in files:
            out[os.path.join(folder, f)] = Path(folder, f).read_bytes()
    return out


@contextlib.contextmanager
def workspace():
    """A base folder holding the storage folder (with a sentinel file and a finished run of
    another experiment) and the working directory; ray.init refuses to start."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        base = Path(tmp)
        store = base / "store"
        store.mkdir()
        (store / "sentinel.txt").write_text("do not touch\n")
        prior = ResultStore(str(store), PRIOR)
        prior.check()
        prior.claim("layers_ebm", "smoke")
        (store / PRIOR / "results" / "part-0123456789abcdef.parquet").write_bytes(b"PAR1 not really PAR1")
        (base / "cwd").mkdir()
        mp.chdir(base / "cwd")
        mp.setattr(ray, "init", _refuse_to_start)
        mp.setattr(cli, "run_local", _refuse_to_start)  # --backend local starts no Ray: stop it the same way
        for name in ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):
            mp.setenv(name, "1")  # main sets them; keep the environment as it was
        yield base


def storage_arg(base: Path, which: str) -> str:
    if which == "file":
        return str(base / "store" / "sentinel.txt")  # a file, not a folder
    if which in ("store", "store/sub"):
        return str(base / which)
    return which  # "" (the working directory) or an unknown URI scheme


def with_storage(argv: list[str], base: Path, which: str) -> list[str]:
    """argv with --storage last (so it wins); "default" leaves ./results, under the working directory."""
    return argv if which == "default" else [*argv, "--storage", storage_arg(base, which)]


def run_main(argv: list[str]) -> tuple[str, str, str]:
    """("refused" | "dry-run" | "accepted" | "help", stdout, stderr) of main(argv)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except Accepted:
            return "accepted", out.getvalue(), err.getvalue()
        except SystemExit as exc:  # argparse: 2 on a bad option, 0 after --help
            code = exc.code
    assert code in (0, 2), (argv, code)
    if code == 0:
        return ("dry-run" if "--dry-run" in argv or "--list" in argv else "help"), out.getvalue(), err.getvalue()
    return "refused", out.getvalue(), err.getvalue()


FLAGS = {"--dry-run", "--verbose", "--list", "-h", "--help"}  # options without a value


def invalid_reasons(argv: list[str]) -> list[str] | None:
    """The validity oracle, written from the README's rules rather than from tuner.run: why an
    argv should have been refused ([] = valid), or None where it cannot say (`--`, --list/--help
    or a prefix of an option: argparse rules the oracle does not re-implement)."""
    opts: dict[str, str] = {}
    sets: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or a in ("--list", "-h", "--help"):
            return None
        if a.startswith("-") and len(a) > 1:
            key, eq, value = a.partition("=")
            if key in FLAGS:
                opts[key] = "1"
            else:
                if not eq:
                    if i + 1 >= len(argv):
                        return ["option without a value"]
                    i, value = i + 1, argv[i + 1]
                if key == "--set":
                    sets.append(value)
                else:
                    opts[key] = value
        else:
            positional.append(a)
        i += 1
    known = {"--preset", "--dataset", "--seeds", "--storage", "--name", "--address", "--gpus-per-trial",
             "--cpus-per-trial", "--max-concurrent", "--search", "--num-samples", "--resume", "--max-failures",
             "--checkpoint-seconds", "--progress-seconds", *FLAGS}
    if set(opts) - known:
        return None  # an abbreviation argparse may expand
    reasons = []
    if len(positional) != 1 or positional[0] not in registry.EXPERIMENTS:
        return ["experiment is not one registered name"]
    exp = registry.EXPERIMENTS[positional[0]]
    method = registry.METHODS[exp.method]
    preset = opts.get("--preset", "paper")
    if preset not in method.presets:
        return ["preset"]
    if opts.get("--search", exp.search) not in ("grid", "optuna") or opts.get("--resume", "auto") not in ("auto", "never"):
        reasons.append("search or resume")
    for flag, low, strict in (("--cpus-per-trial", 0, True), ("--gpus-per-trial", 0, False),
                              ("--checkpoint-seconds", 0, True), ("--progress-seconds", 0, True)):
        if flag in opts:
            try:
                v = float(opts[flag])
            except ValueError:
                reasons.append(flag)
                continue
            if not math.isfinite(v) or v < low or (strict and v == low):
                reasons.append(flag)
    for flag, low in (("--max-concurrent", 0), ("--num-samples", 1), ("--max-failures", 0)):
        if flag in opts and not (re.fullmatch(r"[+-]?\d+", opts[flag].strip()) and int(opts[flag]) >= low):
            reasons.append(flag)
    if "--seeds" in opts:
        text = opts["--seeds"].strip()
        if not (re.fullmatch(r"\d+", text) and 1 <= int(text)) and not re.fullmatch(r"\(?\d+(,\s*\d+)*,?\)?", text):
            reasons.append("seeds")
    fields = set().union(*(all_field_names(c) for c in method.configs(preset, {})))
    swept = {k for point in exp.space(preset).train for k in point} | set(exp.space(preset).optuna or {}) | {"seed"}
    for item in sets:
        key = item.partition("=")[0].strip()
        if "=" not in item or key not in fields or key in swept:
            reasons.append(f"--set {key!r}")
    return reasons


def check_outcome(argv: list[str], base: Path, before: dict) -> tuple[str, str]:
    outcome, out, err = run_main(argv)
    assert "Traceback" not in out + err, (argv, err)
    if outcome in ("accepted", "dry-run"):
        reasons = invalid_reasons([a for a in argv])
        assert not reasons, f"{argv} was accepted but the oracle finds it invalid: {reasons}"
    if outcome == "refused":
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and err.endswith("\n"), (argv, err)
        assert snapshot(base) == before, f"{argv} was refused but changed the storage folder"
    elif outcome in ("dry-run", "help"):
        assert err == "", (argv, err)
        assert snapshot(base) == before, f"{argv} wrote during a dry run"
    assert not ray.is_initialized()
    return outcome, err


# --------------------------------------------------------------------------------------
# the properties


@SETTINGS
@given(case=argvs())
def test_any_argv_is_accepted_or_refused_in_one_line(case):
    argv, which = case
    with workspace() as base:
        before = snapshot(base)
        check_outcome(with_storage(argv, base, which), base, before)


@settings(SETTINGS, max_examples=250)
@given(experiment=st.sampled_from(EXPERIMENTS), items=set_items(), dry=st.booleans())
def test_any_override_is_accepted_or_refused_in_one_line(experiment, items, dry):
    """--set alone, on a valid command: the config checks see every kind of value."""
    argv = [experiment, "--preset", "smoke", *[a for item in items for a in ("--set", item)]]
    with workspace() as base:
        before = snapshot(base)
        check_outcome([*argv, "--storage", str(base / "store"), *(["--dry-run"] if dry else [])], base, before)


@settings(SETTINGS, max_examples=300)
@given(name=st.from_regex(r"\A[A-Za-z0-9._/\\\n\x00~-]{0,8}\Z") | names)
def test_names_the_check_accepts_stay_inside_the_storage_folder(name):
    if cli.SAFE_NAME.match(name):
        assert "/" not in name and "\\" not in name and "\x00" not in name and "\n" not in name
        assert name not in (".", "..") and not name.startswith(".") and len(name) <= 100
        root = os.path.realpath("/srv/storage")
        resolved = os.path.realpath(os.path.join(root, name))
        assert os.path.dirname(resolved) == root


@settings(SETTINGS, max_examples=150)
@given(name=names)
def test_an_accepted_name_resolves_under_the_storage_root(name):
    with workspace() as base:
        before = snapshot(base)
        argv = ["grid_ebm", "--preset", "smoke", "--storage", str(base / "store"), f"--name={name}"]
        outcome, err = check_outcome([*argv, "--dry-run"], base, before)
        if outcome != "dry-run":
            assert outcome == "refused" and err.startswith("error: name="), err
            return
        name = name or "grid_ebm-smoke"  # an empty --name means the default
        assert cli.SAFE_NAME.match(name)
        # A real run (ray.init stubbed) creates its folder exactly at <storage>/<name>, nowhere else.
        if name == PRIOR:  # another experiment's folder: refused, untouched (checked above)
            assert check_outcome(argv, base, before)[0] == "refused"
            return
        assert check_outcome(argv, base, before)[0] == "accepted"
        root = (base / "store").resolve()
        new = {Path(p).resolve() for p in set(snapshot(base)) - set(before)}
        assert new and all(p.is_relative_to(root / name) for p in new), new
        assert (root / name).parent == root


def test_every_registered_experiment_name_is_a_safe_name():
    for name in registry.EXPERIMENTS:
        assert cli.SAFE_NAME.match(name), name


@pytest.mark.parametrize("argv", [
    ["grid_ebm", "--max-concurrent", "x"],  # argparse's own refusals are one line too
    ["grid_ebm", "--bogus"],
    ["grid_ebm", "extra\npositional"],
    ["grid_ebm", "--name", "abc\n"],  # "$" in a regex matches before a final newline
    ["grid_ebm", "--name", "../escape"],
    ["grid_ebm", "--name", "/abs/path"],
    ["../grid_ebm"],
    ["grid_ebm", "--set", "hidden_channels=5"],
    ["grid_ebm", "--set", "n_checkpoints=None"],
    ["grid_ebm", "--set", "data=5"],
    ["grid_ebm", "--set", "noise_params=5"],
    ["grid_ebm", "--set", "lr={[]: 1}"],
    ["grid_ebm", "--set", "lr=" + "-" * 100_000 + "1"],
    ["grid_ebm", "--cpus-per-trial", "nan"],
    ["grid_ebm", "--gpus-per-trial", "inf"],
    ["grid_ebm", "--seeds", "1000000000"],
    ["grid_ebm", "--seeds", f"{2**64},"],
    ["grid_ebm", "--storage", "nosuchscheme://bucket/x"],
    ["grid_ebm", "--name", PRIOR],  # another experiment's run folder: refused before its lock file is written
])
def test_inputs_that_once_crashed_or_slipped_through_are_refused(argv):
    with workspace() as base:
        before = snapshot(base)
        if "--storage" not in argv:
            argv = [*argv, "--storage", str(base / "store")]
        assert check_outcome([*argv, "--preset", "smoke"], base, before)[0] == "refused"

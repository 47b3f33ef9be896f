"""Security: no unpickling of untrusted input, token authentication kept on, the dashboard on localhost.

(a) an AST scan of the project's code for deserialisers that run code (pickle, marshal, unsafe
YAML, eval/exec, torch.load without weights_only=True), with one pinned exception; (b) a
checkpoint that carries a code-running pickle is refused by load_checkpoint; (c) what
tests/test_docker.py does not already check: nothing disables token authentication, and the
local cluster that `tuner.run` starts keeps Ray 2.60's defaults (token auth on, dashboard on
localhost); (d) the README keeps saying how to submit with a token and why the dashboard must
not face the internet.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from trainables.common import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("trainables", "tuner", "search_spaces", "analysis")

# Calls that execute code from their input, by fully qualified name.
FORBIDDEN = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads", "joblib.load", "shelve.open",
    "marshal.load", "marshal.loads", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all", "yaml.load_all", "pandas.read_pickle", "eval", "exec", "builtins.eval",
    "builtins.exec", "compile", "builtins.compile",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}

# (file, call) -> why it is acceptable. Each entry must still match something (no stale entries).
ALLOWED = {
    ("trainables/data.py", "pickle.load"):
        "cifar20_coarse reads the coarse labels from CIFAR-100's own batch files, which are pickles; they "
        "come from the data root after torchvision's MD5 check of those very files (a data root the "
        "user points NOISETUNE_DATA at is trusted like the code; README 'On a cluster').",
}


def _qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The dotted name a call target refers to, with import aliases resolved."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _aliases(tree: ast.AST) -> dict[str, str]:
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def scan(path: Path) -> list[tuple[str, int, str]]:
    """(call, line, problem) for every risky deserialisation in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, aliases)
        if name is None:
            continue
        if name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append((name, node.lineno, "torch.load without weights_only=True"))
        elif name == "yaml.load":
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            loader_name = _qualified(loader, aliases) if loader is not None else None
            if loader_name is None or loader_name.rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                found.append((name, node.lineno, "yaml.load without a safe Loader"))
        elif name in ("numpy.load", "np.load"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append((name, node.lineno, "numpy.load with allow_pickle"))
        elif name in FORBIDDEN:
            found.append((name, node.lineno, "runs code from its input"))
    return found


def project_files() -> list[Path]:
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 10, "the scan found almost no files: is ROOT right?"
    return files


# --------------------------------------------------------------------------------------
# (a) the source scan


def test_no_code_running_deserialisation_outside_the_allowlist():
    found, used = [], set()
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        for name, line, problem in scan(path):
            if (rel, name) in ALLOWED:
                used.add((rel, name))
            else:
                found.append(f"{rel}:{line}: {name} ({problem})")
    assert not found, "\n".join(found)
    assert used == set(ALLOWED), f"stale allowlist entries: {set(ALLOWED) - used}"


def calls_to(name: str):
    """(path, call node) of every call of the qualified function `name` in the project's code."""
    for path in project_files():
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _qualified(node.func, aliases) == name:
                yield path, node


def test_every_torch_load_passes_weights_only_true():
    loads = 0
    for path, node in calls_to("torch.load"):
        loads += 1
        flag = _keyword(node, "weights_only")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
    assert loads >= 1, "no torch.load found: checkpoints are loaded somewhere (trainables/common.py)"


@pytest.mark.parametrize("source,expected", [
    ("import torch\ntorch.load(f)", "torch.load"),
    ("import torch\ntorch.load(f, weights_only=False)", "torch.load"),
    ("from torch import load\nload(f)", "torch.load"),
    ("import pickle as p\np.loads(b)", "pickle.loads"),
    ("from pickle import load\nload(f)", "pickle.load"),
    ("import yaml\nyaml.load(s)", "yaml.load"),
    ("import yaml\nyaml.load(s, Loader=yaml.Loader)", "yaml.load"),
    ("import yaml\nyaml.unsafe_load(s)", "yaml.unsafe_load"),
    ("import marshal\nmarshal.loads(b)", "marshal.loads"),
    ("eval(text)", "eval"),
    ("exec(text)", "exec"),
    ("import numpy as np\nnp.load(f, allow_pickle=True)", "numpy.load"),
    ("import pandas as pd\npd.read_pickle(f)", "pandas.read_pickle"),
])
def test_the_scan_catches_each_pattern(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert [name for name, _, _ in scan(path)] == [expected]


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(f, map_location='cpu', weights_only=True)",
    "import yaml\nyaml.safe_load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)",
    "import ast\nast.literal_eval(s)",
    "import json\njson.loads(s)",
    "import numpy as np\nnp.load(f)",
])
def test_the_scan_passes_safe_loaders(tmp_path, source):
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert scan(path) == []


@pytest.mark.parametrize("dataset", ["cifar100", "cifar20", "cifar20_coarse"])
@pytest.mark.parametrize("file", ["train", "meta"])
def test_a_corrupted_cifar_batch_is_refused_before_anything_is_unpickled(tmp_path, dataset, file):
    """A CIFAR-100 folder in the real on-disk layout whose `file` is a pickle that runs code when
    loaded, with torchvision's MD5 check ON (as for every user): loading refuses the folder and
    the payload never runs, for the fine loaders and for the coarse-label one that unpickles the
    batch files itself."""
    from tests.test_data import write_cifar100
    from trainables.data import DataConfig, DataError, load_dataset

    write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-100-python" / file).write_bytes(pickle.dumps({"data": _Payload(str(marker))}, protocol=2))
    with pytest.raises((DataError, RuntimeError)):
        load_dataset(DataConfig(dataset=dataset, data_root=str(tmp_path), download=False))
    assert not marker.exists(), "the corrupted batch file was unpickled"
    pickle.loads((tmp_path / "cifar-100-python" / file).read_bytes())  # control: the payload is live
    assert marker.exists()


# --------------------------------------------------------------------------------------
# (b) a checkpoint carrying a code-running pickle is refused


class _Payload:
    """Unpickling this calls open(path, "w"): a stand-in for any code an attacker would run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _evil_checkpoints(tmp_path: Path, marker: Path) -> list[Path]:
    in_torch_format = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(str(marker))}, in_torch_format)
    plain_pickle = tmp_path / "evil.pkl"
    plain_pickle.write_bytes(pickle.dumps({"model": _Payload(str(marker))}, protocol=2))
    return [in_torch_format, plain_pickle]


def test_the_payload_is_live_without_weights_only(tmp_path):
    """Control: the test checkpoints really run code when unpickled the unsafe way."""
    marker = tmp_path / "pwned"
    torch_format, plain_pickle = _evil_checkpoints(tmp_path, marker)
    for unsafe_load in (lambda: torch.load(torch_format, weights_only=False),
                        lambda: pickle.loads(plain_pickle.read_bytes())):
        unsafe_load()  # the calls the project must never make
        assert marker.exists()
        marker.unlink()


def test_load_checkpoint_refuses_a_code_running_pickle(tmp_path):
    marker = tmp_path / "pwned"
    for path in _evil_checkpoints(tmp_path, marker):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load_checkpoint(path)
        assert not marker.exists(), f"{path.name}: unpickling ran code"


def test_real_training_state_round_trips_with_weights_only(tmp_path):
    """What the trainers checkpoint (state dicts, optimiser state, generator state, history)
    is all that weights_only needs to allow."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(), "history": [1.5, 0.5], "epoch": 2}
    save_checkpoint(state, tmp_path / "state.pt")
    back = load_checkpoint(tmp_path / "state.pt")
    assert back["epoch"] == 2 and back["history"] == [1.5, 0.5]
    assert torch.equal(back["model"]["weight"], model.state_dict()["weight"])
    assert torch.equal(back["generator"], gen.get_state())


# --------------------------------------------------------------------------------------
# (c) token authentication stays on; the dashboard stays on localhost
# (tests/test_docker.py checks the docker/ files: ports on 127.0.0.1, RAY_AUTH_MODE=token on
# every node, the variable names known to the pinned Ray.)


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants other than docstrings and bare string statements."""
    prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose]


def _auth_mode_values(tree: ast.AST) -> list[tuple[int, ast.AST]]:
    """(line, value) wherever code sets RAY_AUTH_MODE: os.environ[...] = v, setdefault/putenv(k, v),
    {"RAY_AUTH_MODE": v}, dict(RAY_AUTH_MODE=v)."""
    out = []
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.Assign):
            pairs += [(t.slice, node.value) for t in node.targets if isinstance(t, ast.Subscript)]
        if isinstance(node, ast.Call):
            if len(node.args) == 2:
                pairs.append((node.args[0], node.args[1]))
            pairs += [(ast.Constant(k.arg), k.value) for k in node.keywords if k.arg]
        if isinstance(node, ast.Dict):
            pairs += list(zip(node.keys, node.values))
        out += [(node.lineno, value) for key, value in pairs
                if isinstance(key, ast.Constant) and key.value in ("RAY_AUTH_MODE", "AUTH_MODE")]
    return out


def test_no_code_or_deployment_file_turns_token_auth_off():
    offenders = []
    for path in project_files():
        tree = ast.parse(path.read_text())
        for line, value in _auth_mode_values(tree):
            if not (isinstance(value, ast.Constant) and value.value == "token"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
        offenders += [f"{path.relative_to(ROOT)}: {s!r}" for s in _code_strings(tree)
                      if re.search(r"RAY_AUTH_MODE\s*=\s*(?!token\b)\w", s)]  # in a command line
    for path in sorted(p for p in (ROOT / "docker").rglob("*") if p.is_file()):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?(?!token\b)\w", line):
                offenders.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.parametrize("source", [
    "import os\nos.environ['RAY_AUTH_MODE'] = 'disabled'",
    "import os\nos.environ.setdefault('RAY_AUTH_MODE', mode)",
    "env = {'RAY_AUTH_MODE': 'disabled'}",
    "env = dict(RAY_AUTH_MODE='disabled')",
])
def test_the_auth_scan_catches_each_pattern(source):
    assert _auth_mode_values(ast.parse(source))


def test_ray_init_calls_keep_the_dashboard_on_localhost():
    calls = 0
    for path, node in calls_to("ray.init"):
        calls += 1
        host = _keyword(node, "dashboard_host")
        assert host is None or (isinstance(host, ast.Constant) and host.value in ("127.0.0.1", "localhost")), \
            f"{path}:{node.lineno}"
        assert _keyword(node, "_system_config") is None, f"{path}:{node.lineno}: auth is set by env only"
    assert calls >= 1, "tuner.run starts Ray somewhere"


_LOCAL_CLUSTER = r"""
import json, os, urllib.error, urllib.request
from pathlib import Path
import ray

ctx = ray.init(include_dashboard=True, num_cpus=1, log_to_driver=False)  # as tuner.run does: defaults
url = "http://" + ctx.dashboard_url

def status(token):
    req = urllib.request.Request(url + "/api/jobs/", headers={"Authorization": "Bearer " + token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

token = (Path(os.environ["HOME"]) / ".ray" / "auth_token").read_text().strip()
out = {"host": ctx.dashboard_url.rsplit(":", 1)[0], "none": status(None), "wrong": status("0" * 64),
       "right": status(token)}
ray.shutdown()  # stops exactly the processes this init started
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_a_local_cluster_started_like_tuner_run_refuses_unauthenticated_requests(tmp_path):
    """Behaviour, not source: ray.init() with tuner.run's arguments and RAY_AUTH_MODE unset starts
    a cluster whose dashboard is on localhost and answers 401 without the token, 403 with a
    wrong one and 200 with the token it wrote to ~/.ray/auth_token (HOME is a fresh folder)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env |= {"HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", _LOCAL_CLUSTER], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stdout[-2000:] + done.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    assert got["host"] in ("127.0.0.1", "localhost", "[::1]"), got
    assert (got["none"], got["wrong"], got["right"]) == (401, 403, 200), got


def test_tuner_run_starts_ray_without_weakening_auth_or_the_dashboard(tmp_path, monkeypatch):
    """What main hands ray.init (ray.init stubbed: nothing starts)."""
    ray = pytest.importorskip("ray")
    from tuner.run import main
    seen = {}

    class Stop(Exception):
        pass

    def fake_init(*args, **kwargs):
        seen.update(kwargs, auth_mode=os.environ.get("RAY_AUTH_MODE"))
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # main sets these two; undone after
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    with pytest.raises(Stop):
        main(["grid_ebm", "--preset", "smoke", "--storage", str(tmp_path)])
    assert seen["address"] is None  # a new local cluster: Ray's defaults apply
    assert seen["auth_mode"] in (None, "token")
    assert seen.get("dashboard_host", "127.0.0.1") in ("127.0.0.1", "localhost")
    assert not seen.get("_system_config")


# --------------------------------------------------------------------------------------
# (d) the README's cluster section


def _cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## On a cluster")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_readme_says_how_to_submit_with_a_token():
    section = _cluster_section()
    assert "RAY_AUTH_MODE=token" in section
    assert "RAY_AUTH_TOKEN" in section and "ray get-auth-token" in section
    commands = re.sub(r"\\\n\s*", " ", section)  # shell continuation lines make one command
    submits = [line.strip() for line in commands.splitlines() if line.strip().startswith("ray job submit")]
    assert submits, "the section must show the `ray job submit` command"
    for line in submits:
        assert re.search(r"--address http://(127\.0\.0\.1|localhost):8265", line), line
        assert "-- python -m tuner.run " in line, line
    exports = [line for line in section.splitlines() if "export RAY_AUTH_MODE=token" in line]
    assert exports and any("RAY_AUTH_TOKEN" in line for line in exports), "how the token reaches the client"


def test_readme_says_why_the_dashboard_must_not_face_the_internet():
    section = _cluster_section().lower()
    assert "internet" in section and "arbitrary code" in section
    assert "127.0.0.1" in section and ("ssh -l" in section or "ssh tunnel" in section)
    assert "kubectl port-forward" in section
    assert "docs.ray.io/en/latest/ray-security" in section


def test_readme_states_the_one_pickle_exception():
    section = _cluster_section()
    assert "pickle" in section and "cifar20_coarse" in section and "weights_only=True" in section

"""Static checks of the deployment files in docker/ (offline, no container engine needed).

Every expected value is read from pyproject.toml (the Ray pin, requires-python, the packages
setuptools installs) or from another deployment file, never copied from the file under test,
so moving the Ray pin without moving docker/ fails here.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "kuberay-rayjob.yaml"
CLUSTER = DOCKER / "cluster.yaml"

RUN_MODULE = "tuner.run"
PYTHON_M = ["python", "-m", RUN_MODULE]
EXPERIMENT = re.compile(r"^[a-z][a-z0-9_]*$")
LOCALHOST = {"127.0.0.1", "::1", "localhost"}
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_GCS_PORT = 6379
RAY_IMAGE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-(?P<variant>gpu|cu\d+)$"
)


# --------------------------------------------------------------------------------------
# pyproject.toml
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def ray_pin(pyproject) -> str:
    reqs = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    ray = [r for r in reqs if r.name == "ray"]
    assert len(ray) == 1, "pyproject.toml must depend on ray exactly once"
    specs = list(ray[0].specifier)
    assert len(specs) == 1 and specs[0].operator == "==", (
        f"the images need an exact Ray pin, pyproject has {ray[0]}"
    )
    return str(Version(specs[0].version))


@pytest.fixture(scope="module")
def requires_python(pyproject) -> SpecifierSet:
    return SpecifierSet(pyproject["project"]["requires-python"])


@pytest.fixture(scope="module")
def packaged_top_levels(pyproject) -> set[str]:
    """Top-level package directories that `pip install .` puts into the image."""
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and (p / "__init__.py").is_file()
        and any(fnmatch.fnmatchcase(p.name, pat) for pat in include)
    }


def check_ray_image(image: str, ray_pin: str, requires_python: SpecifierSet) -> None:
    m = RAY_IMAGE.match(image)
    assert m, f"{image!r} is not a rayproject/ray:<version>-py3<minor>-<gpu|cuXYZ> image"
    assert m["ray"] == ray_pin, f"{image}: Ray {m['ray']} but pyproject pins {ray_pin}"
    py = f"{m['major']}.{m['minor']}"
    assert requires_python.contains(py), (
        f"{image}: Python {py} is not allowed by requires-python {requires_python}"
    )


# --------------------------------------------------------------------------------------
# small parsers
# --------------------------------------------------------------------------------------


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        instr, _, rest = buf.partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m[1] or m[2]
        assert name in args, f"${name} has no default ARG value"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, value)


def parse_arg(rest: str) -> tuple[str, str | None]:
    name, eq, default = rest.partition("=")
    return name.strip(), (default.strip().strip("\"'") if eq else None)


def shell_commands(cmd: str | list) -> list[list[str]]:
    """Split a shell line into simple commands (at ; && || |) of argv tokens."""
    if isinstance(cmd, list):
        return [[str(c) for c in cmd]]
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds, cur = [], []
    for tok in lex:
        if tok in {";", "&&", "||", "|", "&"}:
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    return [c for c in cmds if c]


def ray_start_options(cmd: str | list) -> dict[str, str | bool] | None:
    """The options of the `ray start` command in a shell line, or None if it has none."""
    for argv in shell_commands(cmd):
        if argv[:2] == ["ray", "start"]:
            opts: dict[str, str | bool] = {}
            rest = argv[2:]
            i = 0
            while i < len(rest):
                tok = rest[i]
                assert tok.startswith("--"), f"unexpected argument {tok!r} in {argv}"
                if "=" in tok:
                    k, v = tok[2:].split("=", 1)
                    opts[k] = v
                elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                    opts[tok[2:]] = rest[i + 1]
                    i += 1
                else:
                    opts[tok[2:]] = True
                i += 1
            return opts
    return None


def tuner_args(argv: list[str]) -> list[str]:
    """Arguments after `python -m tuner.run`; fails if argv does not run that module."""
    assert argv[:3] == PYTHON_M, f"{argv} does not run `python -m {RUN_MODULE}`"
    return argv[3:]


def assert_runs_experiment(argv: list[str]) -> str:
    args = tuner_args(argv)
    assert args and EXPERIMENT.match(args[0]), (
        f"{argv} must name an experiment right after `python -m {RUN_MODULE}`"
    )
    return args[0]


def option_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def env_dict(env) -> dict[str, str]:
    if not env:
        return {}
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(item.partition("=")[::2] for item in env)


def parse_port(entry) -> tuple[str | None, str, str]:
    """(host_ip, published, target) of a compose ports entry."""
    if isinstance(entry, dict):
        return entry.get("host_ip"), str(entry.get("published", "")), str(entry["target"])
    s = str(entry).split("/")[0]
    if s.startswith("["):  # [::1]:8265:8265
        ip, _, rest = s[1:].partition("]:")
        published, _, target = rest.rpartition(":")
        return ip, published, target
    parts = s.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    return None, "", parts[0]


# --------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def docker_global_args(dockerfile) -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile:
        if instr == "FROM":
            break
        if instr == "ARG":
            name, default = parse_arg(rest)
            if default is not None:
                args[name] = default
    return args


@pytest.fixture(scope="module")
def base_image(dockerfile, docker_global_args) -> str:
    froms = [rest for instr, rest in dockerfile if instr == "FROM"]
    assert len(froms) == 1, "one build stage expected"
    image = froms[0].split()[0]
    return substitute(image, docker_global_args)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def compose_ray_services(compose: dict) -> tuple[dict, dict]:
    """({name: options} of head services, {name: options} of worker services)."""
    heads, workers = {}, {}
    for name, svc in compose["services"].items():
        opts = ray_start_options(svc.get("command", ""))
        if opts is None:
            continue
        (heads if opts.get("head") else workers)[name] = opts
    assert len(heads) == 1, "compose must run exactly one `ray start --head` service"
    assert workers, "compose must run at least one `ray start --address` worker service"
    return heads, workers


def rayjob_containers(rayjob: dict):
    spec = rayjob["spec"]["rayClusterSpec"]
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]


def cluster_ray_images(cluster: dict) -> list[str]:
    docker = cluster["docker"]
    return [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]


# --------------------------------------------------------------------------------------
# (a) one Ray version everywhere: the pyproject pin
# --------------------------------------------------------------------------------------


def test_dockerfile_ray_version_arg_is_the_pin(docker_global_args, ray_pin):
    assert docker_global_args.get("RAY_VERSION") == ray_pin


def test_dockerfile_base_image_is_the_pinned_official_gpu_image(
    base_image, ray_pin, requires_python
):
    check_ray_image(base_image, ray_pin, requires_python)


def test_compose_build_args_match_the_pin(compose, ray_pin, requires_python, docker_global_args):
    seen = 0
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        if image.startswith("rayproject/ray:"):
            check_ray_image(image, ray_pin, requires_python)
        build = svc.get("build")
        if build is None:
            continue
        args = env_dict(build.get("args"))
        merged = {**docker_global_args, **args}
        assert merged["RAY_VERSION"] == ray_pin, f"service {name}: RAY_VERSION"
        check_ray_image(
            substitute("rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu", merged),
            ray_pin,
            requires_python,
        )
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, (
            f"service {name} must build docker/Dockerfile"
        )
        assert context == ROOT, f"service {name}: the build context must be the repository root"
        seen += 1
    assert seen, "no compose service is built from the Dockerfile"


def test_rayjob_ray_version_is_the_pin(rayjob, ray_pin, requires_python):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert str(rayjob["spec"]["rayClusterSpec"]["rayVersion"]) == ray_pin
    for group, pod in rayjob_containers(rayjob):
        for c in pod["containers"]:
            if c["image"].startswith("rayproject/ray:"):
                check_ray_image(c["image"], ray_pin, requires_python)


def test_cluster_yaml_image_is_the_pinned_official_gpu_image(cluster, ray_pin, requires_python):
    images = cluster_ray_images(cluster)
    assert images, "cluster.yaml must run in a docker image"
    for image in images:
        check_ray_image(image, ray_pin, requires_python)


VERSION_MENTIONS = [
    re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)"),
    re.compile(r"RAY_VERSION\s*[=:]\s*[\"']?(\d+\.\d+\.\d+)"),
    re.compile(r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)"),
    re.compile(r"\bray(?:\[[^\]]*\])?\s*==\s*[\"']?(\d+\.\d+\.\d+)"),
    re.compile(r"__version__\s*==\s*[\"'](\d+\.\d+\.\d+)"),
    re.compile(r"\bRay (\d+\.\d+\.\d+)"),
]


def test_every_ray_version_mentioned_in_docker_dir_is_the_pin(ray_pin):
    found = []
    for path in sorted(DOCKER.rglob("*")):
        if not path.is_file():
            continue
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            for pattern in VERSION_MENTIONS:
                for m in pattern.finditer(line):
                    found.append((path.name, line_no, m[1]))
    wrong = [f for f in found if f[2] != ray_pin]
    assert not wrong, f"Ray versions other than the pin {ray_pin}: {wrong}"
    files = {f[0] for f in found}
    for name in ("Dockerfile", "compose.yaml", "kuberay-rayjob.yaml", "cluster.yaml"):
        assert name in files, f"no Ray version found in {name}: the scan is broken"


# --------------------------------------------------------------------------------------
# (b) the image's Python is one the project supports
# --------------------------------------------------------------------------------------


def test_base_image_python_is_allowed_by_requires_python(base_image, cluster, requires_python):
    for image in [base_image, *cluster_ray_images(cluster)]:
        m = RAY_IMAGE.match(image)
        assert m, image
        assert requires_python.contains(f"3.{m['minor']}"), (image, str(requires_python))


# --------------------------------------------------------------------------------------
# (c) the entrypoints run `python -m tuner.run <experiment>`
# --------------------------------------------------------------------------------------


def test_run_module_is_in_an_installed_package(packaged_top_levels):
    # tuner/run.py itself may still be in the works; the package that holds it must be
    # one that `pip install .` installs, or `python -m tuner.run` fails in every image.
    top = RUN_MODULE.split(".")[0]
    assert top in packaged_top_levels, (
        f"{top!r} is not a package setuptools installs ({sorted(packaged_top_levels)})"
    )


def test_dockerfile_cmd_runs_the_tuner(dockerfile):
    cmds = [rest for instr, rest in dockerfile if instr == "CMD"]
    assert cmds, "the Dockerfile has no CMD"
    argv = json.loads(cmds[-1])  # exec form: a JSON array, so signals reach Python
    args = tuner_args(argv)
    assert args == ["--list"] or (args and EXPERIMENT.match(args[0])), argv


def test_dockerfile_installs_the_project_as_non_root(dockerfile):
    instrs = [i for i, _ in dockerfile]
    workdirs = [rest for i, rest in dockerfile if i == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/home/ray/noisetune"
    runs = [shlex.split(rest) for i, rest in dockerfile if i == "RUN"]
    installs = [
        r
        for r in runs
        if r[:2] == ["pip", "install"]
        and "." in r
        and "--no-cache-dir" in r
        and not {"-e", "--editable"} & set(r)
    ]
    assert installs, "the Dockerfile must `pip install --no-cache-dir .` (not editable)"
    assert instrs.index("COPY") < instrs.index("RUN", instrs.index("COPY")), (
        "the project must be copied before it is installed"
    )
    users = [rest for i, rest in dockerfile if i == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"


def test_dockerignore_keeps_the_project_and_drops_local_state(pyproject, packaged_top_levels):
    patterns = [
        p.strip()
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatchcase(pre, pat.lstrip("/")) or fnmatch.fnmatchcase(pre, pat.lstrip("*/"))
            for pat in patterns
            if not pat.startswith("!")
            for pre in prefixes
        )

    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    needed += [f"{pkg}/__init__.py" for pkg in packaged_top_levels]
    for path in needed:
        assert not ignored(path), f"{path} is excluded from the build context"
    for path in (".venv/bin/python", ".git/HEAD"):
        assert ignored(path), f"{path} should be excluded from the build context"


def test_rayjob_entrypoint_runs_an_experiment(rayjob):
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert_runs_experiment(argv)
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_local_storage_is_mounted_on_every_node(rayjob):
    args = tuner_args(shlex.split(rayjob["spec"]["entrypoint"]))
    storage = option_value(args, "--storage")
    assert storage, "the RayJob must pass --storage"
    if "://" in storage:
        return
    claims = set()
    for group, pod in rayjob_containers(rayjob):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == storage]
            assert mounts, f"{group}/{c['name']} does not mount {storage}"
            claims.add(volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"head and workers must share one volume at {storage}: {claims}"


def test_cluster_yaml_documents_a_localhost_job_submission():
    comments = [
        line.lstrip("# ").rstrip()
        for line in CLUSTER.read_text().splitlines()
        if line.lstrip().startswith("#")
    ]
    submits = [c for c in comments if c.startswith("ray job submit")]
    assert submits, "cluster.yaml must show the `ray job submit` command"
    for line in submits:
        argv = shlex.split(line)
        address = option_value(argv, "--address")
        assert address and re.match(r"^http://(127\.0\.0\.1|localhost):8265$", address), line
        assert_runs_experiment(argv[argv.index("--") + 1 :])
    assert any(c.startswith("ray dashboard") for c in comments), (
        "cluster.yaml must show `ray dashboard` for the port forwarding"
    )


def test_cluster_yaml_installs_the_project(cluster, pyproject, packaged_top_levels):
    mounts = cluster["file_mounts"]
    local = {str(PurePosixPath(v)) for v in mounts.values()}
    for path in ["pyproject.toml", pyproject["project"]["readme"], *packaged_top_levels]:
        assert path in local, f"cluster.yaml does not copy {path} to the nodes"
    remote_dirs = {str(PurePosixPath(k).parent) for k, v in mounts.items() if v == "pyproject.toml"}
    assert len(remote_dirs) == 1
    project_dir = remote_dirs.pop()
    installs = [
        argv
        for cmd in cluster["setup_commands"]
        for argv in shell_commands(cmd)
        if argv[:2] == ["pip", "install"]
    ]
    assert any(project_dir in argv for argv in installs), (
        f"setup_commands must pip install {project_dir}"
    )


def test_cluster_yaml_matches_the_installed_ray_schema(cluster, ray_pin):
    spec = importlib.util.find_spec("ray")
    jsonschema = pytest.importorskip("jsonschema")
    if spec is None or importlib.metadata.version("ray") != ray_pin:
        pytest.skip("the pinned Ray is not installed here")
    schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))
    assert cluster["head_node_type"] in cluster["available_node_types"]


# --------------------------------------------------------------------------------------
# (d) the dashboard never faces the network
# --------------------------------------------------------------------------------------


def test_compose_publishes_ports_on_localhost_only(compose):
    heads, _ = compose_ray_services(compose)
    (head_name, head_opts), = heads.items()
    for name, svc in compose["services"].items():
        assert svc.get("network_mode") != "host", f"{name}: host networking bypasses the binding"
        for entry in svc.get("ports", []):
            host_ip, _, _ = parse_port(entry)
            assert host_ip in LOCALHOST, f"{name}: port {entry!r} is not bound to 127.0.0.1"
    dashboard = str(head_opts.get("dashboard-port", DEFAULT_DASHBOARD_PORT))
    published = [parse_port(p) for p in compose["services"][head_name].get("ports", [])]
    assert any(target == dashboard for _, _, target in published), (
        "the head must publish the dashboard (on localhost)"
    )


def test_cluster_yaml_dashboard_is_bound_to_localhost(cluster):
    heads = [o for c in cluster["head_start_ray_commands"] if (o := ray_start_options(c))]
    assert len(heads) == 1 and heads[0].get("head") is True
    assert heads[0].get("dashboard-host") in LOCALHOST, heads[0]


def test_rayjob_head_service_is_cluster_internal(rayjob):
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)


# --------------------------------------------------------------------------------------
# (e) the GPU workers get GPUs
# --------------------------------------------------------------------------------------


def test_compose_gpu_worker_reserves_gpus_and_joins_the_head(compose):
    heads, workers = compose_ray_services(compose)
    (head_name, head_opts), = heads.items()
    gcs_port = str(head_opts.get("port", DEFAULT_GCS_PORT))
    for name, opts in workers.items():
        assert opts.get("address") == f"{head_name}:{gcs_port}", (name, opts)
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        gpu = [
            d
            for d in devices
            if d.get("driver") == "nvidia"
            and "gpu" in d.get("capabilities", [])
            and (d.get("count") == "all" or int(d.get("count", 0)) >= 1 or d.get("device_ids"))
        ]
        assert gpu, f"{name} does not reserve an NVIDIA GPU"


def test_compose_nodes_share_the_results_volume(compose):
    heads, workers = compose_ray_services(compose)
    sources = set()
    for name in [*heads, *workers]:
        volumes = compose["services"][name].get("volumes", [])
        mounts = [v for v in volumes if str(v).endswith(":/results")]
        assert mounts, f"{name} does not mount /results"
        sources.add(str(mounts[0]).split(":")[0])
    assert len(sources) == 1 and sources <= set(compose.get("volumes") or {}), sources


def test_rayjob_worker_group_requests_a_gpu(rayjob):
    gpu_groups = []
    for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for c in g["template"]["spec"]["containers"]:
            res = c.get("resources", {})
            limit = int(res.get("limits", {}).get("nvidia.com/gpu", 0))
            if "nvidia.com/gpu" in res.get("requests", {}):
                # Kubernetes rejects extended resources whose request differs from the limit.
                assert int(res["requests"]["nvidia.com/gpu"]) == limit, c["name"]
            if limit >= 1:
                gpu_groups.append(g["groupName"])
    assert gpu_groups, "no RayJob worker group has an nvidia.com/gpu limit"


def test_cluster_yaml_has_a_gpu_worker_type(cluster):
    head = cluster["head_node_type"]
    gpu_types = [
        name
        for name, t in cluster["available_node_types"].items()
        if name != head
        and float(t.get("resources", {}).get("GPU", 0)) >= 1
        and t.get("max_workers", cluster["max_workers"]) >= 1
    ]
    assert gpu_types, "cluster.yaml has no worker node type with a GPU"
    assert cluster["max_workers"] >= 1


# --------------------------------------------------------------------------------------
# Ray token authentication on every node
# --------------------------------------------------------------------------------------

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def test_auth_variable_names_exist_in_the_pinned_ray(ray_pin):
    spec = importlib.util.find_spec("ray")
    if spec is None or importlib.metadata.version("ray") != ray_pin:
        pytest.skip("the pinned Ray is not installed here")
    pkg = Path(spec.submodule_search_locations[0])
    sources = [*(pkg / "_private" / "authentication").glob("*.py"), pkg / "exceptions.py"]
    text = "\n".join(p.read_text() for p in sources if p.is_file())
    for var in AUTH_VARS:
        assert re.search(rf"\b{var}\b", text), f"{var} is unknown to Ray {ray_pin}"


def test_compose_enables_token_auth_on_every_node(compose):
    heads, workers = compose_ray_services(compose)
    for name in [*heads, *workers]:
        env = env_dict(compose["services"][name].get("environment"))
        assert env.get("RAY_AUTH_MODE") == "token", name
        token = env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")
        assert token, f"{name} has no RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
        if env.get("RAY_AUTH_TOKEN"):
            assert env["RAY_AUTH_TOKEN"].startswith("${"), f"{name}: a literal token is committed"


def test_rayjob_enables_token_auth(rayjob):
    spec = rayjob["spec"]["rayClusterSpec"]
    if (spec.get("authOptions") or {}).get("mode") == "token":
        return
    for group, pod in rayjob_containers(rayjob):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE") == "token", f"{group}/{c['name']}"


def test_cluster_yaml_enables_token_auth_on_every_node(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if ray_start_options(c) is not None]
        assert starts, key
        for cmd in starts:
            assert "RAY_AUTH_MODE=token" in cmd, f"{key}: {cmd}"
    assert any(
        PurePosixPath(remote).name == "auth_token" for remote in cluster["file_mounts"]
    ), "cluster.yaml must copy the auth token to the nodes"


# --------------------------------------------------------------------------------------
# (h) watching a sweep: Prometheus and Grafana beside the compose cluster
# --------------------------------------------------------------------------------------

PROMETHEUS = DOCKER / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DISCOVERY = "/tmp/ray/prom_metrics_service_discovery.json"  # written by Ray's head


def pinned(image: str) -> bool:
    """name:tag with a numeric version tag (never latest, never untagged)."""
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and re.fullmatch(r"v?\d+\.\d+\.\d+", tag) is not None


def service_using(compose: dict, image_prefix: str) -> tuple[str, dict]:
    found = [(n, s) for n, s in compose["services"].items() if str(s.get("image", "")).startswith(image_prefix)]
    assert len(found) == 1, f"compose must run one {image_prefix} service"
    return found[0]


def test_compose_runs_pinned_prometheus_and_grafana_on_localhost(compose):
    for prefix, port in (("prom/prometheus:", "9090"), ("grafana/grafana", "3000")):
        name, svc = service_using(compose, prefix)
        assert pinned(svc["image"]), f"{name}: {svc['image']} is not pinned to a version"
        published = [parse_port(p) for p in svc.get("ports", [])]
        assert published and all(ip in LOCALHOST for ip, _, _ in published), f"{name}: {svc.get('ports')}"
        assert any(target == port for _, _, target in published), f"{name} does not publish {port}"


def test_prometheus_scrapes_rays_service_discovery_file_shared_from_the_head(compose):
    config = yaml.safe_load(PROMETHEUS.read_text())
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [DISCOVERY], files
    name, svc = service_using(compose, "prom/prometheus:")
    mounts = [str(v) for v in svc.get("volumes", [])]
    assert any(m.startswith("./prometheus.yml:") for m in mounts), mounts
    heads, workers = compose_ray_services(compose)
    (head_name, head_opts), = heads.items()
    head_tmp = [str(v).split(":")[0] for v in compose["services"][head_name]["volumes"] if str(v).split(":")[1] == "/tmp/ray"]
    assert head_tmp and head_tmp[0] in (compose.get("volumes") or {}), "the head's /tmp/ray must be a named volume"
    assert f"{head_tmp[0]}:/tmp/ray:ro" in mounts, "Prometheus must read the head's /tmp/ray"
    for node, opts in [*heads.items(), *workers.items()]:
        assert opts.get("metrics-export-port") == "8080", f"{node}: a fixed metrics export port"


def test_grafana_provisions_prometheus_rays_dashboards_and_the_noisetune_one(compose):
    name, svc = service_using(compose, "grafana/grafana")
    env = env_dict(svc.get("environment"))
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${"), "no literal password is committed"
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    _, prom = service_using(compose, "prom/prometheus:")
    prom_name = next(n for n, s in compose["services"].items() if s is prom)
    assert source["type"] == "prometheus" and source["url"] == f"http://{prom_name}:9090"
    paths = [p["options"]["path"] for p in yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())["providers"]]
    assert "/tmp/ray/session_latest/metrics/grafana/dashboards" in paths  # Ray's generated dashboards
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc.get("volumes", [])}
    ours = next(p for p in paths if not p.startswith("/tmp/ray"))
    assert mounts[ours] == "./grafana/dashboards" and mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (head_name, _), = compose_ray_services(compose)[0].items()
    head_env = env_dict(compose["services"][head_name].get("environment"))
    assert head_env["RAY_GRAFANA_HOST"] == f"http://{name}:3000" and head_env["RAY_PROMETHEUS_HOST"] == f"http://{prom_name}:9090"


def test_the_noisetune_dashboard_shows_every_metric_the_trials_record():
    source = (ROOT / "tuner" / "metrics.py").read_text()
    recorded = set(re.findall(r'm\.(?:Counter|Gauge)\("(noisetune_\w+)"', source))
    assert len(recorded) == 5, recorded
    dashboard = json.loads((GRAFANA / "dashboards" / "noisetune.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in recorded:
        kind = "Counter" if f'Counter("{name}"' in source else "Gauge"
        exported = f"ray_{name}_total" if kind == "Counter" else f"ray_{name}"  # Ray's Prometheus names
        assert exported in exprs, f"the dashboard has no panel for {exported}"

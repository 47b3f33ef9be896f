"""Results at paper scale (issue 37): how long a results folder of N part files takes to load.

    nice -n 10 python bench/results_scale.py --parts 400,4000,40000 --families ninr --out bench/results/results_scale_ninr_cpu.txt
    nice -n 10 python bench/results_scale.py --parts 400,4000 --s3 --out bench/results/results_scale_s3_cpu.txt

Fabricates N parts shaped like a family's real rows (a committed part of docs/ is the template:
EBM, 12 rows x 88 columns with the per-image prediction lists; NINR, 1 row x 79 columns), the
first 5% of them older, without the columns later code added, so the loader must unify the
schema. Then, each in a fresh subprocess (peak memory is its own): `analysis.load` on the parts,
`analysis.load` with three columns, and the library baselines on the same files:
`pyarrow.dataset(...).to_table().to_pandas()` (it takes the first part's schema, so it drops the
newer columns: a lower bound, not an equal) and, when duckdb is installed, DuckDB's
`read_parquet(union_by_name=true)` to pandas and a count over it; then `python -m tuner.compact`
and the same reads of the compacted file, and the report built from it (EBM only). Peak memory
is the subprocess's peak RSS less its RSS before the read, beside what the result keeps.

--s3: the parts are uploaded to a moto S3 server started here on 127.0.0.1 and read from there
(DuckDB not: its httpfs extension is a download). A measurement whose peak memory, scaled
linearly from the same measurement at a smaller N, would pass --max-peak-mib is not run, and
the line says so: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {  # family -> a committed part of a real run, and the columns its older parts lack
    "ebm": (REPO / "docs/ebm-ablation-fair/ablate_ebm-fair-textures32/results",
            ["noise_sharing", "energy_gap_median", "energy_mean_std_median", "energy_gap_std_median"]),
    "ninr": (REPO / "docs/ninr-quick/rows/ninr_compare-quick/results", ["label"]),
}


def _write_parts(results: Path, start: int, stop: int, n: int, family: str, seed: int) -> None:
    """Parts start..stop-1 of n (see fabricate): each its own key, seed and metric values, drawn
    from (seed, part index) so that any split of the range writes the same bytes."""
    source, newer = TEMPLATES[family]
    template = pq.read_table(sorted(source.glob("part-*.parquet"))[0])
    floats = [i for i, f in enumerate(template.schema) if pa.types.is_floating(f.type)]
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        key = f"{i:016x}"
        table = template.set_column(template.schema.get_field_index("trial_key"), "trial_key",
                                    pa.array([key] * template.num_rows))
        if "seed" in table.column_names:
            table = table.set_column(table.schema.get_field_index("seed"), "seed",
                                     pa.array([i % 10] * table.num_rows, pa.int64()))
        for j in floats:
            table = table.set_column(j, table.schema.field(j), pa.array(rng.random(table.num_rows)))
        if i < max(1, n // 20):
            table = table.drop_columns([c for c in newer if c in table.column_names])
        pq.write_table(table, results / f"part-{key}.parquet")


def fabricate(folder: Path, n: int, family: str = "ebm", seed: int = 0, workers: int = 1) -> Path:
    """n part files under folder/results, each a template part with its own trial key, seed and
    metric values; the first 5% without the template's newer columns (written by older code).
    Written by `workers` processes (40,000 parts are ~4 minutes of one core)."""
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, workers + 1).astype(int)
    if workers == 1:
        _write_parts(results, 0, n, n, family, seed)
        return folder
    with ProcessPoolExecutor(workers) as pool:
        for done in [pool.submit(_write_parts, results, a, b, n, family, seed) for a, b in zip(bounds, bounds[1:])]:
            done.result()
    return folder


# Each measurement runs in its own interpreter: `python bench/results_scale.py --measure WHAT FOLDER`.
# FOLDER is a local path or an s3:// URI.
MEASURES = {
    "load": "from analysis import load; df = load(FOLDER)",
    "load_3_columns": "from analysis import load; df = load(FOLDER, columns=['seed', 'trial_key', 'status'])",
    "pyarrow_dataset": ("import pyarrow.dataset as ds; "
                        "df = ds.dataset(FOLDER + '/results', format='parquet').to_table().to_pandas()"),
    "duckdb": ("import duckdb; df = duckdb.sql(\"select * from read_parquet('\" + FOLDER + "
               "\"/results/part-*.parquet', union_by_name=true)\").df()"),
    "duckdb_count": ("import duckdb; df = duckdb.sql(\"select count(*), count(distinct trial_key) from "
                     "read_parquet('\" + FOLDER + \"/results/part-*.parquet', union_by_name=true)\").df()"),
    "compact": "from tuner.compact import main; assert main([FOLDER]) == 0; df = None",
    "load_compacted": "from analysis import load; df = load(FOLDER); assert df.attrs['compacted']",
    "pyarrow_compacted": "df = ds.dataset(data, format='parquet', filesystem=fs).to_table().to_pandas()",
    "duckdb_compacted": "import duckdb; df = duckdb.sql(f\"select * from read_parquet('{data}')\").df()",
    "report_compacted": "from analysis.report import build; import tempfile; build(FOLDER, tempfile.mkdtemp()); df = None",
    "load_before_37": "df = before.load(FOLDER)",
}
# The compacted file's path, found before the clock starts: the baselines only read it.
COMPACTED = ("import json, pyarrow.dataset as ds, pyarrow.fs as pafs; fs, root = pafs.FileSystem.from_uri(FOLDER); "
             "data = root + '/compacted/' + json.loads(fs.open_input_stream(root + '/compacted/manifest.json').read())['data']")
SETUP = {  # run before the clock starts
    "pyarrow_compacted": COMPACTED,
    "duckdb_compacted": COMPACTED,
    # the loader as it was before issue 37 (commit 1ceee24), for comparison
    "load_before_37": ("import subprocess, types; before = types.ModuleType('before'); "
                       "exec(subprocess.run(['git', 'show', '1ceee24:analysis/load.py'], capture_output=True, text=True, "
                       "check=True, cwd=REPO).stdout, before.__dict__)"),
}
LOCAL_ONLY = {"duckdb", "duckdb_count", "duckdb_compacted", "report_compacted"}  # DuckDB's httpfs is a download


def measure(what: str, folder: str) -> dict:
    """Run one measurement here (in the subprocess): wall and CPU seconds, peak RSS growth, the
    RSS the result keeps (the loaded frame, as the process holds it)."""
    import resource
    import warnings

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    warnings.simplefilter("ignore")
    code = MEASURES[what].replace("FOLDER", repr(folder))
    scope: dict = {}
    exec("import pandas, pyarrow, pyarrow.dataset, pyarrow.parquet, analysis, analysis.report, tuner.compact", scope)  # noqa: S102 - imports, not timed
    if "duckdb" in what:
        exec("import duckdb", scope)  # noqa: S102
    scope["REPO"] = str(REPO)
    exec(SETUP.get(what, "").replace("FOLDER", repr(folder)), scope)  # noqa: S102
    before, cpu0 = rss_mib(), cpu()
    start = time.perf_counter()
    exec(code, scope)  # noqa: S102 - the fixed snippets above
    seconds, cpu_s = time.perf_counter() - start, cpu() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    df = scope["df"]
    return {"seconds": seconds, "cpu": cpu_s, "peak": peak - before, "kept": rss_mib() - before,
            "shape": "" if df is None else f"{len(df)} rows x {df.shape[1]} columns"}


def run_measure(what: str, folder: str, repeat: int = 1) -> dict:
    """One measurement in a fresh interpreter; one under REPEAT_BELOW s is run up to `repeat`
    times and the fastest kept (a shared machine's noise is larger than such a read)."""
    best = None
    for i in range(repeat):
        done = subprocess.run([sys.executable, __file__, "--measure", what, folder], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        got = {**json.loads(done.stdout.strip().splitlines()[-1]), "runs": i + 1}
        best = got if best is None or got["seconds"] < best["seconds"] else {**best, "runs": i + 1}
        if got["seconds"] > REPEAT_BELOW:
            break
    return best


REPEAT_BELOW = 5.0


@contextlib.contextmanager
def s3_server():
    """A moto S3 server on a free loopback port (as tests/test_object_store.py starts it), its
    bucket, and the environment that reaches it set in os.environ (the measures inherit it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        fs = pafs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"127.0.0.1:{port}", scheme="http")
        fs.create_dir(BUCKET)
        yield fs
    finally:
        server.kill()
        server.wait()
        os.environ.clear()
        os.environ.update(saved)


BUCKET = "noisetune-bench"


def line_of(what: str, r: dict) -> str:
    if "error" in r:
        return f"{what:18s} failed: {r['error']}"
    if "skipped" in r:
        return f"{what:18s} not run: {r['skipped']}"
    best = f"  (best of {r['runs']})" if r.get("runs", 1) > 1 else ""
    return (f"{what:18s} {r['seconds']:7.2f} s wall {r['cpu']:7.2f} s cpu  peak +{r['peak']:6.0f} MiB  "
            f"kept +{r['kept']:6.0f} MiB  {r['shape']}{best}")


def ratios(results: dict) -> list[str]:
    """The issue's bars: load against pyarrow.dataset (parts, compacted), peak against kept."""
    def ok(*names):
        return all("cpu" in results.get(n, {}) for n in names)
    out = []
    for mine, theirs in [("load", "pyarrow_dataset"), ("load_compacted", "pyarrow_compacted")]:
        if ok(mine, theirs):
            a, b = results[mine], results[theirs]
            out.append(f"{mine} / {theirs} {a['seconds'] / b['seconds']:.2f}x wall, {a['cpu'] / b['cpu']:.2f}x cpu")
    out += [f"{w} peak / kept {results[w]['peak'] / max(results[w]['kept'], 1):.2f}"
            for w in ["load", "load_compacted"] if ok(w)]
    return out


def interleaved(folder: str, rounds: int) -> list[str]:
    """`analysis.load` of a compacted run against pyarrow.dataset's read of its compacted file,
    alternately in one interpreter, `rounds` times each: min and median wall and CPU seconds. A
    read of a few milliseconds is below the noise of one fresh interpreter on a shared machine."""
    import statistics

    import pyarrow.dataset as ds

    from analysis import load

    fs, root = pafs.FileSystem.from_uri(folder)
    with fs.open_input_stream(f"{root}/compacted/manifest.json") as f:
        data = f"{root}/compacted/{json.loads(f.read())['data']}"
    reads = {"load_compacted": lambda: load(folder).attrs["compacted"][0],
             "pyarrow_compacted": lambda: ds.dataset(data, format="parquet", filesystem=fs).to_table().to_pandas()}
    took: dict[str, list[tuple[float, float]]] = {name: [] for name in reads}
    for _ in range(rounds):
        for name, read in reads.items():
            wall, cpu = time.perf_counter(), time.process_time()
            assert read() is not None
            took[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    stats = {name: [f(x[k] for x in runs) for k in (0, 1) for f in (min, statistics.median)]
             for name, runs in took.items()}
    out = [f"{name:18s} wall min {s[0] * 1e3:7.1f} ms median {s[1] * 1e3:7.1f} ms   cpu min {s[2] * 1e3:7.1f} ms "
           f"median {s[3] * 1e3:7.1f} ms   ({rounds} rounds, interleaved, one interpreter)" for name, s in stats.items()]
    a, b = stats["load_compacted"], stats["pyarrow_compacted"]
    return out + [f"load_compacted / pyarrow_compacted {a[0] / b[0]:.2f}x min wall, {a[1] / b[1]:.2f}x median wall, "
                  f"{a[2] / b[2]:.2f}x min cpu, {a[3] / b[3]:.2f}x median cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="400,4000", help="comma-separated part counts")
    ap.add_argument("--families", default="ebm,ninr")
    ap.add_argument("--work", default=None, help="folder for the fabricated parts (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report-max", type=int, default=4000, help="build the report only up to this many parts")
    ap.add_argument("--s3", action="store_true", help="read the parts from a local moto S3 server instead of the disk")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes fabricating the parts")
    ap.add_argument("--repeat", type=int, default=3, help=f"runs of a measurement under {REPEAT_BELOW:.0f} s (fastest kept)")
    ap.add_argument("--max-peak-mib", type=float, default=None,
                    help="skip a measurement whose peak, scaled from a smaller run, would pass this "
                         "(default: half the memory available at the start)")
    ap.add_argument("--interleaved", metavar="RUN", help="only: a compacted run's load against pyarrow's read of its "
                                                          "file, alternately in one interpreter (see interleaved)")
    ap.add_argument("--rounds", type=int, default=40, help="rounds of --interleaved")
    ap.add_argument("--measure", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    if args.interleaved:
        lines = [f"# bench/results_scale.py {' '.join(sys.argv[1:])}   {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                 f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", *interleaved(args.interleaved, args.rounds)]
        print("\n".join(lines))
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n".join(lines) + "\n")
        return
    try:
        import duckdb  # noqa: F401
        have_duckdb = True
    except ImportError:
        have_duckdb = False
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024
    limit = args.max_peak_mib or available / 2
    work = Path(args.work or tempfile.mkdtemp(prefix="results_scale-"))
    lines = [f"# bench/results_scale.py {' '.join(sys.argv[1:])}   {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, {available:.0f} MiB available, "
             f"pyarrow {pa.__version__}, python {platform.python_version()}, "
             f"duckdb {'installed' if have_duckdb else 'not installed'}; storage: "
             + ("a moto S3 server on 127.0.0.1 (one process, Python)" if args.s3 else "local disk"),
             "# one run each (the fastest of up to --repeat for a read under 5 s), in a fresh interpreter, imports "
             "not counted: wall and CPU seconds (user + sys, all threads of the reading process; not the S3 "
             "server's); peak: the process's peak RSS less its RSS before the read (MiB); kept: its RSS after the "
             "read, the result alive, less the same (the loaded frame as the process holds it)"]
    if args.s3:
        lines.append("# DuckDB on s3:// needs its httpfs extension, which DuckDB downloads on INSTALL: not installed "
                     "here (offline), so DuckDB is not measured on S3")
    print("\n".join(lines), flush=True)
    seen: dict[tuple[str, str], tuple[int, float]] = {}  # (family, measure) -> (parts, peak MiB) of its last run
    server = s3_server() if args.s3 else contextlib.nullcontext()
    with server as s3:
        for family in args.families.split(","):
            for n in [int(x) for x in args.parts.split(",")]:
                folder = work / f"{family}-{n}"
                if folder.exists():
                    shutil.rmtree(folder)
                start = time.perf_counter()
                fabricate(folder, n, family, workers=args.workers)
                size = sum(p.stat().st_size for p in (folder / "results").glob("part-*.parquet")) / 2**20
                made = time.perf_counter() - start
                location = str(folder)
                if s3 is not None:
                    start = time.perf_counter()
                    location = f"s3://{BUCKET}/{family}-{n}"
                    pafs.copy_files(str(folder / "results"), f"{BUCKET}/{family}-{n}/results",
                                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
                    made = f"{made:.0f} s, uploaded in {time.perf_counter() - start:.0f} s"
                else:
                    made = f"{made:.0f} s"
                head = (f"\n## {family}: {n} parts, {size:.0f} MiB (fabricated in {made} by {args.workers} processes; "
                        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
                print(head, flush=True)
                lines.append(head)

                def run(what: str) -> dict:
                    before = seen.get((family, what))
                    if what != "compact" and "cpu" not in results.get("compact", {"cpu": 0}):
                        r = {"skipped": "no compaction"}
                    elif before and before[1] * n / before[0] > limit:
                        r = {"skipped": f"peak {before[1]:.0f} MiB at {before[0]} parts scales to "
                                        f"{before[1] * n / before[0]:.0f} MiB, over the {limit:.0f} MiB allowed"}
                    else:
                        r = run_measure(what, location, 1 if what == "compact" else args.repeat)
                    if "peak" in r:
                        seen[(family, what)] = (n, max(r["peak"], 1.0))
                    line = line_of(what, r)
                    print(line, flush=True)
                    lines.append(line)
                    return r

                local = s3 is None
                results: dict[str, dict] = {}
                for w in ["load", "load_3_columns", "pyarrow_dataset", *(["duckdb", "duckdb_count"] if have_duckdb and local else [])]:
                    results[w] = run(w)
                results["compact"] = run("compact")
                for w in ["load_compacted", "pyarrow_compacted", *(["duckdb_compacted"] if have_duckdb and local else []),
                          *(["report_compacted"] if family == "ebm" and n <= args.report_max and local else [])]:
                    results[w] = run(w)
                for line in ratios(results):
                    print(line, flush=True)
                    lines.append(line)
                shutil.rmtree(folder)
                if s3 is not None:
                    s3.delete_dir(f"{BUCKET}/{family}-{n}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Results at paper scale (issue 37): how long a results folder of N part files takes to load.

    nice -n 10 python bench/results_scale.py --parts 400,4000 --out bench/results/results_scale_cpu.txt

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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {  # family -> a committed part of a real run, and the columns its older parts lack
    "ebm": (REPO / "docs/ebm-ablation-fair/ablate_ebm-fair-textures32/results",
            ["noise_sharing", "energy_gap_median", "energy_mean_std_median", "energy_gap_std_median"]),
    "ninr": (REPO / "docs/ninr-quick/rows/ninr_compare-quick/results", ["label"]),
}


def fabricate(folder: Path, n: int, family: str = "ebm", seed: int = 0) -> Path:
    """n part files under folder/results, each a template part with its own trial key, seed and
    metric values; the first 5% without the template's newer columns (written by older code)."""
    source, newer = TEMPLATES[family]
    template = pq.read_table(sorted(source.glob("part-*.parquet"))[0])
    rng = np.random.default_rng(seed)
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    floats = [i for i, f in enumerate(template.schema) if pa.types.is_floating(f.type)]
    for i in range(n):
        table = template
        key = f"{i:016x}"
        table = table.set_column(table.schema.get_field_index("trial_key"), "trial_key",
                                 pa.array([key] * table.num_rows))
        if "seed" in table.column_names:
            table = table.set_column(table.schema.get_field_index("seed"), "seed",
                                     pa.array([i % 10] * table.num_rows, pa.int64()))
        for j in floats:
            table = table.set_column(j, table.schema.field(j), pa.array(rng.random(table.num_rows)))
        if i < max(1, n // 20):
            table = table.drop_columns([c for c in newer if c in table.column_names])
        pq.write_table(table, results / f"part-{key}.parquet")
    return folder


# Each measurement runs in its own interpreter: `python bench/results_scale.py --measure WHAT FOLDER`.
COMPACTED = "import glob; data = glob.glob(FOLDER + '/compacted/rows-*.parquet')[0]; "
MEASURES = {
    "load": "from analysis import load; df = load(FOLDER)",
    "load_3_columns": "from analysis import load; df = load(FOLDER, columns=['seed', 'trial_key', 'status'])",
    "pyarrow_dataset": ("import pyarrow.dataset as ds; "
                        "df = ds.dataset(FOLDER + '/results', format='parquet').to_table().to_pandas()"),
    "duckdb": ("import duckdb; df = duckdb.sql(\"select * from read_parquet('\" + FOLDER + "
               "\"/results/part-*.parquet', union_by_name=true)\").df()"),
    "duckdb_count": ("import duckdb; df = duckdb.sql(\"select count(*), count(distinct trial_key) from "
                     "read_parquet('\" + FOLDER + \"/results/part-*.parquet', union_by_name=true)\").df()"),
    "load_compacted": "from analysis import load; df = load(FOLDER); assert df.attrs['compacted']",
    "pyarrow_compacted": COMPACTED + "import pyarrow.dataset as ds; df = ds.dataset(data, format='parquet').to_table().to_pandas()",
    "duckdb_compacted": COMPACTED + "import duckdb; df = duckdb.sql(f\"select * from read_parquet('{data}')\").df()",
    "report_compacted": "from analysis.report import build; import tempfile; build(FOLDER, tempfile.mkdtemp()); df = None",
    "load_before_37": "df = before.load(FOLDER)",
}
SETUP = {  # run before the clock starts: the loader as it was before issue 37 (commit 1ceee24), for comparison
    "load_before_37": ("import subprocess, types; before = types.ModuleType('before'); "
                       "exec(subprocess.run(['git', 'show', '1ceee24:analysis/load.py'], capture_output=True, text=True, "
                       "check=True, cwd=REPO).stdout, before.__dict__)"),
}


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
    exec("import pandas, pyarrow, pyarrow.dataset, pyarrow.parquet, analysis, analysis.report", scope)  # noqa: S102 - imports, not timed
    if "duckdb" in what:
        exec("import duckdb", scope)  # noqa: S102
    scope["REPO"] = str(REPO)
    exec(SETUP.get(what, ""), scope)  # noqa: S102
    before, cpu0 = rss_mib(), cpu()
    start = time.perf_counter()
    exec(code, scope)  # noqa: S102 - the fixed snippets above
    seconds, cpu_s = time.perf_counter() - start, cpu() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    df = scope["df"]
    return {"seconds": seconds, "cpu": cpu_s, "peak": peak - before, "kept": rss_mib() - before,
            "shape": "" if df is None else f"{len(df)} rows x {df.shape[1]} columns"}


def run_measure(what: str, folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, __file__, "--measure", what, str(folder)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="400,4000", help="comma-separated part counts")
    ap.add_argument("--families", default="ebm,ninr")
    ap.add_argument("--work", default=None, help="folder for the fabricated parts (default: a temporary one)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report-max", type=int, default=4000, help="build the report only up to this many parts")
    ap.add_argument("--measure", nargs=2, metavar=("WHAT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    try:
        import duckdb  # noqa: F401
        have_duckdb = True
    except ImportError:
        have_duckdb = False
    report_max = args.report_max
    work = Path(args.work or tempfile.mkdtemp(prefix="results_scale-"))
    lines = [f"# bench/results_scale.py {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
             f"pyarrow {pa.__version__}, python {platform.python_version()}, "
             f"duckdb {'installed' if have_duckdb else 'not installed'}",
             "# one run each, in a fresh interpreter, imports not counted: wall and CPU seconds (user + sys, all "
             "threads); peak: the process's peak RSS less its RSS before the read (MiB); kept: its RSS after the "
             "read, the result alive, less the same (the loaded frame as the process holds it)"]
    print("\n".join(lines), flush=True)
    for family in args.families.split(","):
        for n in [int(x) for x in args.parts.split(",")]:
            folder = work / f"{family}-{n}"
            if folder.exists():
                shutil.rmtree(folder)
            start = time.perf_counter()
            fabricate(folder, n, family)
            size = sum(p.stat().st_size for p in (folder / "results").glob("part-*.parquet")) / 2**20
            head = f"\n## {family}: {n} parts, {size:.0f} MiB on disk (fabricated in {time.perf_counter() - start:.0f} s)"
            print(head, flush=True)
            lines.append(head)
            duck = ["duckdb", "duckdb_count"] if have_duckdb else []
            results = {w: run_measure(w, folder) for w in ["load", "load_3_columns", "pyarrow_dataset", *duck]}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tuner.compact", str(folder)], check=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
            results["compact (CLI)"] = {"seconds": time.perf_counter() - start}
            for w in ["load_compacted", "pyarrow_compacted", *(["duckdb_compacted"] if have_duckdb else []),
                      *(["report_compacted"] if family == "ebm" and n <= report_max else [])]:
                results[w] = run_measure(w, folder)
            for what, r in results.items():
                if "error" in r:
                    line = f"{what:18s} failed: {r['error']}"
                elif "cpu" not in r:
                    line = f"{what:18s} {r['seconds']:7.2f} s wall (interpreter start included)"
                else:
                    line = (f"{what:18s} {r['seconds']:7.2f} s wall {r['cpu']:7.2f} s cpu  peak +{r['peak']:6.0f} MiB  "
                            f"kept +{r['kept']:6.0f} MiB  {r['shape']}")
                print(line, flush=True)
                lines.append(line)
            ratio = [f"load / pyarrow_dataset {results['load']['seconds'] / results['pyarrow_dataset']['seconds']:.2f}x wall, "
                     f"{results['load']['cpu'] / results['pyarrow_dataset']['cpu']:.2f}x cpu",
                     f"load_compacted / pyarrow_compacted {results['load_compacted']['seconds'] / results['pyarrow_compacted']['seconds']:.2f}x wall, "
                     f"{results['load_compacted']['cpu'] / results['pyarrow_compacted']['cpu']:.2f}x cpu",
                     f"load peak / kept {results['load']['peak'] / max(results['load']['kept'], 1):.2f}, "
                     f"load_compacted peak / kept {results['load_compacted']['peak'] / max(results['load_compacted']['kept'], 1):.2f}"]
            for line in ratio:
                print(line, flush=True)
                lines.append(line)
            shutil.rmtree(folder)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`python -m tuner.compact RUN`: a run's parts also written as one Parquet file, for fast reads.

    python -m tuner.compact results/dist_ebm-paper        # or s3://bucket/runs/dist_ebm-paper

tuner.run does the same at each run's end. A paper preset writes thousands of parts (one per
trial); `analysis.load` reads them all, one request each, while the compacted file is one read.
The layout (`<run>/compacted/`: a data file and the manifest naming every part it covers with its
size and modification time) and the rule for when it is read are `analysis.load`'s: the reader
owns the contract, this module only writes it. The parts stay the commit record: nothing here
deletes or changes one; a trial that writes a part later makes the compaction stale and the
loader reads the parts again until the next compaction.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
import warnings

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.load import (COMPACTED, LAYOUT, MANIFEST, ROW_GROUP, compacted_folder, fresh_compaction, listing,
                           part_infos, read)
from tuner.store import ResultStore


def compact(store: ResultStore, force: bool = False) -> str:
    """Write the run's compacted dataset unless the one there covers its parts as they are now;
    a line saying what was done. Unreadable parts are named in the manifest (the loader warns
    about them as it would reading the parts)."""
    _, infos = part_infos(store.results_location)  # listed before the read: a part written meanwhile makes it stale
    fs = store.fs
    infos = [i for i in infos if i.path.rpartition("/")[0] == store.results]
    if not infos:
        return f"no part files under {store.results_location} to compact"
    if not force and fresh_compaction(fs, store.results, infos):
        return f"compacted dataset of {len(infos)} parts is current ({store.root}/{COMPACTED})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each unreadable part is named in the line returned
        rows = read(store.results_location, compacted=False)
    if rows.objects:
        return (f"not compacted: column(s) {sorted(rows.objects)} hold numbers in some parts and text in others; "
                "analysis.load reads the parts")
    folder = compacted_folder(store.results)
    fs.create_dir(folder, recursive=True)
    data = f"rows-{uuid.uuid4().hex}.parquet"  # a new name: a reader of the old manifest still finds its file
    pq.write_table(rows.table, f"{folder}/{data}", filesystem=fs, row_group_size=ROW_GROUP)
    manifest = {"layout": LAYOUT, "data": data, "parts": listing(infos), "unreadable": rows.unreadable,
                "rows": rows.table.num_rows}
    store._write_atomic(f"{folder}/{MANIFEST}", json.dumps(manifest).encode())  # the commit point
    for old in fs.get_file_info(pafs.FileSelector(folder)):  # earlier data files, and any a killed compaction left
        if old.base_name.startswith("rows-") and old.base_name != data:
            fs.delete_file(old.path)
    skipped = f"; {len(rows.unreadable)} unreadable part(s) left out: {', '.join(rows.unreadable)}" if rows.unreadable else ""
    return (f"compacted {len(infos) - len(rows.unreadable)} parts ({rows.table.num_rows} rows) into "
            f"{store.root}/{COMPACTED}/{data}{skipped}")


def store_of(run: str) -> ResultStore:
    """The ResultStore of a run folder (or its results/ folder), a path or a URI."""
    run = run.rstrip("/")
    if run.endswith("/results"):
        run = run[: -len("/results")]
    storage, _, name = run.rpartition("/")
    return ResultStore(storage or ".", name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuner.compact", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (<storage>/<name>) or URI")
    p.add_argument("--force", action="store_true", help="write it again even if it is current")
    args = p.parse_args(argv)
    store = store_of(args.run)
    if store.fs.get_file_info(store.results).type != pafs.FileType.Directory:
        print(f"error: run={args.run!r} has no results/ folder; allowed: a run folder <storage>/<name>", file=sys.stderr)
        return 2
    print(compact(store, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())

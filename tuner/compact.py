"""`python -m tuner.compact RUN`: a run's parts also written as one Parquet file, for fast reads.

    python -m tuner.compact results/dist_ebm-paper        # or s3://bucket/runs/dist_ebm-paper

tuner.run does the same at each run's end. A paper preset writes thousands of parts (one per
trial); `analysis.load` reads them all, one request each, while the compacted file is one read.
The layout (`<run>/compacted/`: a data file, the listing of every part it covers with its size
and modification time, and the manifest naming both) and the rule for when it is read are
`analysis.load`'s: the reader owns the contract, this module only writes it. The parts stay the
commit record: nothing here deletes or changes one; a trial that writes a part later makes the
compaction stale and the loader reads the parts again until the next compaction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
import warnings

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.load import (COMPACTED, LAYOUT, MANIFEST, ROW_GROUP, compacted_folder, folder_time, fresh_compaction,
                           listing, part_infos, read, unchanged_compaction)
from tuner.store import ResultStore

SETTLE = (0.0, 0.01, 0.1, 1.0)  # seconds to wait, in turn, for the filesystem's clock to pass the folder's time


def settled_folder_time(store: ResultStore) -> int | None:
    """The results folder's modification time, for the manifest, once the filesystem's clock
    (the time of a probe file written in the run folder) has moved past it: any later change to
    the folder then shows as another time, even on a clock that ticks every few milliseconds or
    every second. None on an object store, or if the folder kept changing while we waited."""
    if folder_time(store.fs, store.results) is None:
        return None
    for pause in SETTLE:
        time.sleep(pause)
        probe = f"{store.root}/.clock-{uuid.uuid4().hex}"
        with store.fs.open_output_stream(probe):
            pass
        now = store.fs.get_file_info(probe).mtime_ns
        store.fs.delete_file(probe)
        then = folder_time(store.fs, store.results)
        if then is not None and then < now:
            return then
    return None


def compact(store: ResultStore, force: bool = False) -> str:
    """Write the run's compacted dataset unless the one there covers its parts as they are now;
    a line saying what was done. Unreadable parts are named in the manifest (the loader warns
    about them as it would reading the parts)."""
    stamp = settled_folder_time(store)  # before the listing: a part written after it changes the folder's time
    _, infos = part_infos(store.results_location)  # listed before the read: a part written meanwhile makes it stale
    fs = store.fs
    infos = [i for i in infos if i.path.rpartition("/")[0] == store.results]
    if not infos:
        return f"no part files under {store.results_location} to compact"
    # Current: fresh, and dated with the folder's time where it has one (else written again, dated)
    if (not force and fresh_compaction(fs, store.results, infos)
            and (stamp is None or unchanged_compaction(fs, store.results))):
        return f"compacted dataset of {len(infos)} parts is current ({store.root}/{COMPACTED})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each unreadable part is named in the line returned
        rows = read(store.results_location, compacted=False)
    if rows.objects:
        return (f"not compacted: column(s) {sorted(rows.objects)} hold numbers in some parts and text in others; "
                "analysis.load reads the parts")
    folder = compacted_folder(store.results)
    fs.create_dir(folder, recursive=True)
    new = uuid.uuid4().hex  # new names: a reader of the old manifest still finds its files
    data, parts = f"rows-{new}.parquet", f"parts-{new}.json"
    pq.write_table(rows.table, f"{folder}/{data}", filesystem=fs, row_group_size=ROW_GROUP)
    with fs.open_output_stream(f"{folder}/{parts}") as f:
        f.write(json.dumps(listing(infos)).encode())
    manifest = {"layout": LAYOUT, "data": data, "listing": parts, "parts": len(infos), "rows": rows.table.num_rows,
                "unreadable": rows.unreadable, "folder_mtime_ns": stamp}
    store._write_atomic(f"{folder}/{MANIFEST}", json.dumps(manifest).encode())  # the commit point
    for old in fs.get_file_info(pafs.FileSelector(folder)):  # earlier files, and any a killed compaction left
        if old.base_name.startswith(("rows-", "parts-")) and old.base_name not in (data, parts):
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

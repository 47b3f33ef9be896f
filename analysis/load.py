"""Read every Parquet part file of a results folder into one typed pandas DataFrame.

A part file that cannot be read is warned about by name and listed in
`df.attrs["unreadable"]`, never silently dropped: a missing trial changes the means.

The parts' schemas are unified: a column only newer parts have is kept (null in the older ones),
an integer column that another part stores as floats becomes floats, and a column that was
null in every row of a part (stored there as strings) takes the other parts' type. Types come
from the unified Arrow schema, not from the values: text is pandas' `string` dtype. A column with
numbers in some parts and text in others stays an object column of both, as pandas would
concatenate them.

Speed (issue 37): the parts are read concurrently, each in one request (an object store too),
only the columns asked for; rows are filtered in Arrow before the one conversion to pandas.

The compacted dataset: a contract between `tuner/compact.py` (the writer) and this reader,
stated here once. Beside a run's `results/` folder (`<run>/results/part-*.parquet`):

    <run>/compacted/rows-<id>.parquet   every readable part's rows in one file (the parts' order,
                                         the unified schema, row groups of at most ROW_GROUP rows)
    <run>/compacted/parts-<id>.json     {part name: [size, mtime_ns]} for every part listed when it
                                         was written, unreadable ones included
    <run>/compacted/manifest.json       {"layout": LAYOUT, "data": "rows-<id>.parquet",
                                         "listing": "parts-<id>.json", "parts": how many,
                                         "rows": how many, "unreadable": [part names],
                                         "folder_mtime_ns": results/'s modification time before
                                         that listing, or null}

The data file and the listing are written first under new names, then the manifest by rename, so
a reader sees either the old set or the new one. `load` reads the compacted file only while the
listing names exactly the parts the folder holds, each with the size and modification time it
had; a part added, rewritten or removed since makes it stale and the parts are read instead.
Parts are the commit record and are never deleted by compaction.

That check costs a listing of every part's size and time: at 4,000 parts on a local disk, more
than reading the compacted file itself. So on a local disk the manifest also records the results
folder's modification time, and while the folder still has that time neither the parts nor the
listing are read: adding, removing or renaming a file in a folder changes its time, and a part is
only ever replaced by a rename (ResultStore.write_part, as rsync and cp -a do). The writer records
the time only once the filesystem's clock has moved past it (null otherwise), so that a part
written just after the listing, within the same tick of a coarse clock, cannot share it. Another
folder time (a temporary file came and went, say) means the full check, not staleness. The one
change this does not see: a part overwritten in place on a local disk (plain `cp` over an existing
part file); run `python -m tuner.compact --force RUN` after that. Object stores have no folder
times and always take the full check; their listing costs one request per 1,000 parts.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

COMPACTED = "compacted"    # folder beside results/ in a run folder
MANIFEST = "manifest.json"
LAYOUT = 2                 # the manifest's version; another value is not read (1: the listing inside it)
ROW_GROUP = 65536          # rows per row group of the compacted file
_READERS = 16              # parts read at once: I/O-bound on an object store, cheap locally
_INDEX = re.compile(r"__index_level_\d+__")  # a pandas index written as a column by from_pandas


def _filesystem(path_or_uri: str):
    """pyarrow filesystem and in-filesystem path; plain paths are local."""
    path_or_uri = str(path_or_uri)
    if "://" in path_or_uri:
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), path_or_uri


def _is_part(info: pafs.FileInfo) -> bool:
    return (info.type == pafs.FileType.File and info.base_name.startswith("part-")
            and info.base_name.endswith(".parquet"))


def part_infos(path_or_uri: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """The part files (with size and modification time, from one listing) under an experiment
    folder, its results/ folder, or any folder above."""
    fs, root = _filesystem(path_or_uri)
    root = root.rstrip("/") or "/"
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [info]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no results folder at {path_or_uri}")
    for base in (root + "/results", root):
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            continue
        parts = sorted((f for f in fs.get_file_info(pafs.FileSelector(base, recursive=False)) if _is_part(f)),
                       key=lambda f: f.path)
        if parts:
            return fs, parts
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return fs, sorted((f for f in found if _is_part(f)), key=lambda f: f.path)


def part_files(path_or_uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The part files' paths under an experiment folder, its results/ folder, or any folder above."""
    fs, infos = part_infos(path_or_uri)
    return fs, [f.path for f in infos]


def compacted_folder(results: str) -> str | None:
    """Where the compacted dataset of a results folder lives: `<run>/compacted`, only for a
    folder named results/ (a run's); loose part folders have none."""
    head, _, name = results.rstrip("/").rpartition("/")
    return f"{head}/{COMPACTED}" if name == "results" and head else None


def listing(infos: list[pafs.FileInfo]) -> dict[str, list[int]]:
    """The manifest's record of a folder's parts: name -> [size, mtime_ns]."""
    return {f.base_name: [f.size, f.mtime_ns] for f in infos}


def folder_time(fs, results: str) -> int | None:
    """The results folder's modification time on a local disk; None elsewhere (an object store's
    folders have no time that changes with their files)."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    info = fs.get_file_info(results)
    return info.mtime_ns if info.type == pafs.FileType.Directory else None


def _manifest(fs, results: str) -> dict | None:
    """The manifest of the results folder's compacted dataset, if there is one of this layout."""
    folder = compacted_folder(results)
    if folder is None:
        return None
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST}") as f:
            manifest = json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("layout") == LAYOUT else None


def _compaction(results: str, manifest: dict) -> tuple[str, list[str], int]:
    """(data file, unreadable part names, parts) a manifest names."""
    return f"{compacted_folder(results)}/{manifest['data']}", list(manifest["unreadable"]), manifest["parts"]


def fresh_compaction(fs, results: str, infos: list[pafs.FileInfo]) -> tuple[str, list[str], int] | None:
    """(data file, unreadable part names, parts) of the results folder's compacted dataset when
    it covers exactly these parts, unchanged; else None (absent, stale, or another layout)."""
    if any(f.mtime_ns is None for f in infos):  # a store without times cannot tell
        return None
    manifest = _manifest(fs, results)
    if manifest is None:
        return None
    try:
        with fs.open_input_stream(f"{compacted_folder(results)}/{manifest['listing']}") as f:
            parts = json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):  # replaced by a newer compaction while we looked
        return None
    return _compaction(results, manifest) if parts == listing(infos) else None


def unchanged_compaction(fs, results: str) -> tuple[str, list[str], int] | None:
    """(data file, unreadable part names, parts) of the results folder's compacted dataset when
    the folder still has the modification time its manifest recorded: no listing of the parts
    (local disks only); else None, and the full check decides."""
    now = None if compacted_folder(results) is None else folder_time(fs, results)
    manifest = None if now is None else _manifest(fs, results)
    if manifest is None or manifest.get("folder_mtime_ns") != now:
        return None
    return _compaction(results, manifest)


def _filter(filters) -> tuple[pc.Expression | None, set[str]]:
    """A row filter in pyarrow's DNF form (as pandas.read_parquet takes it: [(column, op, value),
    ...] or a list of such lists, or'ed) as an Arrow expression, and the columns it reads."""
    if not filters:
        return None, set()
    groups = filters if isinstance(filters[0], list) else [filters]
    return pq.filters_to_expression(filters), {term[0] for group in groups for term in group}


def _read_part(fs, path: str, columns: list[str] | None) -> pa.Table:
    """One part, in one request, only the columns asked for that it has."""
    with fs.open_input_stream(path) as f:
        data = f.read_buffer()
    part = pq.ParquetFile(pa.BufferReader(data))
    names = part.schema_arrow.names
    table = part.read(columns=None if columns is None else [c for c in columns if c in names], use_threads=False)
    table = table.replace_schema_metadata(None)
    return table.drop_columns([c for c in table.column_names if _INDEX.fullmatch(c)])


def _read_compacted(fs, path: str, columns: list[str] | None, expression) -> pa.Table | None:
    """The compacted file, columns and filter given to the Parquet reader (row groups skipped by
    their statistics); None if it is gone (removed by a newer compaction while we looked: the
    caller reads the parts)."""
    try:
        dataset = ds.dataset(path, format="parquet", filesystem=fs)
        names = dataset.schema.names
        return dataset.to_table(columns=None if columns is None else [c for c in columns if c in names],
                                filter=expression)
    except (OSError, pa.ArrowInvalid):
        return None


def _warn_unreadable(data: str, names: list[str]) -> None:
    for name in names:
        warnings.warn(f"skipping unreadable part file {name} (named by {MANIFEST} of {data})", stacklevel=4)


def _common_type(types: set[pa.DataType]) -> pa.DataType | None:
    """The type all of these promote to (int -> float, null -> anything), or None if there is none."""
    try:
        return pa.unify_schemas([pa.schema([("x", t)]) for t in types], promote_options="permissive").field("x").type
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _text_as_string(dtype: pa.DataType):
    return pd.StringDtype() if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) else None


@dataclass
class Rows:
    """Rows of a results folder under one schema, before the conversion to pandas."""
    table: pa.Table                 # the columns with a common type
    objects: dict[str, pd.Series]   # columns with numbers in some parts and text in others, aligned with table
    order: list[str]                # every column, in order of first appearance
    unreadable: list[str]           # part names, each warned about
    parts: int                      # part files found
    compacted: list[str]            # compacted files read instead of their parts


def _mixed_types(tables: list[pa.Table]) -> dict[str, pa.DataType | None]:
    """Columns whose types have no common promotion across the tables: -> the type they take
    once a part that stored the column as text only because it was null in every row yields
    (None: numbers in some parts, text in others, truly)."""
    types: dict[str, set[pa.DataType]] = {}
    for schema in dict.fromkeys(t.schema for t in tables):  # distinct schemas: parts mostly share one
        for field in schema:
            types.setdefault(field.name, set()).add(field.type)
    return {name: _common_type({t.field(name).type for t in tables
                                if name in t.column_names and t.column(name).null_count < t.num_rows} | {pa.null()})
            for name, kinds in types.items() if _common_type(kinds) is None}


def combine(tables: list[pa.Table]) -> tuple[pa.Table, dict[str, pd.Series], list[str]]:
    """Rows of several tables under one schema, as pyarrow unifies them (a missing column is null,
    int -> float, null -> anything; column order of first appearance): (table, the columns with
    numbers in some parts and text in others as object Series aligned with its rows, all columns
    in order)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({}), {}, []
    objects = {}
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        mixed = _mixed_types(tables)
        for name, common in mixed.items():
            if common is None:  # as pandas concatenates them: each part's values, as objects
                objects[name] = pd.concat([t.column(name).to_pandas(types_mapper=_text_as_string).astype(object)
                                           if name in t.column_names else pd.Series([None] * t.num_rows, dtype=object)
                                           for t in tables], ignore_index=True)
                continue
            tables = [t.set_column(t.schema.get_field_index(name), pa.field(name, common), pa.nulls(t.num_rows, common))
                      if name in t.column_names and t.column(name).null_count == t.num_rows else t for t in tables]
        order = list(dict.fromkeys(c for s in dict.fromkeys(t.schema for t in tables) for c in s.names))
        table = pa.concat_tables([t.drop_columns([c for c in objects if c in t.column_names]) for t in tables],
                                 promote_options="permissive")
    else:
        order = table.column_names
    for i, field in enumerate(table.schema):  # null in every part: text, as the store writes it
        if pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, pa.string()), table.column(i).cast(pa.string()))
    return table, objects, order


def frame(table: pa.Table, objects: dict[str, pd.Series], order: list[str],
          expression: pc.Expression | None = None) -> pd.DataFrame:
    """The pandas frame of combined rows, filtered first in Arrow; text columns are pandas'
    `string`, the others as the unified schema typed them. It consumes `table` (self_destruct frees
    each buffer once converted, halving the peak): never touch `table` again after this call."""
    if expression is not None:
        table = table.append_column("__row__", pa.array(np.arange(table.num_rows))).filter(expression)
        kept = table.column("__row__").to_numpy()
        table = table.drop_columns(["__row__"])
        objects = {name: values.iloc[kept].reset_index(drop=True) for name, values in objects.items()}
    df = table.to_pandas(types_mapper=_text_as_string, self_destruct=True, split_blocks=True)
    for name, values in objects.items():
        df[name] = values.to_numpy()
    return df[[c for c in order if c in df.columns]]


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return exc


def read(path_or_uri, columns: list[str] | None = None, expression: pc.Expression | None = None,
         compacted: bool = True) -> Rows:
    """Every readable part's rows under one schema, each run's compacted dataset read instead of
    its parts while it is fresh (compacted=False: always the parts). Warns about each unreadable
    part by name. `columns` are the only ones read; `expression` is pushed to the compacted
    file's reader (the caller filters the result again: the parts are filtered after combining)."""
    if compacted:  # a run (or its results/ folder) unchanged since its compaction: no listing
        fs, root = _filesystem(str(path_or_uri))
        for results in (root.rstrip("/"), root.rstrip("/") + "/results"):
            quick = unchanged_compaction(fs, results)
            table = None if quick is None else _read_compacted(fs, quick[0], columns, expression)
            if table is not None:
                _warn_unreadable(quick[0], quick[1])
                return Rows(*combine([table]), quick[1], quick[2], [quick[0]])
    fs, infos = part_infos(str(path_or_uri))
    by_folder: dict[str, list[pafs.FileInfo]] = {}
    for info in infos:  # sorted paths: each folder's parts are contiguous
        by_folder.setdefault(info.path.rpartition("/")[0], []).append(info)
    slots, unreadable, sources, pending = [], [], [], []
    for folder, group in by_folder.items():
        fresh = fresh_compaction(fs, folder, group) if compacted else None
        table = None if fresh is None else _read_compacted(fs, fresh[0], columns, expression)
        if table is not None:
            slots.append([table])
            _warn_unreadable(fresh[0], fresh[1])
            unreadable += fresh[1]
            sources.append(fresh[0])
            continue
        slots.append([])
        pending += [(len(slots) - 1, info) for info in group]
    with ThreadPoolExecutor(_READERS) as pool:
        got = list(pool.map(lambda item: _safe(_read_part, fs, item[1].path, columns), pending))
    for (slot, info), table in zip(pending, got):
        if isinstance(table, Exception):
            warnings.warn(f"skipping unreadable part file {info.base_name}: {table}", stacklevel=3)
            unreadable.append(info.base_name)
        else:
            slots[slot].append(table)
    table, objects, order = combine([t for slot in slots for t in slot])
    return Rows(table, objects, order, unreadable, len(infos), sources)


def load(path_or_uri, experiment: str | None = None, columns: list[str] | None = None,
         filters=None) -> pd.DataFrame:
    """All rows of all readable part files (optionally one experiment's), typed.

    columns: read only these (a notebook that needs three columns does not read 88); filters:
    rows to keep, in pyarrow's DNF form as pandas.read_parquet takes it, e.g.
    [("status", "==", "ok"), ("n", ">=", 10)]. experiment: only its rows, when the rows have an
    experiment column. attrs: unreadable (part names), parts (how many part files), source,
    compacted (the compacted files read instead of their parts, if any)."""
    expression, needed = _filter(filters)
    wanted = None if columns is None else list(dict.fromkeys([*columns, *needed, *(["experiment"] if experiment else [])]))
    rows = read(path_or_uri, columns=wanted, expression=expression)
    if not rows.order:
        df = pd.DataFrame(columns=["experiment", "status"])
    else:
        absent = [c for c in [*(columns or []), *needed] if c not in rows.order]
        if absent:
            raise KeyError(f"columns {absent} are in no part file under {path_or_uri}")
        if experiment is not None and "experiment" in rows.order:
            mine = pc.field("experiment") == experiment
            expression = mine if expression is None else expression & mine
        df = frame(rows.table, rows.objects, rows.order, expression)
        if columns is not None:
            df = df[list(dict.fromkeys(columns))]
    df.attrs.update(unreadable=rows.unreadable, parts=rows.parts, source=str(path_or_uri), compacted=rows.compacted)
    return df


def query(path_or_uri, sql: str) -> pd.DataFrame:
    """SQL over a results folder, by DuckDB (an optional extra: `pip install duckdb`): the rows,
    read as `load` reads them (the compacted dataset while it is fresh, a local folder or a URI,
    unreadable parts named), are the table `results`, handed to DuckDB as Arrow without a copy.

        query("results/<name>", "select status, count(distinct trial_key) from results group by status")
    """
    try:
        import duckdb
    except ImportError as exc:
        raise ImportError("analysis.query needs DuckDB: pip install duckdb (or the package's [sql] extra)") from exc
    rows = read(path_or_uri)
    table = rows.table
    for name, values in rows.objects.items():  # numbers in some parts, text in others: as text here
        table = table.append_column(name, pa.array(values.map(lambda v: None if v is None else str(v)), pa.string()))
    with duckdb.connect() as con:
        con.register("results", table)
        return con.sql(sql).df()


def artefacts(path_or_uri, trial_key: str) -> dict[str, np.ndarray]:
    """The arrays a trial stored beside its part file (part-<key>.npz), by trial key; {} if none."""
    fs, parts = part_files(str(path_or_uri))
    part = next((p for p in parts if p.rsplit("/", 1)[-1] == f"part-{trial_key}.parquet"), None)
    if part is None:
        raise KeyError(f"trial_key={trial_key!r} has no part file under {path_or_uri}")
    path = part[:-len(".parquet")] + ".npz"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {}
    with fs.open_input_stream(path) as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:  # arrays only, never pickles
            return {name: npz[name] for name in npz.files}

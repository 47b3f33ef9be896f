"""Read every Parquet part file of a results folder into one typed pandas DataFrame.

A part file that cannot be read is warned about by name and listed in
`df.attrs["unreadable"]`, never silently dropped: a missing trial changes the means.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

def _filesystem(path_or_uri: str):
    """pyarrow filesystem and in-filesystem path; plain paths are local."""
    path_or_uri = str(path_or_uri)
    if "://" in path_or_uri:
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), path_or_uri


def part_files(path_or_uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The part files under an experiment folder, its results/ folder, or any folder above."""
    fs, root = _filesystem(path_or_uri)
    root = root.rstrip("/") or "/"
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [root]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no results folder at {path_or_uri}")
    for base in (root + "/results", root):
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            continue
        found = fs.get_file_info(pafs.FileSelector(base, recursive=False))
        parts = sorted(f.path for f in found if f.type == pafs.FileType.File
                       and f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))
        if parts:
            return fs, parts
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    parts = sorted(f.path for f in found if f.type == pafs.FileType.File
                   and f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))
    return fs, parts


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Column types from the data: a column whose values are all numbers (or missing) becomes
    numeric, one of strings becomes a string column, whatever each part file's schema said (a
    column that was null in one part is stored as strings there)."""
    for col in df.columns:
        if df[col].dtype != object and not pd.api.types.is_string_dtype(df[col]):
            continue
        values = df[col].dropna()
        if len(values) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                               for v in values):
            df[col] = pd.to_numeric(df[col], errors="coerce")
        elif all(isinstance(v, str) for v in values):
            df[col] = df[col].astype("string")
    return df


def load(path_or_uri, experiment: str | None = None) -> pd.DataFrame:
    """All rows of all readable part files (optionally one experiment's), typed."""
    fs, parts = part_files(str(path_or_uri))
    frames, unreadable = [], []
    for part in parts:
        try:
            frames.append(pq.read_table(part, filesystem=fs).to_pandas())
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
            name = part.rsplit("/", 1)[-1]
            warnings.warn(f"skipping unreadable part file {name}: {exc}", stacklevel=2)
            unreadable.append(name)
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["experiment", "status"])
    df = _typed(df)
    if experiment is not None and "experiment" in df.columns:
        df = df[df["experiment"] == experiment].reset_index(drop=True)
    df.attrs["unreadable"] = unreadable
    df.attrs["parts"] = len(parts)
    df.attrs["source"] = str(path_or_uri)
    return df


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

"""The Parquet result store: one part file per trial, written in one atomic step.

Layout under `<storage>/<name>/`:
    experiment.json            which experiment and preset own this folder (never mixed)
    results/part-<key>.parquet one per training configuration; <key> hashes that configuration,
                               so a re-run of the same trial replaces its own file
    tune/                      Ray Tune's experiment state (resume)

`storage` is a local folder or a URI that pyarrow understands (s3://, gs://, file://).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.noise import ConfigError

FINAL_STATUSES = ("ok", "diverged")  # a part whose rows all carry one of these needs no re-run


def trial_key(experiment: str, preset: str, point: dict, overrides: dict) -> str:
    """A stable name for one training configuration (same inputs, same key, on any machine)."""
    text = json.dumps([experiment, preset, point, overrides], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class ResultStore:
    """Part files of one named run under a storage folder or URI."""

    def __init__(self, storage: str, name: str):
        if "://" in storage:
            try:
                self.fs, base = pafs.FileSystem.from_uri(storage)
            except Exception as exc:  # unknown scheme, missing credentials, bad bucket name, ...
                raise ConfigError(f"storage={storage!r} is not reachable ({exc}); allowed: a local folder or "
                                  "a pyarrow URI such as s3://bucket/path") from exc
        else:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(storage)
        self.storage, self.name = storage, name
        self.root = f"{base.rstrip('/')}/{name}"
        self.results = f"{self.root}/results"

    @property
    def tune_path(self) -> str:
        """Where Ray Tune keeps this run's state, as a path or URI Tune understands."""
        if "://" in self.storage:
            return f"{self.storage.rstrip('/')}/{self.name}"
        return self.root

    def check(self) -> None:
        """Create the folders, or refuse with a message that names --storage."""
        try:
            self.fs.create_dir(self.results, recursive=True)
            self.fs.get_file_info(self.results)
        except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ... depending on the backend
            raise ConfigError(f"storage={self.storage!r} is not reachable or not writable ({exc}); "
                              "allowed: a writable local folder or a pyarrow URI such as s3://bucket/path") from exc

    def claim(self, experiment: str, preset: str, overrides: dict | None = None,
              seeds: list[int] | None = None) -> None:
        """Record which run owns this folder; refuse one that holds another run's results (a
        resumed Tune run keeps its old settings, so a changed --set or --seeds must not land here)."""
        path = f"{self.root}/experiment.json"
        mine = json.loads(json.dumps({"experiment": experiment, "preset": preset, "overrides": overrides or {},
                                      "seeds": seeds or [0]}, default=str))
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as f:
                theirs = json.loads(f.read())
            if {k: theirs.get(k) for k in mine} != mine:
                raise ConfigError(
                    f"name={self.name!r} under storage={self.storage!r} holds results of "
                    f"{theirs.get('experiment')} --preset {theirs.get('preset')} with overrides "
                    f"{theirs.get('overrides')} and seeds {theirs.get('seeds')}; allowed: the same settings "
                    "(to resume it), or another --name")
            return
        self.fs.create_dir(self.root, recursive=True)
        self._write_atomic(path, json.dumps(mine).encode())

    def part_path(self, key: str) -> str:
        return f"{self.results}/part-{key}.parquet"

    def write_part(self, key: str, rows: list[dict]) -> str:
        """Write a trial's rows as one file: temporary name, then rename (a reader never sees half)."""
        table = pa.Table.from_pylist(rows)
        # A column that is None in every row has no type; strings keep parts' schemas compatible.
        for i, fld in enumerate(table.schema):
            if pa.types.is_null(fld.type):
                table = table.set_column(i, pa.field(fld.name, pa.string()), table.column(i).cast(pa.string()))
        tmp = f"{self.results}/.tmp-{key}-{uuid.uuid4().hex}.parquet"
        self.fs.create_dir(self.results, recursive=True)  # a worker on another node may see no folder yet
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, self.part_path(key))
        return self.part_path(key)

    def read_part(self, key: str) -> pa.Table | None:
        """The trial's rows, or None when absent or unreadable (then the trial runs again)."""
        try:
            return pq.read_table(self.part_path(key), filesystem=self.fs)
        except Exception:  # missing, truncated or garbage: all mean "not finished"
            return None

    def finished(self, key: str) -> bool:
        table = self.read_part(key)
        return (table is not None and table.num_rows > 0 and "status" in table.column_names
                and set(table.column("status").to_pylist()) <= set(FINAL_STATUSES))

    def parts(self) -> list[str]:
        selector = pafs.FileSelector(self.results, allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(selector)
                      if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

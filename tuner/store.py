"""The Parquet result store: one part file per trial, written in one atomic step.

Layout under `<storage>/<name>/`:
    experiment.json            which experiment and preset own this folder (never mixed)
    run.lock                   held by the one tuner.run writing here (two drivers never interleave)
    corrupt/                   unreadable part files, moved aside (kept, never deleted) before a re-run
    results/part-<key>.parquet one per training configuration; <key> hashes that configuration,
                               so a re-run of the same trial replaces its own file
    results/part-<key>.npz     the trial's arrays (artefacts), if its method returned any; written
                               before the part, replaced or removed with it, moved with it to corrupt/
    tune/                      Ray Tune's experiment state (resume)
    compacted/                 all parts as one Parquet file + manifest.json (+ parts-<id>.json, the
                               part listing it was made from), for fast reads: written by
                               tuner/compact.py at a run's end, read by analysis.load while fresh (its
                               layout is analysis.load's); never the record, rewritten at will

`storage` is a local folder or a URI that pyarrow understands (s3://, gs://, file://).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.checks import ConfigError

FINAL_STATUSES = ("ok", "diverged", "skipped")  # a part whose rows all carry one of these needs no re-run


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
    def results_location(self) -> str:
        """The results folder as the user named it (a URI stays a URI), for messages."""
        if "://" in self.storage:
            return f"{self.storage.split('://', 1)[0]}://{self.results}"
        return self.results

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
              seeds: list[int] | None = None, write: bool = True) -> None:
        """Record which run owns this folder; refuse one that holds another run's results (a
        resumed Tune run keeps its old settings, so a changed --set or --seeds must not land here).
        write=False only refuses: nothing is created or changed."""
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
        if not write:
            return
        self.fs.create_dir(self.root, recursive=True)
        self._write_atomic(path, json.dumps(mine).encode())

    def part_path(self, key: str) -> str:
        return f"{self.results}/part-{key}.parquet"

    def artefact_path(self, key: str) -> str:
        return f"{self.results}/part-{key}.npz"

    def write_part(self, key: str, rows: list[dict], arrays: dict | None = None) -> str:
        """Write a trial's rows as one file: temporary name, then rename (a reader never sees half).

        `arrays` (name -> array) go to part-<key>.npz first, by the same rename; the part file is
        the commit point. A re-run without arrays removes the old ones, so the two never disagree."""
        self.fs.create_dir(self.results, recursive=True)  # a worker on another node may see no folder yet
        if arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
            self._write_atomic(self.artefact_path(key), buffer.getvalue())
        elif self.fs.get_file_info(self.artefact_path(key)).type == pafs.FileType.File:
            self.fs.delete_file(self.artefact_path(key))
        table = pa.Table.from_pylist(rows)
        # A column that is None in every row has no type; strings keep parts' schemas compatible.
        for i, fld in enumerate(table.schema):
            if pa.types.is_null(fld.type):
                table = table.set_column(i, pa.field(fld.name, pa.string()), table.column(i).cast(pa.string()))
        tmp = f"{self.results}/.tmp-{key}-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, self.part_path(key))
        return self.part_path(key)

    def read_part(self, key: str) -> pa.Table | None:
        """The trial's rows, or None when absent or unreadable (then the trial runs again)."""
        return self._read(self.part_path(key))

    def _read(self, path: str) -> pa.Table | None:
        try:
            return pq.read_table(path, filesystem=self.fs)
        except Exception:  # missing, truncated or garbage: all mean "not finished"
            return None

    @staticmethod
    def finished(table: pa.Table | None) -> bool:
        """Whether a part's rows (from read_part) are final: the trial needs no re-run."""
        return (table is not None and table.num_rows > 0 and "status" in table.column_names
                and set(table.column("status").to_pylist()) <= set(FINAL_STATUSES))

    def parts(self) -> list[str]:
        selector = pafs.FileSelector(self.results, allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(selector)
                      if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))

    def unreadable_parts(self) -> list[str]:
        return [p for p in self.parts() if self._read(p) is None]

    def quarantine(self, path: str) -> str:
        """Move an unreadable part, and its arrays, to corrupt/ (kept for inspection) so that its
        trial runs again."""
        folder = f"{self.root}/corrupt"
        self.fs.create_dir(folder, recursive=True)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        arrays = path[:-len(".parquet")] + ".npz"
        if self.fs.get_file_info(arrays).type == pafs.FileType.File:
            self.fs.move(arrays, f"{folder}/{arrays.rsplit('/', 1)[-1]}.{stamp}")
        target = f"{folder}/{path.rsplit('/', 1)[-1]}.{stamp}"
        self.fs.move(path, target)
        return target

    @contextlib.contextmanager
    def lock(self):
        """Hold this run folder for one driver; a second one is refused with who holds it.

        Local folders use an OS lock, released by the kernel when the holder dies (even by SIGKILL).
        Object stores have no locks: there a lock object names its holder and is deleted at exit. A
        lock left by a killed driver on this host (its pid is gone) is taken over; one left by a
        driver on another host cannot be told from a live one, and is deleted by hand.
        """
        path = f"{self.root}/run.lock"
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        if isinstance(self.fs, pafs.LocalFileSystem):
            with open(path, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    raise ConfigError(self._held(f.read(), path)) from None
                f.seek(0)
                f.truncate()
                f.write(me)
                f.flush()
                yield
            return
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as f:
                holder = f.read().decode(errors="replace")
            if not _dead_here(holder):
                raise ConfigError(self._held(holder, path))
            print(f"taking over {path}: its holder ({holder}) is no longer running on this host", flush=True)
        self._write_atomic(path, me.encode())
        try:
            yield
        finally:
            self.fs.delete_file(path)

    def _held(self, holder: str, path: str) -> str:
        try:
            h = json.loads(holder)
            who = f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        gone = "" if isinstance(self.fs, pafs.LocalFileSystem) else ", or delete the lock if that driver is gone"
        return (f"name={self.name!r} under storage={self.storage!r} is in use by another tuner.run ({who}; "
                f"lock {path}); allowed: wait for it to finish{gone}, or another --name")

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)


def _dead_here(holder: str) -> bool:
    """True when a lock object names a process on this host that no longer exists."""
    try:
        h = json.loads(holder)
        if h["host"] != socket.gethostname():
            return False
        os.kill(int(h["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):
        return False
    return False

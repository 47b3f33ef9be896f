"""analysis.load at scale (issue 37): one unified read of many parts, pushed-down columns and
filters, and the compacted dataset tuner.compact writes, read only while it is fresh.

The reference for every frame is the plain way: each part read by pyarrow, converted to pandas
and concatenated by pandas, then filtered in pandas."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import load
from tuner import compact
from tuner.store import ResultStore


def rows(key: str, seed: int, newer: bool) -> list[dict]:
    """One trial's rows: 2 alphas x 3 n, the experiment by seed parity; a newer part has a label
    column and stores `n` as floats; an older one has no label and a null-in-every-row `note`."""
    out = []
    for alpha in (0.0, 0.5):
        for n in (1, 10, 100):
            row = dict(experiment="grid_a" if seed % 2 == 0 else "grid_b", trial_key=key, seed=seed,
                       alpha=alpha, n=float(n) if newer else n, accuracy=0.1 * seed + alpha + 0.001 * n,
                       status="ok" if seed != 3 else "diverged", predictions=[seed, n, 7])
            if newer:
                row["label"] = f"label {seed}"
                row["note"] = 0.25 * seed
            else:
                row["note"] = None
            out.append(row)
    return out


def run_folder(tmp_path: Path, seeds=range(6)) -> ResultStore:
    """A run folder whose parts the store writes: seeds 0-2 by older code, 3-5 by newer."""
    store = ResultStore(str(tmp_path), "run")
    store.check()
    for seed in seeds:
        store.write_part(f"k{seed}", rows(f"k{seed}", seed, newer=seed >= 3))
    return store


def by_pandas(store: ResultStore) -> pd.DataFrame:
    """The reference: every part read alone, concatenated by pandas."""
    frames = [pq.read_table(p).to_pandas() for p in store.parts()]
    return pd.concat(frames, ignore_index=True)


def same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal values and column order, whatever the dtypes' spelling (string vs object, int vs float)."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        a, b = got[col].reset_index(drop=True), want[col].reset_index(drop=True)
        if col == "predictions":
            assert [list(x) for x in a] == [list(x) for x in b], col
        else:
            pd.testing.assert_series_equal(a.astype(object).where(a.notna(), None), b.astype(object).where(b.notna(), None),
                                           check_names=False, check_dtype=False, obj=col)


def test_a_column_only_newer_parts_have_is_kept_and_types_come_from_the_schema(tmp_path):
    store = run_folder(tmp_path)
    df = load(store.root)
    want = by_pandas(store)
    same(df, want)
    assert df["label"].isna().sum() == 3 * 6 and set(df["label"].dropna()) == {"label 3", "label 4", "label 5"}
    # note: null in every row of the older parts (stored as text there), numbers in the newer: numeric
    assert pd.api.types.is_float_dtype(df["note"]) and df["note"].isna().sum() == 3 * 6
    assert pd.api.types.is_float_dtype(df["n"])  # int in older parts, float in newer
    assert isinstance(df["experiment"].dtype, pd.StringDtype) and isinstance(df["label"].dtype, pd.StringDtype)
    assert df.attrs["parts"] == 6 and df.attrs["unreadable"] == [] and df.attrs["compacted"] == []


def test_numbers_in_some_parts_and_text_in_others_stay_objects_as_pandas_concatenates_them(tmp_path):
    store = run_folder(tmp_path, seeds=[0])
    store.write_part("t", [{**r, "alpha": "high", "trial_key": "t"} for r in rows("t", 1, newer=False)])
    df = load(store.root)
    assert df["alpha"].tolist() == [0.0] * 3 + [0.5] * 3 + ["high"] * 6
    assert "not compacted: column(s) ['alpha']" in compact.compact(store)


def test_an_unreadable_part_is_named_and_skipped_from_the_parts_and_from_the_compaction(tmp_path):
    store = run_folder(tmp_path)
    Path(store.part_path("k1")).write_bytes(b"not parquet" * 10)
    with pytest.warns(UserWarning, match="part-k1.parquet"):
        df = load(store.root)
    assert df.attrs["unreadable"] == ["part-k1.parquet"] and set(df["seed"]) == {0, 2, 3, 4, 5}
    assert "1 unreadable part(s) left out: part-k1.parquet" in compact.compact(store)
    with pytest.warns(UserWarning, match="part-k1.parquet"):
        again = load(store.root)
    assert again.attrs["compacted"] and again.attrs["unreadable"] == ["part-k1.parquet"]
    pd.testing.assert_frame_equal(again, df)


FILTERS = [
    ([("status", "==", "ok")], lambda d: d["status"] == "ok"),
    ([("n", ">=", 10), ("alpha", "==", 0.5)], lambda d: (d["n"] >= 10) & (d["alpha"] == 0.5)),
    ([[("seed", "in", {0, 5})], [("label", "==", "label 4")]], lambda d: d["seed"].isin([0, 5]) | (d["label"] == "label 4")),
]


@pytest.mark.parametrize("compacted", [False, True])
@pytest.mark.parametrize("filters,mask", FILTERS)
def test_filters_and_projections_return_the_rows_of_a_full_load_filtered_in_pandas(tmp_path, filters, mask, compacted):
    store = run_folder(tmp_path)
    if compacted:
        compact.compact(store)
    full = by_pandas(store)
    columns = ["seed", "accuracy", "n"]
    got = load(store.root, columns=columns, filters=filters)
    assert bool(got.attrs["compacted"]) == compacted
    same(got, full[mask(full)][columns])
    got = load(store.root, experiment="grid_b", filters=filters)
    same(got, full[mask(full) & (full["experiment"] == "grid_b")])
    with pytest.raises(KeyError, match="no_such_column"):
        load(store.root, columns=["seed", "no_such_column"])


def test_a_stale_compaction_is_not_read_and_parts_are_never_deleted(tmp_path):
    store = run_folder(tmp_path)
    parts = {p: Path(p).read_bytes() for p in store.parts()}
    line = compact.compact(store)
    assert line.startswith("compacted 6 parts (36 rows) into ")
    assert {p: Path(p).read_bytes() for p in store.parts()} == parts  # the parts are the record, untouched
    fresh = load(store.root)
    (data,) = fresh.attrs["compacted"]
    assert Path(data).parent == Path(store.root) / "compacted"
    manifest = json.loads((Path(store.root) / "compacted" / "manifest.json").read_text())
    listed = json.loads((Path(store.root) / "compacted" / manifest["listing"]).read_text())
    assert set(listed) == {Path(p).name for p in parts} and manifest["parts"] == 6
    same(fresh, by_pandas(store))
    assert "is current" in compact.compact(store)

    # The compacted file's rows are what is read while it is fresh (a check that the test can fail).
    table = pq.read_table(data)
    pq.write_table(table.set_column(table.schema.get_field_index("accuracy"), "accuracy",
                                    pa.array(np.full(table.num_rows, -1.0))), data)
    assert (load(store.root)["accuracy"] == -1.0).all()

    # A later trial's part, a rewritten part, a removed part: each makes it stale.
    store.write_part("k9", rows("k9", 9, newer=True))
    later = load(store.root)
    assert later.attrs["compacted"] == [] and 9 in set(later["seed"]) and (later["accuracy"] != -1.0).all()
    same(later, by_pandas(store))
    compact.compact(store)
    assert load(store.root).attrs["compacted"]
    store.write_part("k0", rows("k0", 0, newer=False)[:5])
    assert load(store.root).attrs["compacted"] == [] and len(load(store.root)) == 6 * 7 - 1
    compact.compact(store)
    os.remove(store.part_path("k4"))
    assert load(store.root).attrs["compacted"] == [] and 4 not in set(load(store.root)["seed"])
    assert len(list((Path(store.root) / "compacted").glob("rows-*.parquet"))) == 1  # earlier data files removed
    assert len(list((Path(store.root) / "compacted").glob("parts-*.json"))) == 1


@pytest.fixture
def listings(monkeypatch):
    """How many times load lists the parts (the full freshness check, or reading the parts)."""
    import sys

    module = sys.modules["analysis.load"]  # `analysis.load` the name is the function
    calls = []
    real = module.part_infos
    monkeypatch.setattr(module, "part_infos", lambda *a: calls.append(a) or real(*a))
    return calls


def test_an_unchanged_results_folder_reads_the_compaction_without_listing_its_parts(tmp_path, listings):
    store = run_folder(tmp_path)
    compact.compact(store)
    listings.clear()
    df = load(store.root)
    assert df.attrs["compacted"] and df.attrs["parts"] == 6 and listings == []
    same(df, by_pandas(store))
    assert load(store.results).attrs["compacted"] and listings == []

    # The same part replaced at once (same bytes, same size, within a tick of a coarse clock):
    # the folder's time moved past the one recorded, the full check sees the part's new time.
    store.write_part("k2", rows("k2", 2, newer=False))
    df = load(store.root)
    assert df.attrs["compacted"] == [] and len(listings) == 1
    same(df, by_pandas(store))


def test_a_folder_time_that_moved_without_a_part_changing_means_the_full_check_not_staleness(tmp_path, listings):
    store = run_folder(tmp_path)
    compact.compact(store)
    Path(store.results, ".tmp-x").write_bytes(b"")  # a write that came and went
    os.remove(Path(store.results, ".tmp-x"))
    listings.clear()
    assert load(store.root).attrs["compacted"] and len(listings) == 1
    line = compact.compact(store)  # written again, with the folder's time as it is now
    assert line.startswith("compacted 6 parts") and "is current" in compact.compact(store)
    listings.clear()
    assert load(store.root).attrs["compacted"] and listings == []


def test_a_folder_time_the_clock_has_not_passed_is_not_recorded_and_the_full_check_decides(tmp_path, monkeypatch,
                                                                                          listings):
    store = run_folder(tmp_path)
    future = time.time_ns() + 3600 * 10**9  # as if the folder changed in the probe's own tick, or later
    os.utime(store.results, ns=(future, future))
    monkeypatch.setattr(compact, "SETTLE", (0.0, 0.01))
    compact.compact(store)
    manifest = json.loads((Path(store.root) / "compacted" / "manifest.json").read_text())
    assert manifest["folder_mtime_ns"] is None
    listings.clear()
    assert load(store.root).attrs["compacted"] and len(listings) == 1
    store.write_part("k9", rows("k9", 9, newer=True))
    assert load(store.root).attrs["compacted"] == []


def test_the_cli_compacts_a_run_folder_and_refuses_a_folder_without_results(tmp_path, capsys):
    store = run_folder(tmp_path)
    assert compact.main([store.root]) == 0
    assert "compacted 6 parts" in capsys.readouterr().out
    assert load(store.results).attrs["compacted"]  # the results/ folder itself finds it too
    assert compact.main([str(tmp_path / "nothing")]) == 2
    assert "has no results/ folder" in capsys.readouterr().err


def test_a_folder_above_several_runs_reads_each_runs_fresh_compaction_or_its_parts(tmp_path):
    one, two = run_folder(tmp_path / "a"), run_folder(tmp_path / "b", seeds=[7, 8])
    compact.compact(one)
    df = load(tmp_path)
    assert [Path(p).parent.parent.name for p in df.attrs["compacted"]] == ["run"] and df.attrs["parts"] == 8
    same(df, pd.concat([by_pandas(one), by_pandas(two)], ignore_index=True))


@pytest.mark.parametrize("compacted", [False, True])
def test_query_answers_sql_over_the_rows_load_reads(tmp_path, compacted):
    """analysis.query: DuckDB over the same rows; checked against pandas on the reference frame."""
    from analysis import query

    store = run_folder(tmp_path)
    if compacted:
        compact.compact(store)
    got = query(store.root, "select seed, avg(accuracy) as acc, count(*) as rows, max(label) as label "
                            "from results where status = 'ok' and n >= 10 group by seed order by seed")
    full = by_pandas(store)
    ok = full[(full["status"] == "ok") & (full["n"] >= 10)]
    want = ok.groupby("seed").agg(acc=("accuracy", "mean"), rows=("accuracy", "size"), label=("label", "max")).reset_index()
    assert got["seed"].tolist() == want["seed"].tolist() == [0, 1, 2, 4, 5]
    np.testing.assert_allclose(got["acc"], want["acc"])
    assert got["rows"].tolist() == [4] * 5
    assert got["label"].tolist()[-2:] == ["label 4", "label 5"] and got["label"].isna().sum() == 3

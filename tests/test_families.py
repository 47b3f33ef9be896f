"""Method families as plug-in units: the service core knows none of them.

The CLI, trial, store and report core hold no family vocabulary; a family registers itself; its
rows carry `family` and `method`; its arrays live beside its part; the report renders a section
per family present (a generic one for a family without an analysis module).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import report
from trainables.checks import ConfigError
from tuner import registry
from tuner.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
EBM_WORDS = ("alpha_train", "alpha_test", "NoiseSpec", "n_checkpoints", "energy")
BUILTIN_FAMILIES = ("ebm", "vpn", "ninr", "sesnn", "noise_bench")


def core_files() -> list[Path]:
    """tuner/*.py and the analysis core: every analysis module that is not a family module."""
    files = sorted((REPO / "tuner").glob("*.py"))
    for path in sorted((REPO / "analysis").glob("*.py")):
        if not re.search(r"^FAMILY = ", path.read_text(), re.M):
            files.append(path)
    return files


def test_the_service_core_holds_no_family_vocabulary():
    words = sorted(set(registry.FAMILIES) | set(BUILTIN_FAMILIES) | set(EBM_WORDS))
    found = [f"{p.relative_to(REPO)}: {w}" for p in core_files() for w in words
             if re.search(rf"\b{re.escape(w)}\b", p.read_text())]
    assert not found, found  # whole words: `tuner.run grid_ebm` in a docstring is an example, not a list
    found = [f"{p.relative_to(REPO)}: {w}" for p in core_files() for w in EBM_WORDS if w in p.read_text()]
    assert not found, found
    assert any(p.name == "report.py" for p in core_files()) and not any(p.name == "ebm.py" for p in core_files())


def test_a_duplicate_name_is_refused_loudly(tmp_path, monkeypatch):
    (tmp_path / "dup_family.py").write_text("from tests.faulty import METHODS, EXPERIMENTS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'faulty' .*registered twice"):
        registry.load(["tests.faulty", "dup_family"])
    with pytest.raises(ConfigError, match="cannot be imported"):
        registry.load(["no_such_module_here"])


def test_the_built_in_families_are_entry_points_of_both_groups():
    tuner_side = {e.name: e.value for e in registry.group_entries("noisetune.families")[0]}
    assert set(BUILTIN_FAMILIES) <= set(registry.FAMILIES)
    for family in BUILTIN_FAMILIES:
        assert tuner_side[family] == f"search_spaces.{family}"
        assert report.analysis_modules()[family] == [f"analysis.{family}"]
        assert any(m.family == family for m in registry.METHODS.values())


def test_without_the_project_installed_the_registry_says_how_to_install_it(monkeypatch):
    from importlib import metadata
    monkeypatch.setattr(metadata, "distributions", lambda: iter(()))
    with pytest.raises(ConfigError, match=r"noisetune.*not installed.*`pip install -e \.`"):
        registry.entry_sources()


def test_a_broken_plugin_is_one_line_naming_it_and_the_rest_still_load(tmp_path, monkeypatch):
    (tmp_path / "broken_family.py").write_text("raise RuntimeError('half-written plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = registry.entry_sources() + [registry.Source("broken_family"), registry.Source("tests.faulty")]
    methods, experiments, error = registry.load_all(sources)
    assert error == ("NOISETUNE_PLUGINS module 'broken_family' cannot be imported "
                     "(RuntimeError: half-written plugin)")
    installed, _, _ = registry.load_all(registry.entry_sources())  # not registry.METHODS: NOISETUNE_PLUGINS may add to it
    assert set(methods) == set(installed) | {"faulty"} and "faulty_grid" in experiments
    # an entry point's name is the family of its methods, and is registered once
    with pytest.raises(ConfigError, match=r"method 'faulty' of .* has family='faulty'; allowed: 'other'"):
        registry.load([registry.Source("tests.faulty", family="other")])
    with pytest.raises(ConfigError, match=r"family 'faulty' of .* is registered twice"):
        registry.load([registry.Source("tests.faulty", family="faulty"), registry.Source("dup", family="faulty")])


def test_every_registered_method_names_its_family():
    for name, method in registry.METHODS.items():
        assert method.family in registry.FAMILIES and method.name == name


# ---------------------------------------------------------------------------------------------
# Artefacts beside a part


def test_artefacts_are_written_replaced_removed_and_quarantined_with_their_part(tmp_path):
    store = ResultStore(str(tmp_path), "run")
    rows = [{"status": "ok", "trial_key": "k1", "x": 1.0}]
    store.write_part("k1", rows, {"trajectory": np.arange(3.0)})
    assert analysis.artefacts(tmp_path / "run", "k1")["trajectory"].tolist() == [0.0, 1.0, 2.0]
    store.write_part("k1", rows, {"trajectory": np.ones((2, 2)), "mask": np.array([True, False])})
    got = analysis.artefacts(tmp_path / "run", "k1")
    assert sorted(got) == ["mask", "trajectory"] and got["trajectory"].shape == (2, 2)
    store.write_part("k1", rows)  # a re-run without arrays leaves none behind
    assert analysis.artefacts(tmp_path / "run", "k1") == {}
    store.write_part("k1", rows, {"trajectory": np.arange(2.0)})
    Path(store.part_path("k1")).write_bytes(b"garbage")
    store.quarantine(store.part_path("k1"))
    moved = sorted(p.name.split(".")[1] for p in (tmp_path / "run" / "corrupt").iterdir())
    assert moved == ["npz", "parquet"] and not Path(store.artefact_path("k1")).exists()
    with pytest.raises(KeyError, match="k1"):
        analysis.artefacts(tmp_path / "run", "k1")


# ---------------------------------------------------------------------------------------------
# The report: one section per family


def ebm_rows(seed=0) -> list[dict]:
    return [dict(family="ebm", method="ebm", experiment="grid_ebm", preset="smoke", dataset="digits", seed=seed,
                 distribution_train="gaussian", alpha_train=at, placement_train="full", distribution_test="gaussian",
                 alpha_test=ae, placement_test="full", n=4, n_effective=4, accuracy=0.5 + 0.1 * at - 0.05 * ae,
                 status="ok", trial_key=f"e{seed}-{at}", tune_metric="accuracy", tune_mode="max", headline=True,
                 summary_by=json.dumps(["alpha_train", "alpha_test"]))
            for at in (0.0, 0.5) for ae in (0.0, 0.5)]


def other_rows(family="vpn_like", seeds=(0, 1, 2)) -> list[dict]:
    return [dict(family=family, method=f"{family}_m", experiment=f"{family}_grid", preset="smoke", seed=s,
                 width=w, sigma_test=t, nll=1.0 + w + t + 0.01 * s, status="ok", trial_key=f"{family}{s}-{w}",
                 tune_metric="nll", tune_mode="min", headline=t != 9.0,
                 summary_by=json.dumps(["width", "sigma_test"]))
            for s in seeds for w in (1, 2) for t in (0.0, 0.5, 9.0)]


def write(folder: Path, rows: list[dict]) -> Path:
    res = folder / "results"
    res.mkdir(parents=True)
    for key, group in pd.DataFrame(rows).groupby("trial_key"):
        frame = group.dropna(axis=1, how="all").reset_index(drop=True)
        pq.write_table(pa.Table.from_pandas(frame), res / f"part-{key}.parquet")
    return folder


def test_a_family_without_an_analysis_module_gets_the_generic_section(tmp_path):
    info = report.build(write(tmp_path / "r", other_rows()), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert list(info["sections"]) == ["Family vpn_like"] and info["sections"]["Family vpn_like"] == "ok"
    assert "no analysis module registered for vpn_like" in md and "rows and trials by method and status" in md
    assert "nll, minimised on each trial's headline rows, by width, sigma_test (mean, SEM and spread over 3 seeds)" in md
    table = report.sections(analysis.load(tmp_path / "r"), tmp_path / "out")[0]["tables"][1][1]
    cell = table[(table["width"] == 2) & (table["sigma_test"] == 0.5)].iloc[0]
    assert cell["mean"] == pytest.approx(3.51) and cell["count"] == 3 and cell["min"] == pytest.approx(3.5)
    assert 9.0 not in set(table["sigma_test"])  # rows that are not headline rows are left out


def test_a_folder_mixing_two_families_renders_both(tmp_path):
    info = report.build(write(tmp_path / "r", ebm_rows() + other_rows()), tmp_path / "out")
    assert set(info["sections"]) == {"Family ebm: Activation noise in EBM classification (activation-noise-ebm)",
                                     "Family vpn_like"}
    assert set(info["sections"].values()) == {"ok"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Table 1 layout" in md and "heatmap_alpha" in info["figures"] and "nll, minimised" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Family vpn_like" in html and html.count("data:image/png;base64,") == len(info["figures"])


def test_a_failing_section_says_why_and_the_others_render(tmp_path, monkeypatch):
    import analysis.ebm

    def broken(df, out):
        raise RuntimeError("figure code broke")

    monkeypatch.setattr(analysis.ebm, "section", broken)
    info = report.build(write(tmp_path / "r", ebm_rows() + other_rows()), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**This section failed**: RuntimeError: figure code broke" in md
    assert info["sections"]["Family vpn_like"] == "ok" and "nll, minimised" in md


def test_a_plugin_that_is_not_installed_registers_its_section_in_noisetune_plugins(tmp_path, monkeypatch):
    (tmp_path / "like_report.py").write_text(textwrap.dedent('''
        from analysis import generic
        FAMILY = "vpn_like"
        def section(df, out):
            return generic.section(df, out) | {"title": "the plug-in's own section"}
    '''))
    (tmp_path / "like_family.py").write_text("raise RuntimeError('the tuner side: never imported by the report')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NOISETUNE_PLUGINS", "like_family,like_report,no.such.module")
    info = report.build(write(tmp_path / "r", other_rows()), tmp_path / "out")
    assert info["sections"] == {"Family vpn_like: the plug-in's own section": "ok"}
    assert "rendered by `like_report`" in (tmp_path / "out" / "report.md").read_text()


def test_column_types_come_from_the_data(tmp_path):
    rows = other_rows(seeds=(0,))
    rows[0]["nll"] = None  # one part stores an all-null column (as strings), the others numbers
    df = analysis.load(write(tmp_path / "r", rows))
    assert pd.api.types.is_numeric_dtype(df["nll"]) and pd.api.types.is_numeric_dtype(df["width"])
    assert pd.api.types.is_string_dtype(df["family"])


# ---------------------------------------------------------------------------------------------
# The test-only family end to end


@pytest.mark.slow
def test_the_test_only_family_runs_through_tuner_run_and_the_report(tmp_path, shared_ray):
    # Tune's per-trial result.json, off by default (README "Results"), shows what Tune was told.
    env = {**shared_ray, "NOISETUNE_PLUGINS": "tests.faulty", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}
    done = subprocess.run([sys.executable, "-m", "tuner.run", "faulty_grid", "--preset", "smoke",
                           "--storage", str(tmp_path), "--seeds", "2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "error of each trial's headline rows" in done.stdout  # the end-of-run summary, by its metric
    folder = tmp_path / "faulty_grid-smoke"
    df = analysis.load(folder)
    assert set(df["family"]) == {"faulty"} and set(df["tune_metric"]) == {"error"} and "accuracy" not in df
    assert len(df) == 8 and set(df["shift_test"]) == {0.0, 0.5}
    results = [json.loads(line) for p in (folder / "tune").glob("*/result.json") for line in p.read_text().splitlines()]
    finals = [r for r in results if r.get("done")]
    assert len(finals) == 4 and all("error" in r for r in finals)  # Tune was told the family's metric
    for key in df["trial_key"].unique():
        assert analysis.artefacts(folder, key)["loss_history"].shape == (3,)
    info = report.build(folder, tmp_path / "out")
    assert list(info["sections"]) == ["Family faulty"]
    assert "error, minimised" in (tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# A family installed as a package of its own


PLUGIN_FAMILY = '''"""A family of another package: the test-only family under a name of its own."""
import dataclasses

from tests import faulty

METHODS = [dataclasses.replace(faulty.METHODS[0], name="plugged", family="plugfam")]
EXPERIMENTS = [dataclasses.replace(faulty.EXPERIMENTS[0], name="plugged_grid", method="plugged")]
'''
PLUGIN_REPORT = '''"""Its report section: the generic one, under a title and with a finding of its own."""
from analysis import generic

FAMILY = "plugfam"


def section(df, out):
    got = generic.section(df, out)
    return got | {"title": "the plug-in's own analysis", "findings": got["findings"] + ["plugfam section ran"]}
'''


@pytest.mark.slow
def test_an_installed_plugin_package_runs_and_reports_without_noisetune_plugins(tmp_path):
    site = tmp_path / "site"  # a folder on PYTHONPATH holding a package and its metadata: an installed package
    (site / "plugfam").mkdir(parents=True)
    (site / "plugfam" / "__init__.py").write_text("")
    (site / "plugfam" / "family.py").write_text(PLUGIN_FAMILY)
    (site / "plugfam" / "report.py").write_text(PLUGIN_REPORT)
    info = site / "plugfam-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugfam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[noisetune.families]\nplugfam = plugfam.family\n\n"
                                           "[noisetune.analysis]\nplugfam = plugfam.report\n")
    env = {k: v for k, v in os.environ.items() if k != "NOISETUNE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run([sys.executable, "-m", "tuner.run", "plugged_grid", "--preset", "smoke", "--backend", "local",
                           "--storage", str(tmp_path / "runs"), "--seeds", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "runs" / "plugged_grid-smoke"
    df = analysis.load(folder)
    assert set(df["family"]) == {"plugfam"} and set(df["method"]) == {"plugged"} and len(df) == 4
    done = subprocess.run([sys.executable, "-m", "analysis.report", str(folder), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Family plugfam: the plug-in's own analysis" in md and "4 rows, rendered by `plugfam.report`" in md
    assert "plugfam section ran" in md and "error, minimised" in md

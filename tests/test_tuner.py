"""The service: registry, dry runs, refusals before Ray starts, and real smoke sweeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from search_spaces.base import Experiment, Space
from tuner import registry
from tuner.run import main
from tuner.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
ROW_COLUMNS = {"experiment", "preset", "dataset", "seed", "distribution_train", "alpha_train", "placement_train",
               "distribution_test", "alpha_test", "placement_test", "n", "n_effective", "accuracy",
               "energy_mean", "energy_var", "train_seconds", "eval_seconds", "status", "message", "trial_key",
               "trial_id", "noisetune_version", "git_commit", "torch_version", "ray_version", "device_name",
               "host", "steps", "image_size", "eval_seed", "block_draws"}


def cli(*args: str, timeout=600, **kw) -> subprocess.CompletedProcess:
    """Run the command exactly as a user would, in its own process."""
    return subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)


def rows(storage: Path, name: str):
    store = ResultStore(str(storage), name)
    return [pq.read_table(p) for p in store.parts()]


def test_every_experiment_is_listed_with_trial_counts(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, exp in registry.EXPERIMENTS.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert exp.description in line
        if exp.search == "grid":
            presets = registry.METHODS[exp.method].presets
            assert line.split()[1:2 + len(presets)] == [exp.method] + [
                f"{p}={len(exp.space(p).train)}" for p in presets]


@pytest.mark.parametrize("only,trials", [
    (["--only", "alpha_train=1.0"], 3),  # one per seed
    (["--only", "alpha_train=0.5,seed=1", "--only", "seed=2"], 5),  # any --only; all fields of one
])
def test_only_picks_the_matching_trials_with_the_whole_sweeps_keys(tmp_path, capsys, only, trials):
    args = ["grid_ebm", "--preset", "quick", "--seeds", "3", "--backend", "local", "--dry-run",
            "--storage", str(tmp_path)]
    assert main(args) == 0
    every = {line.split(":", 1)[1].strip(): line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.lstrip().startswith("trial ")}
    assert main([*args, *only]) == 0
    chosen = {line.split(":", 1)[1].strip(): line.split()[1] for line in capsys.readouterr().out.splitlines()
              if line.lstrip().startswith("trial ")}
    assert len(chosen) == trials and all(every[point] == key for point, key in chosen.items())
    conjunctions = [dict(pair.split("=") for pair in item.split(",")) for item in only[1::2]]
    for point in every:
        values = eval(point)  # noqa: S307 - the dry run prints each point as a dict literal
        wanted = any(all(str(values[k]) == v for k, v in c.items()) for c in conjunctions)
        assert (point in chosen) == wanted, point


@pytest.mark.parametrize("args,trials", [
    (["grid_ebm", "--preset", "quick"], 4),
    (["grid_ebm", "--preset", "paper"], 200),  # 20 alpha_train x 10 seeds: trains once per alpha_train
    (["grid_ebm", "--preset", "quick", "--seeds", "3"], 12),
    (["layers_ebm", "--preset", "quick", "--seeds", "0,5"], 10),
    (["dist_ebm", "--preset", "quick"], 42),
    (["discriminative_ebm", "--preset", "smoke"], 2),
])
def test_dry_run_counts_trials_and_writes_nothing(tmp_path, capsys, args, trials):
    assert main([*args, "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sum(line.lstrip().startswith("trial ") for line in out.splitlines()) == trials
    assert f"work: {trials} trainings" in out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_presets_note(tmp_path, capsys):
    assert main(["prune_sesnn", "--preset", "smoke", "--dry-run", "--storage", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("note: --preset smoke checks that the pipeline runs")  # under the header


@pytest.fixture
def bad_experiment(monkeypatch):
    """A registered experiment whose grid holds a value the config refuses."""
    def space(preset):
        return Space([{"alpha_train": -1.0}], lambda point: [{"distribution": "gaussian", "alpha": 0.5}])
    monkeypatch.setitem(registry.EXPERIMENTS, "bad_alpha", Experiment("bad_alpha", "negative alpha", "ebm", space))

    def test_space(preset):
        return Space([{"alpha_train": 0.5}], lambda point: [{"distribution": "gaussian", "alpha": -2.0}])
    monkeypatch.setitem(registry.EXPERIMENTS, "bad_test_alpha",
                        Experiment("bad_test_alpha", "negative test alpha", "ebm", test_space))


@pytest.mark.parametrize("args,message", [
    (["grid_ebn"], r"experiment='grid_ebn' is not registered \(did you mean 'grid_ebm'\?\); allowed: grid_ebm"),
    (["grid_ebm", "--preset", "fast"], r"preset='fast' is not allowed; allowed: paper, fair, quick, smoke"),
    (["grid_ebm", "--dataset", "cifar11"], r"dataset: unknown data set 'cifar11'.*allowed: digits, textures"),
    (["labelnoise_sesnn", "--dataset", "mnist6k"], r"dataset: unknown data set 'mnist6k' \(did you mean "
     r"'mnist5k'\?\); allowed: digits, textures, mnist5k, mnist,"),
    (["grid_ebm", "--set", "distribution_train=normal"], r"distribution='normal'.*allowed: gaussian, cauchy"),
    (["grid_ebm", "--set", "placement_train=middle"], r"placement='middle'.*allowed: full, odd, even, enc, dec"),
    (["grid_ebm", "--set", "alpha_tr=1"], r"unknown config field 'alpha_tr'; allowed: .*alpha_train"),
    (["grid_ebm", "--set", "alpha_train=1"], r"alpha_train is swept by grid_ebm"),
    (["grid_ebm", "--set", "n_checkpoints=0"], r"n_checkpoints=\(0,\) is out of range; allowed: .*integers >= 1"),
    (["grid_ebm", "--set", "n_checkpoints=(1, -10)"], r"n_checkpoints=.*integers >= 1"),
    (["grid_ebm", "--set", "noequals"], r"--set 'noequals' is not KEY=VALUE"),
    (["bad_alpha"], r"alpha=-1.0 is out of range; allowed: \[0.0, inf\]"),
    (["bad_test_alpha"], r"alpha=-2.0 is out of range"),
    (["grid_ebm", "--search", "bayes"], r"search='bayes' is not allowed; allowed: grid, optuna"),
    (["grid_ebm", "--resume", "maybe"], r"resume='maybe' is not allowed; allowed: auto, never"),
    (["grid_ebm", "--seeds", "-3"], r"seeds='-3' is not allowed; allowed: a count in \[1, 1000\]"),
    (["grid_ebm", "--seeds", "0"], r"seeds='0' is not allowed \(for seed 0 alone, write --seeds 0,\)"),
    (["grid_ebm", "--set", "lr=abc"], r"lr='abc' is not a number; allowed: \(0.0, inf\]"),
    (["grid_ebm", "--set", "epochs=x"], r"epochs='x' is not an integer; allowed: integers >= 1"),
    (["grid_ebm", "--name", "../escape"], r"name='../escape' is not allowed"),
    (["grid_ebm", "--storage", "nosuchscheme://bucket/x"], r"storage='nosuchscheme://bucket/x' is not reachable"),
    ([], r"experiment is missing; allowed: grid_ebm"),
    (["grid_ebm", "--backend", "dask"], r"backend='dask' is not allowed; allowed: ray, local"),
    (["grid_ebm", "--backend", "local", "--workers", "0"], r"workers=0 is out of range; allowed: integers >= 1"),
    (["tune_ebm", "--backend", "local"], r"search='optuna' needs Tune; allowed with --backend local: grid"),
    (["grid_ebm", "--backend", "local", "--only", "alpha_test=0.5"], r"only='alpha_test' is not swept here; "
     r"allowed: alpha_train, seed"),
    (["grid_ebm", "--backend", "local", "--only", "alpha_train=0.7"], r"only alpha_train=0.7 matches no trial; "
     r"allowed: 0.0, 0.5"),
    (["grid_ebm", "--backend", "local", "--only", "alpha_train"], r"--only 'alpha_train' is not FIELD=VALUE"),
    (["ablate_ebm", "--backend", "local", "--only", "alpha_train=0.0,placement_train=hidden"],
     r"matches no trial together"),
    (["tune_ebm", "--only", "alpha_train=0.5"], r"only= picks grid trials; allowed with --only: --search grid"),
])
def test_bad_input_is_refused_before_ray_with_field_and_choices(tmp_path, capsys, bad_experiment, args, message):
    import re

    import ray
    storage = ["--storage", str(tmp_path / "store")] if "--storage" not in args else []
    preset = ["--preset", "smoke"] if "--preset" not in args else []
    assert main([*args, *storage, *preset]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not ray.is_initialized()
    assert not (tmp_path / "store").exists()


def test_unwritable_storage_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["grid_ebm", "--preset", "smoke", "--storage", str(blocker)]) == 2
    assert "is not reachable or not writable" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_a_folder_of_another_experiment_is_refused_not_mixed(tmp_path, capsys):
    ResultStore(str(tmp_path), "shared").claim("layers_ebm", "smoke")
    before = (tmp_path / "shared" / "experiment.json").read_text()
    assert main(["grid_ebm", "--preset", "smoke", "--storage", str(tmp_path), "--name", "shared"]) == 2
    assert "holds results of layers_ebm --preset smoke" in capsys.readouterr().err
    assert (tmp_path / "shared" / "experiment.json").read_text() == before


def test_a_changed_override_under_the_same_name_is_refused(tmp_path, capsys):
    ResultStore(str(tmp_path), "grid_ebm-smoke").claim("grid_ebm", "smoke", {"lr": 0.01}, [0])
    assert main(["grid_ebm", "--preset", "smoke", "--storage", str(tmp_path), "--set", "lr=0.02"]) == 2
    assert "with overrides {'lr': 0.01}" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_sweep_end_to_end_then_resume_reruns_nothing(tmp_path, shared_smoke, shared_ray):
    first, done, _ = shared_smoke("grid_ebm")
    assert f"results: {first}/results" in done.stdout
    assert "status: ok=2" in done.stdout
    shutil.copytree(first, tmp_path / first.name)  # the re-run below changes the copy only
    tables = rows(tmp_path, "grid_ebm-smoke")
    assert len(tables) == 2  # one part per training: alpha_train in {0, 0.5}
    for table in tables:
        assert table.num_rows == 4  # 2 test alphas x n in (1, 4)
        assert ROW_COLUMNS <= set(table.column_names)
        assert set(table.column("status").to_pylist()) == {"ok"}
    df = __import__("pandas").concat([t.to_pandas() for t in tables])
    assert sorted(set(zip(df.alpha_train, df.alpha_test))) == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5)]
    assert df.groupby(["alpha_train", "alpha_test", "n"]).size().eq(1).all()

    # fastparquet reads the same files (readers other than pyarrow work too)
    import fastparquet
    for part in ResultStore(str(tmp_path), "grid_ebm-smoke").parts():
        frame = fastparquet.ParquetFile(part).to_pandas()
        assert len(frame) == 4 and frame["accuracy"].between(0, 1).all()

    mtimes = {p: os.stat(p).st_mtime_ns for p in ResultStore(str(tmp_path), "grid_ebm-smoke").parts()}
    again = cli("grid_ebm", "--preset", "smoke", "--storage", str(tmp_path), env=shared_ray)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 2 trials have part files" in again.stdout and "Ray not started" in again.stdout
    assert "status: ok=2" in again.stdout  # the summary still comes
    assert {p: os.stat(p).st_mtime_ns for p in ResultStore(str(tmp_path), "grid_ebm-smoke").parts()} == mtimes


@pytest.mark.slow
def test_a_missing_data_set_is_one_line_before_any_trial(tmp_path):
    """Found in the driver before Ray starts: seconds, one line naming the set, the path and the
    way out, no traceback, nothing written, no trial (so none retried)."""
    t0 = time.monotonic()
    done = cli("grid_ebm", "--preset", "smoke", "--storage", str(tmp_path / "store"), "--dataset", "mnist",
               "--set", "download=False", "--set", f"data_root={tmp_path / 'nodata'}", "--max-failures", "1")
    assert done.returncode == 2 and time.monotonic() - t0 < 60
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data set 'mnist'"), done.stderr
    assert str(tmp_path / "nodata") in lines[0] and "--set download=True" in lines[0] and "NOISETUNE_DATA" in lines[0]
    assert "--set data_root=" in lines[0] and "DataConfig" not in lines[0]  # the CLI's words, not code names
    assert "Traceback" not in done.stdout + done.stderr and "trials done" not in done.stdout
    assert "run folder" not in done.stdout  # a refusal comes before the line that says the run started
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_the_default_output_is_progress_lines_and_an_unfixable_fault_stops_the_sweep(tmp_path, shared_ray):
    log = tmp_path / "log"
    log.mkdir()
    env = {**shared_ray, "NOISETUNE_PLUGINS": "tests.faulty"}
    done = cli("faulty_grid", "--preset", "smoke", "--storage", str(tmp_path), "--seeds", "3", "--max-concurrent", "1",
               "--set", "fault=unfixable_seed2", "--set", f"log_dir={log}", env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.splitlines()[0].startswith("faulty_grid --preset smoke: run folder ")  # where the results go, first
    progress = [line for line in out.splitlines() if " trials done, " in line]
    assert progress and all(line.startswith("[faulty_grid-smoke] ") and "/6 trials done" in line for line in progress)
    assert "best error " in out  # the experiment's metric, with its configuration
    failed = [line for line in out.splitlines() if "failed (" in line]
    assert len(failed) == 1 and "ConfigError: injected unfixable fault" in failed[0], failed
    assert "stopping the sweep" in out and "Traceback" not in out + done.stderr
    assert "Trial Status" not in out and "Configuration for experiment" not in out  # Tune's tables are opt-in
    assert done.stderr.strip().splitlines()[-1].startswith("error: sweep stopped at its first unfixable fault")
    starts = (log / "trainings.log").read_text().splitlines()
    assert sum("seed=2" in s for s in starts) == 1  # the faulty trial was not retried


def test_progress_pickles_and_reads_one_line_from_a_traceback():
    """Tune pickles its stopper into the experiment state; the error line is the last 'XError: msg'."""
    import pickle

    from tuner.progress import Progress, error_line
    p = Progress("run", 4, "error", "min", out=lambda *a, **k: None, explain=lambda point: None)
    p.finished["t1"] = {"error": 0.3, "point": {"level": 0.5, "seed": 0}, "settings": 2}
    p.finished["t2"] = {"error": 0.1, "point": {"level": 0.0, "seed": 1}, "settings": 2, "status": "ok"}
    back = pickle.loads(pickle.dumps(p))
    assert back.finished == p.finished and back.out is print and back.explain is None
    assert back.best() == (0.1, {"level": 0.0, "seed": 1})  # mode min
    line = p.line([])
    assert line.startswith("[run] 2/4 trials done, 0 running, 2 pending, 0 failed") and "test settings evaluated 4" in line
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\n    raise DataError("gone")\ntrainables.data.DataError: data set \'mnist\': gone'
    assert error_line(trace) == ("DataError", "data set 'mnist': gone")
    assert error_line("ray.exceptions.RayTaskError(RuntimeError): boom") == ("RuntimeError", "boom")


def test_the_readme_training_counts_are_the_registry_s():
    """Every experiment row of the README table says trainings per seed as paper / quick / smoke:
    they must be what the registry builds (or `--num-samples` for Optuna experiments)."""
    import re
    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", text, re.M))
    assert set(rows) >= set(registry.EXPERIMENTS), sorted(set(registry.EXPERIMENTS) - set(rows))
    for name, exp in registry.EXPERIMENTS.items():
        if exp.search == "optuna":
            assert rows[name].strip() == "`--num-samples`", name
            continue
        counts = [len(exp.space(p).train) for p in registry.METHODS[exp.method].presets]
        assert rows[name].strip() == " / ".join(map(str, counts)), (name, rows[name], counts)


@pytest.mark.slow
def test_resume_never_starts_tune_afresh_and_keeps_finished_parts(tmp_path, shared_smoke, shared_ray):
    args = ("grid_ebm", "--preset", "smoke", "--storage", str(tmp_path))
    shutil.copytree(shared_smoke("grid_ebm")[0], tmp_path / "grid_ebm-smoke")  # a finished run of these arguments
    store = ResultStore(str(tmp_path), "grid_ebm-smoke")
    parts = {p: os.stat(p).st_mtime_ns for p in store.parts()}
    tune_dir = tmp_path / "grid_ebm-smoke" / "tune"
    marker = tune_dir / "from-the-first-run"
    marker.write_text("x")
    again = cli(*args, "--resume", "never", env=shared_ray)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" not in again.stdout and not marker.exists()  # Tune's old state is gone, a new one written
    assert any(tune_dir.glob("experiment_state-*.json"))
    assert {p: os.stat(p).st_mtime_ns for p in store.parts()} == parts  # finished trials were not re-run
    lost = sorted(parts)[0]
    os.unlink(lost)  # one trial's result lost, so the next run has work to do
    resumed = cli(*args, env=shared_ray)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout  # the default resumes that new state
    assert {p: os.stat(p).st_mtime_ns for p in store.parts() if p != lost} == {p: t for p, t in parts.items() if p != lost}
    assert os.path.exists(lost)


@pytest.mark.slow
def test_optuna_resume_continues_the_same_study_with_the_earlier_trials(tmp_path, shared_smoke, shared_ray):
    """A second run of an Optuna experiment keeps the study: the earlier trials stay with their
    values (TPE sees them), and only the trials --num-samples still lacks run; --resume never
    starts a new study and keeps the old one aside."""
    import optuna

    args = ("tune_ebm", "--preset", "smoke", "--storage", str(tmp_path))
    db = tmp_path / "tune_ebm-smoke" / "optuna.db"

    def study():
        s = optuna.load_study(study_name="tune_ebm-smoke", storage=f"sqlite:///{db}")
        return [(t.number, t.value, t.params) for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]

    shutil.copytree(shared_smoke("tune_ebm")[0], tmp_path / "tune_ebm-smoke")  # finished with --num-samples 2
    before = study()
    assert len(before) == 2
    again = cli(*args, "--num-samples", "3", env=shared_ray)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 complete trials kept, 1 to run" in again.stdout
    after = study()
    assert after[:2] == before and len(after) == 3
    assert len(ResultStore(str(tmp_path), "tune_ebm-smoke").parts()) == 3
    same = cli(*args, "--num-samples", "3", env=shared_ray)
    assert same.returncode == 0 and "3 complete trials kept, 0 to run" in same.stdout and study() == after
    assert "Ray not started" in same.stdout
    fresh = cli(*args, "--num-samples", "1", "--resume", "never", env=shared_ray)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert len(study()) == 1 and list(db.parent.glob("optuna.db.replaced-*"))


def test_local_backend_writes_the_rows_resumes_and_says_a_demo_is_a_demo(tmp_path, capsys):
    """--backend local: grid trials in spawned processes, no Ray; the same parts as a Tune run,
    and the same command again runs nothing."""
    import ray

    args = ["grid_ebm", "--preset", "smoke", "--backend", "local", "--workers", "2", "--storage", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 trials on 2 local worker(s), no Ray" in out
    assert out.count("--preset smoke is a demonstration of the service, not a test of the paper") == 2  # start, end
    assert not ray.is_initialized()
    from analysis.load import load
    rows = load(tmp_path / "grid_ebm-smoke")
    assert sorted(rows["alpha_train"].unique()) == [0.0, 0.5] and (rows["status"] == "ok").all()
    assert rows["ray_version"].notna().all() and rows["residual_initial"].notna().all()
    assert "compacted 2 parts (" in out and rows.attrs["compacted"]  # the run's end wrote the compacted dataset
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "all 2 trials have part files" in out and "compacted dataset of 2 parts is current" in out


def test_only_runs_a_slice_and_the_whole_sweep_later_keeps_it(tmp_path, capsys):
    """A slice run with --only writes the parts the whole sweep would; the sweep then trains the rest only."""
    args = ["grid_ebm", "--preset", "smoke", "--backend", "local", "--storage", str(tmp_path)]
    assert main([*args, "--only", "alpha_train=0.5"]) == 0
    capsys.readouterr()
    from analysis.load import load
    results = tmp_path / "grid_ebm-smoke" / "results"
    assert sorted(load(tmp_path / "grid_ebm-smoke")["alpha_train"].unique()) == [0.5]
    (sliced,) = results.glob("part-*.parquet")
    before = sliced.read_bytes()
    assert main(args) == 0
    rows = load(tmp_path / "grid_ebm-smoke")
    assert sorted(rows["alpha_train"].unique()) == [0.0, 0.5] and len(list(results.glob("part-*.parquet"))) == 2
    assert rows.attrs["compacted"]  # the slice's compaction went stale with the new part; the run's end wrote it again
    assert sliced.read_bytes() == before, "the sliced trial was trained again"


@pytest.mark.slow
def test_only_on_ray_runs_just_the_slice_under_its_own_tune_name(tmp_path, shared_ray):
    args = ["grid_ebm", "--preset", "smoke", "--storage", str(tmp_path)]
    sliced = cli(*args, "--only", "alpha_train=0.0", env=shared_ray)
    assert sliced.returncode == 0, sliced.stderr[-3000:]
    results = tmp_path / "grid_ebm-smoke" / "results"
    (part,) = results.glob("part-*.parquet")
    assert set(pq.read_table(part).column("alpha_train").to_pylist()) == {0.0}
    before = part.read_bytes()
    whole = cli(*args, env=shared_ray)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "status: ok=2" in whole.stdout and len(list(results.glob("part-*.parquet"))) == 2
    assert part.read_bytes() == before, "the sliced trial was trained again"


def test_the_estimate_starts_before_any_trial_ends_and_counts_down():
    """A long trial reports its share done: the estimate is there from its first report (no trial
    has finished) and falls as its clock runs and as later reports come in."""
    import re
    from types import SimpleNamespace

    from ray.tune.experiment import Trial

    from tuner.progress import Progress
    p = Progress("run", 3, "accuracy", "max", out=lambda *a, **k: None)
    trial = SimpleNamespace(trial_id="t1", status=Trial.RUNNING, config={"point": {"seed": 0}})
    p.on_trial_result(0, [trial], trial, {"done_share": 0.1, "time_total_s": 60.0})
    clock = p.running["t1"][2]
    lefts = []
    for now, report in ((clock, None), (clock + 30, None), (clock + 60, (0.2, 120.0)), (clock + 90, None),
                        (clock + 240, (0.5, 300.0))):
        if report is not None:
            p.on_trial_result(0, [trial], trial, {"done_share": report[0], "time_total_s": report[1]})
        text = p.estimate(["t1"], pending=2, now=now)
        assert text.startswith("about ") and "the rates of 1 running trials, 600 s per trial" in text, text
        lefts.append(text.split(" left")[0])
    seconds = [sum(int(v) * m for v, m in zip(re.findall(r"\d+", s)[::-1], (1, 60, 3600))) for s in lefts]
    assert seconds == sorted(seconds, reverse=True) and len(set(seconds)) == len(seconds), lefts
    assert seconds[0] == 540 + 2 * 600  # 90% of one 600-s trial left, then two more at 600 s, one slot
    assert "about" in p.line([trial]) and "running trials at" in p.line([trial])


def test_rays_auth_hint_is_replaced_once_and_colour_codes_kept_only_on_a_terminal():
    import logging

    from tuner.run import AUTH_NOTE, RayWords
    said = []
    words = RayWords(terminal=False, out=lambda line, **k: said.append(line))

    def record(msg, *args):
        return logging.LogRecord("ray", logging.WARNING, "x.py", 1, msg, args, None)
    hint = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
    assert not words.filter(record(hint)) and not words.filter(record(hint))
    assert said == [AUTH_NOTE] and "ignore Ray's hint" in AUTH_NOTE and "disabled" not in AUTH_NOTE
    dash = record("Started a local Ray instance. View the dashboard at %s%s%s %s%s", "\x1b[1m", "\x1b[32m",
                  "http://127.0.0.1:8265", "\x1b[39m", "\x1b[22m")
    assert words.filter(dash) and dash.getMessage() == "Started a local Ray instance. View the dashboard at http://127.0.0.1:8265 "
    coloured = record("View the dashboard at %s%s", "\x1b[1m", "http://x")
    assert RayWords(terminal=True).filter(coloured) and "\x1b[1m" in coloured.getMessage()


def test_a_one_seed_run_says_which_command_decides_its_claims_and_what_it_costs(tmp_path, capsys):
    from tuner import run
    from tuner.store import ResultStore
    args = run.parse_args(["grid_ebm", "--preset", "smoke", "--storage", str(tmp_path), "--set", "epochs=2"])
    plan = run.Plan(args)
    store = ResultStore(str(tmp_path), plan.name)
    for i, point in enumerate(plan.points):  # two finished trials of 90 s each
        store.write_part(f"k{i}", [{"trial_key": f"k{i}", "status": "ok", "train_seconds": 90.0, "seed": 0}])
    line = run.decide_line(plan)
    assert line.startswith("1 seed: the report can decide no claim")
    want = (f"python -m tuner.run grid_ebm --preset smoke --seeds 0,1,2 --name grid_ebm-smoke-3seeds --set epochs=2 "
            f"--storage {tmp_path}")
    assert want in line and f"about {3 * 90 * len(plan.points) // 60:.0f} min of training in all" in line, line
    three = run.Plan(run.parse_args(["grid_ebm", "--preset", "smoke", "--seeds", "3", "--storage", str(tmp_path)]))
    assert run.decide_line(three) == ""

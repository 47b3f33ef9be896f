"""The cost of a sweep before it starts (issue 35 item 5): the rate table, each family's
projection on a fabricated table (arithmetic by hand from the presets' counts), the short
measurement where a row is missing, and --dry-run's projection lines."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from trainables import cost, discriminative, ebm, ninr, sesnn, vpn
from trainables.data import DataConfig, PlannedSizes, planned_sizes
from tuner.run import main

CPU = torch.device("cpu")
BANK = "bank of 10, 1 ch, hidden 30-73-100"


def write_table(path, rows):
    """A rate table in the committed format; each row gives its key fields, threads and rate."""
    fields = [*cost.KEY, "threads", "rate", "unit", "source", "row", "machine"]
    with open(path, "w", newline="") as f:
        f.write("# a fabricated table\n")
        w = csv.DictWriter(f, fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" for k in fields} | {"unit": "steps/s" if r["kind"] == "train" else "passes/s",
                                                   "source": "fabricated.txt", "machine": "a test"} | r)
    return path


@pytest.fixture
def table(tmp_path, monkeypatch):
    """Point the service at a fabricated table; any measurement fails the test unless allowed."""
    def use(rows):
        monkeypatch.setenv(cost.RATES_ENV, str(write_table(tmp_path / "rates.csv", rows)))
    monkeypatch.setattr(cost, "_measured", {})
    monkeypatch.setattr(cost, "_spent", [0.0])

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the table has the row")
    monkeypatch.setattr(cost, "time_steps", no_measuring)
    monkeypatch.setattr(ebm, "time_steps", no_measuring)
    monkeypatch.setattr(discriminative, "time_steps", no_measuring)
    return use


def here(**row):
    """A row for this machine's CPU, measured at this process's thread count."""
    return {"device": cost.machine_key(CPU), "threads": torch.get_num_threads()} | row


def test_planned_sizes_count_what_loading_would_give():
    assert planned_sizes(DataConfig("digits")) == PlannedSizes(10, 1350, 135, 450)
    assert planned_sizes(DataConfig("digits", train_limit=20, test_limit=30)) == PlannedSizes(10, 200, 20, 30)
    # cifar20: the first 20 of CIFAR-100's 100 classes, 500 training and 100 test images each
    assert planned_sizes(DataConfig("cifar20")) == PlannedSizes(20, 10000, 500, 2000)
    assert planned_sizes(DataConfig("caltech101_20")) is None  # counted only once loaded


def test_ebm_projection_is_steps_and_passes_at_the_table_rates(table):
    table([here(kind="train", family="ebm", model=BANK, image_size=8, batch_size=64, path="bmm", rate=3.0),
           here(kind="eval", family="ebm", image_size=8, precision="fp32", noise_sharing="independent",
                path="fused_bank", rate=9000.0),
           here(kind="eval", family="ebm", image_size=8, precision="fp32", noise_sharing="common",
                path="fused_bank", rate=20000.0)])
    cfg, ecfg = ebm.preset_configs("quick")  # digits at 8 px, 1500 steps of 64, n up to 100
    settings = [{"alpha": 0.0}, {"alpha": 0.5}, {"alpha": 1.0, "sharing": "common"}]
    est = ebm.cost(cfg, ecfg, settings, CPU)
    # By hand: 450 test images x 10 classes; alpha 0 is one draw, the noisy settings 100 each.
    independent, common = 450 * 10 * (1 + 100), 450 * 10 * 100
    assert est.seconds == pytest.approx(1500 / 3.0 + independent / 9000.0 + common / 20000.0)
    assert est.core_seconds == pytest.approx(est.seconds * torch.get_num_threads())
    assert not est.missing and [r.rate for r in est.used] == [3.0, 9000.0, 20000.0]
    assert est.parts[0] == "training: 1,500 steps at 3 steps/s"
    # Without `steps`, epochs x ceil(largest class / batch): 100 x ceil(135 / 64) = 300 steps.
    cfg, ecfg = ebm.preset_configs("quick", {"steps": 0, "epochs": 100, "n_checkpoints": (1, 10)})
    assert ebm.cost(cfg, ecfg, [{"alpha": 0.0}], CPU).seconds == pytest.approx(300 / 3.0 + 450 * 10 / 9000.0)


def test_discriminative_projection_is_training_steps_and_noisy_passes(table):
    """Appendix E's classifiers: training steps at the network's training rate (clean or noisy
    training are separate rows), then test images x n_max passes per noisy setting, one at alpha 0."""
    net = "small_cnn, cifar stem, 10 classes, 1 ch"
    table([here(kind="train", family="ebm", model=f"{net}, clean training", image_size=16, batch_size=64, rate=6.0),
           here(kind="train", family="ebm", model=f"{net}, noisy training", image_size=16, batch_size=64, rate=5.0),
           here(kind="eval", family="ebm", model=net, image_size=16, batch_size=450, path="softmax_passes",
                rate=2000.0)])
    cfg, ecfg = discriminative.preset_configs("quick")  # digits at 16 px, 300 steps of 64, n up to 100
    settings = [{"alpha": 0.0}, {"alpha": 0.5}, {"distribution": "uniform", "alpha": 1.0}]
    est = discriminative.cost(cfg, ecfg, settings, CPU)
    assert est.seconds == pytest.approx(300 / 6.0 + 450 * (1 + 100 + 100) / 2000.0) and not est.missing
    noisy = discriminative.cost(discriminative.preset_configs("quick", {"alpha_train": 0.5})[0], ecfg, [], CPU)
    assert noisy.seconds == pytest.approx(300 / 5.0) and len(noisy.used) == 1


def test_a_row_at_the_trials_thread_count_is_preferred(table):
    key = dict(kind="train", family="ebm", model=BANK, image_size=8, batch_size=64, path="bmm")
    threads = torch.get_num_threads()
    table([here(**key, threads=threads + 1, rate=5.0), here(**key, rate=2.0), here(**key, threads=threads + 2, rate=7.0)])
    assert cost.rate_for(key, CPU).rate == 2.0
    assert isinstance(cost.rate_for(key | {"batch_size": 32}, CPU), str)  # keys match exactly


@pytest.mark.parametrize("module,preset,steps", [
    (vpn, "quick", 40 * (1347 // 64)),  # digits: 40 epochs of 1347 // 64 = 21 steps
    (ninr, "quick", 30 * (4000 // 32)),  # mnist5k: 30 epochs of 125 steps
    (sesnn, "quick", 60 * (4000 // 64)),  # mnist5k: 60 epochs of 62 steps per stage
    (discriminative, "quick", 300),  # digits at 16 px: `steps` 300
])
def test_a_missing_row_is_measured_now_once(table, monkeypatch, module, preset, steps):
    table([])
    calls = []
    monkeypatch.setattr(cost, "time_steps", lambda run, *a, **k: calls.append(run) or 4.0)
    cfg, ecfg = module.preset_configs(preset)
    est = module.cost(cfg, ecfg, [], CPU)
    assert len(calls) == 1 and est.used[0].source == "measured now" and est.used[0].rate == 4.0
    assert est.seconds == pytest.approx(steps / 4.0)
    assert module.cost(cfg, ecfg, [], CPU).seconds == est.seconds and len(calls) == 1  # kept for the process


def test_the_measurement_times_the_family_own_training(table, monkeypatch):
    """time_steps runs the method's train with `steps=k` on random data of the trial's shapes."""
    table([])
    seen = []
    monkeypatch.setattr(vpn, "train_vpn", lambda cfg, data: seen.append((cfg.steps, tuple(data.x_train.shape))))
    monkeypatch.setattr(cost, "time_steps", lambda run, *a, **k: (run(1), run(3), 10.0)[-1])
    cfg, ecfg = vpn.preset_configs("smoke")
    vpn.cost(cfg, ecfg, [], CPU)
    per_class = math.ceil(cfg.batch_size * 12 / 10)
    assert seen == [(1, (10 * per_class, 1, 8, 8)), (3, (10 * per_class, 1, 8, 8))]


def test_time_steps_takes_the_fixed_cost_out(monkeypatch):
    clock, runs = [0.0], []
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock[0])

    def run(k):  # 0.2 s of fixed cost and 0.05 s a step, on a fake clock
        runs.append(k)
        clock[0] += 0.2 + 0.05 * k
    assert cost.time_steps(run, target_s=1.0) == pytest.approx(20.0)
    assert runs == [1, 1, 5]  # warm-up, one step, then 1 + m steps, m = int(1.0 / 0.25)
    runs.clear()
    assert cost.time_steps(run, target_s=0.05) == pytest.approx(4.0) and runs == [1]  # a slow warm-up is the rate


def test_no_measurement_past_the_budget_and_no_gpu_rate_from_elsewhere(table, monkeypatch):
    key = dict(kind="train", family="ebm", model=BANK, image_size=32, batch_size=256, path="grouped")
    table([{**key, "device": "cuda-NVIDIA H200", "threads": 0, "rate": 80.0}])
    monkeypatch.setattr(cost, "_spent", [cost.MEASURE_BUDGET_S])
    reason = cost.rate_for(key | {"path": "per_class"}, CPU, measure=lambda: (1.0, 1))
    assert reason.startswith(f"no measured rate for {cost.machine_key(CPU)}") and "not measured now" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = cost.rate_for(key, torch.device("cuda"), measure=lambda: (1.0, 1))
    assert reason.startswith("no measured rate for a GPU") and "cuda-NVIDIA H200, not used" in reason
    monkeypatch.setattr(cost, "_spent", [0.0])
    failed = cost.rate_for(key | {"path": "per_class"}, CPU, measure=lambda: 1 / 0)
    assert "measuring it failed: ZeroDivisionError" in failed


def test_wall_time_shares_the_cores_and_never_beats_the_longest_trial():
    one = cost.Estimate(seconds=10.0, core_seconds=10.0)
    two = cost.Estimate(seconds=10.0, core_seconds=20.0)
    assert cost.wall_seconds([one, one], CPU, cores=2) == 10.0
    assert cost.wall_seconds([two, two], CPU, cores=2) == 20.0
    assert cost.wall_seconds([one, one, one], CPU, cores=2) == 15.0
    assert cost.wall_seconds([one, one], torch.device("cuda"), cores=1) == 20.0
    assert [cost.duration(s) for s in (45, 720, 3 * 3600 + 600, 5 * 86400, 3.1 * 365.25 * 86400)] == \
        ["45 s", "12 min", "3 h 10 min", "5.0 days", "3.1 years"]


def test_dry_run_of_grid_ebm_paper_prints_its_projection_and_rows(table, tmp_path, capsys):
    """200 trainings (20 alpha_train x 10 seeds) of 100 epochs x ceil(5000 / 256) = 2000 steps; each
    evaluates 19 noisy settings x 10^4 draws and one clean one on 10,000 images x 10 classes."""
    table([here(kind="train", family="ebm", model=BANK, image_size=32, batch_size=256, path="per_class",
                threads=1, rate=0.5, row="train 32"),
           here(kind="eval", family="ebm", image_size=32, precision="fp32", noise_sharing="independent",
                path="fused_bank", threads=1, rate=1000.0, row="eval 32")])
    assert main(["grid_ebm", "--preset", "paper", "--dry-run", "--set", "device=cpu", "--cpus-per-trial", "1",
                 "--max-concurrent", "1", "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    trial = 2000 / 0.5 + (19 * 10_000 + 1) * 10_000 * 10 / 1000.0
    assert f"projected: {cost.duration(200 * trial)} on this CPU" in out
    assert "up to 1 trials at once" in out
    assert "rate row used: train (ebm, bank of 10, 1 ch, hidden 30-73-100, 32 px, batch 256, per_class" in out
    assert "fabricated.txt row 'train 32'" in out and "fabricated.txt row 'eval 32'" in out
    assert "no projection" not in out


@pytest.mark.parametrize("experiment", ["vpn_noise_size", "ninr_compare", "margin_sesnn"])
def test_dry_run_of_a_paper_preset_of_each_family_prints_a_projection(table, monkeypatch, tmp_path, capsys,
                                                                      experiment):
    table([])
    monkeypatch.setattr(cost, "time_steps", lambda run, *a, **k: 50.0)  # "measured now", without training
    assert main([experiment, "--preset", "paper", "--dry-run", "--set", "device=cpu",
                 "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^projected: [0-9.,]+ (s|min|h|days|years)\b.* on this CPU", out, re.M), out
    assert re.search(r"^  measured now: train \(.*\): 50 steps/s \(measured now, 1 thread\)", out, re.M), out
    assert "no projection" not in out


def test_a_method_without_cost_says_so(tmp_path, capsys):
    assert main(["reid_sesnn", "--preset", "smoke", "--dry-run", "--storage", str(tmp_path)]) == 0
    assert "projected: no projection (sesnn_reid prices no trials)" in capsys.readouterr().out


def test_projection_lines_name_the_trials_without_a_rate():
    rate = cost.Rate("train", "x", "m", "8", "64", "", "", "", cost.machine_key(CPU), 1, 2.0, "steps/s",
                     "src.txt", "row 1", "a test")
    priced = cost.Estimate()
    priced.add("training", 100, rate)  # 50 s on one thread
    unpriced = cost.no_projection("data set y: its size is known only once loaded")
    lines = cost.projection_lines([unpriced, priced, priced], CPU, threads=1, at_once=1)
    # two priced trials of 50 s on one core, one after the other: 100 s
    assert lines[0].startswith("projected: 2 min on this CPU (") and "(2 of 3 trials priced)" in lines[0]
    assert lines[1] == "  first priced trial's training: 100 steps at 2 steps/s"
    assert lines[2] == ("  rate row used: train (x, m, 8 px, batch 64, cpu-" + cost.machine_key(CPU)[4:] +
                        "): 2 steps/s (src.txt row 'row 1', 1 thread); machine: a test")
    assert lines[3].startswith("projected: no projection for 1 of 3 trials on this CPU") and \
        lines[3].endswith("data set y: its size is known only once loaded")


def test_a_gpu_sweep_without_a_gpu_row_is_not_priced_from_cpu_rows(table, monkeypatch, tmp_path, capsys):
    table([here(kind="train", family="ebm", model=BANK, image_size=32, batch_size=256, path="per_class", rate=0.5),
           here(kind="eval", family="ebm", image_size=32, precision="fp32", noise_sharing="independent",
                path="fused_bank", rate=1000.0)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["grid_ebm", "--preset", "paper", "--dry-run", "--gpus-per-trial", "1",
                 "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "projected: no projection for 200 of 200 trials on a GPU: training: no measured rate for a GPU" in out
    assert "rate row used" not in out

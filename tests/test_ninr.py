"""NINR: noise injection nodes, phases, curvature, corruptions, and the family's experiments.

The fast path (forward hooks on zoo models) is checked against `reference_ninr.py`, written
from the poster's definition with explicit loops and fed the same noise; the Hessian estimate
against the closed form of the linear toy; the corruptions against hand-written formulas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import reference_ninr as ref
from tests.conftest import notebook_output, refusal
from trainables import ninr
from trainables.checks import ConfigError
from trainables.corruptions import CORRUPTIONS, corrupt

REPO = Path(__file__).resolve().parents[1]


def _model(arch: str, placement: str = "in", sigma: float = 0.5, **fields):
    cfg, _ = ninr.preset_configs("smoke", {"arch": arch, "regularizer": "ninr", "placement": placement,
                                           "sigma_eps": sigma, **fields})
    data = ninr.load_data(cfg)
    torch.manual_seed(0)
    return cfg, data, ninr.build_model(cfg, data, "cpu", torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Noise injection nodes


@pytest.mark.parametrize("arch, placement", [("fc", "in"), ("fc", "full"), ("cnn", "in"), ("cnn", "full"),
                                             ("mlp3", "full"), ("linear_toy", "full")])
def test_nin_outputs_equal_the_reference_fed_the_same_noise(arch, placement):
    cfg, data, model = _model(arch, placement)
    x = data.x_train[:5]
    with model.nodes.held() as eps:
        with torch.no_grad():
            fast = model(x)
    niws = {i: w.detach() for i, w in enumerate(model.nodes.weights)}
    want = ref.forward(model.net, x, niws, dict(enumerate(eps)))
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-5)
    clean = ref.forward(model.net, x, {}, {})
    assert (fast.double() - clean).abs().max() > 1e-3  # the noise did reach the output


def test_in_feeds_the_first_layer_only_and_full_feeds_every_layer():
    for arch, layers in (("fc", 2), ("cnn", 3), ("mlp3", 3), ("linear_toy", 2)):
        _, _, m_in = _model(arch, "in")
        _, _, m_full = _model(arch, "full")
        linear_like = [m for m in m_full.net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert len(linear_like) == layers
        assert [w.shape[0] for w in m_in.nodes.weights] == [_width(linear_like[0])]
        assert [w.shape[0] for w in m_full.nodes.weights] == [_width(m) for m in linear_like]


def _width(layer):
    return layer.out_features if isinstance(layer, torch.nn.Linear) else layer.out_channels


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_a_nin_adds_w_times_eps_with_the_stated_variance(kind):
    """Var over examples of (noisy - clean) pre-activation of unit j is sigma^2 w_j^2; for a conv,
    one eps per example and pixel shared by all channels."""
    torch.manual_seed(0)
    sigma = 0.7
    layer = torch.nn.Linear(5, 4) if kind == "linear" else torch.nn.Conv2d(2, 3, 3, padding=1)
    nodes = ninr.NoiseNodes([layer], sigma, 1.0, torch.Generator().manual_seed(3))
    x = torch.randn(20000, 5) if kind == "linear" else torch.randn(4000, 2, 4, 4)
    with torch.no_grad():
        noisy = layer(x)
        nodes.enabled = False
        clean = layer(x)
    diff = (noisy - clean).double()
    w = nodes.weights[0].detach().double()
    if kind == "linear":
        var, n = diff.var(0), 20000
    else:
        var, n = diff.permute(1, 0, 2, 3).reshape(3, -1).var(1), 4000 * 16
        ratio = diff / w.view(1, -1, 1, 1)  # the same eps in every channel of a pixel
        torch.testing.assert_close(ratio[:, 0], ratio[:, 2], rtol=1e-4, atol=1e-5)
    want = sigma ** 2 * w ** 2
    assert torch.all((var / want - 1).abs() < 5 * math.sqrt(2 / n)), (var, want)
    assert abs(float(diff.mean(0).mean())) < 5 * sigma * float(w.abs().max()) / math.sqrt(n)


def test_niws_receive_the_gradient_of_the_equations():
    """dL/dw_j = sum_b eps_b dL/dh_bj for a Linear layer's NIWs."""
    _, data, model = _model("fc", "in")
    x, y = data.x_train[:16], data.y_train[:16]
    first = model.net[1]
    captured = {}
    handle = first.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))  # runs before the NIN hook
    with model.nodes.held() as eps:
        loss = F.cross_entropy(model(x), y)
        h = captured["h"]
        w = model.nodes.weights[0]
        grad_w, grad_h = torch.autograd.grad(loss, [w, h])
    handle.remove()
    assert grad_w.abs().max() > 0
    want = (eps[0].view(-1, 1) * grad_h).sum(0)
    torch.testing.assert_close(grad_w, want, rtol=1e-5, atol=1e-7)


def test_nins_are_off_at_test_time_unless_test_noise_is_set():
    cfg, _ = ninr.preset_configs("quick", {"arch": "fc", "regularizer": "ninr", "sigma_eps": 0.5, "steps": 150,
                                           "fc_widths": (32,), "hessian_points": 0})
    data = ninr.load_data(cfg)
    res = ninr.train(cfg, data)
    model, clean = res.model, [{"corruption": "clean", "strength": 0.0}]
    off = [ninr.evaluate(model, data, clean, cfg, ninr.NINREvalConfig(), 0)[0]["accuracy"] for _ in range(2)]
    with torch.no_grad():
        model.nodes.enabled = False
        want = int((model(data.x_test).argmax(1) == data.y_test).sum()) / len(data.y_test)
    assert off == [want, want] and want > 0.5
    model.nodes.sigma = 1e3  # so large that noise must change predictions
    on = ninr.evaluate(model, data, clean, cfg, ninr.NINREvalConfig(test_noise=True), 0)[0]["accuracy"]
    assert on < want - 0.2 and model.nodes.enabled  # and switched back on for training after evaluation


# ---------------------------------------------------------------------------------------------
# Curvature and phases


@pytest.mark.parametrize("placement", ["in", "full"])
def test_the_hessian_estimate_matches_the_linear_toys_closed_form(placement):
    """f = w2 (w1 . x + v1 eps1) [+ v2 eps2], L = mean (f - y)^2: the Hessian in (v1, v2) is
    2 E[eps^2] [[w2^2, 0], [0, 1]] (cross terms vanish in expectation)."""
    sigma = 0.8
    cfg, data, model = _model("linear_toy", placement, sigma, toy_samples=20000)
    with torch.no_grad():
        model.net[1].weight.fill_(1.7)
    lam = ninr.niw_hessian_top(model, data.x_train, data.y_train, ninr._loss_fn(cfg), iters=30, seed=5)
    w2 = 1.7
    want = 2 * sigma ** 2 * max(w2 ** 2, 1.0 if placement == "full" else 0.0)
    assert abs(lam / want - 1) < 0.04, (lam, want)


def test_the_hessian_is_taken_with_fixed_noise_and_leaves_the_training_stream_alone():
    cfg, data, model = _model("fc", "in")
    state = model.nodes.generator.get_state()
    a = ninr.niw_hessian_top(model, data.x_train[:32], data.y_train[:32], F.cross_entropy, 10, seed=1)
    b = ninr.niw_hessian_top(model, data.x_train[:32], data.y_train[:32], F.cross_entropy, 10, seed=1)
    assert a == b and a > 0 and torch.equal(model.nodes.generator.get_state(), state)


def _trajectory(kind: str):
    t = np.linspace(0, 1, 200)
    return {"decoupled": 1 + 0.05 * np.sin(20 * t),
            "decay": np.exp(-3 * t),
            "catapult": 1 + 4 * np.exp(-((t - 0.2) / 0.05) ** 2) - 0.8 * t,
            "divergent": np.exp(6 * t),
            "failed": np.exp(-3 * t)}[kind]  # any shape: the network learned nothing


@pytest.mark.parametrize("kind", ninr.PHASES)
def test_the_phase_rule_classifies_hand_made_trajectories(kind):
    losses = np.linspace(2.0, 0.5, 50)
    assert ninr.phase_of(_trajectory(kind), losses, learned=kind != "failed") == kind


def test_a_rise_after_a_trough_is_a_catapult_and_an_early_decay_that_levels_off_is_a_decay():
    t = np.linspace(0, 1, 200)
    losses = [2.0, 0.5]
    shrink_then_grow = np.where(t < 0.3, 1 - 2 * t, 0.4 + 3 * (t - 0.3))  # 0.4x, then up to 2.5x
    assert ninr.phase_of(shrink_then_grow, losses) == "catapult"
    walk = np.where(t < 0.3, np.exp(-20 * t), np.exp(-6) * (1 + 2 * (t > 0.6)))  # a tripled but tiny norm
    assert ninr.phase_of(walk, losses) == "decay"
    levels_off = np.maximum(np.exp(-3 * t), 0.6)  # falls 40% by step 34 and holds: the end alone says 0.6x
    assert ninr.early_decay_factor(levels_off, np.arange(200), 0.2) < 0.5
    assert ninr.phase_of(levels_off, losses, fit_share=0.2) == "decay"
    assert ninr.phase_of(levels_off, losses, fit_share=1.0) == "decoupled"  # the fit over the whole run is flatter


def test_a_non_finite_run_is_divergent_and_a_run_that_learned_nothing_is_failed():
    norms = _trajectory("decay")
    assert ninr.phase_of(norms, [2.0, np.nan]) == "divergent"
    assert ninr.phase_of(np.r_[norms, np.inf], [2.0, 1.0]) == "divergent"
    assert ninr.phase_of(norms, [1.0, 1.5]) == "failed"  # the loss rose
    assert ninr.phase_of(_trajectory("catapult"), [2.3, 2.29], learned=False) == "failed"


def test_a_run_at_chance_is_labelled_failed():
    """lr 5 on the MLP: the training loss stays at the label entropy, so the run is failed."""
    cfg, _ = ninr.preset_configs("smoke", {"arch": "mlp3", "regularizer": "ninr", "sigma_eps": 1.0, "lr": 5.0,
                                           "steps": 60})
    data = ninr.load_data(cfg)
    run = ninr.train(cfg, data).columns
    assert not run["learned"] and run["measured_phase"] in ("failed", "divergent"), run
    share = np.bincount(data.y_train.numpy(), minlength=data.num_classes) / len(data.y_train)
    assert run["chance_loss"] == pytest.approx(-(share[share > 0] * np.log(share[share > 0])).sum())
    assert run["chance_accuracy"] == pytest.approx(share.max())
    good, _ = ninr.preset_configs("smoke", {"arch": "mlp3", "regularizer": "ninr", "sigma_eps": 1.0, "lr": 0.2,
                                            "steps": 300, "mlp3_width": 32})
    ran = ninr.train(good, data).columns
    assert ran["learned"] and ran["measured_phase"] != "failed", ran


@pytest.mark.slow
def test_on_the_linear_toy_the_label_follows_the_stability_boundary():
    """The toy's NIW curvature is lambda = 2 sigma^2 W2^2, so the analytic boundary is
    eta * lambda = 2: below it (eta * lambda <= 1 at every measured step) the NIWs decay; past it
    at step 0 they catapult or diverge. Between 1 and 2 the decay oscillates and the random walk's
    stationary norm grows without bound as eta * lambda nears 2 (not asserted)."""
    seen = {}
    for sigma in (0.3, 1.0, 3.0, 20.0, 40.0):
        cfg, _ = ninr.preset_configs("quick", {"arch": "linear_toy", "regularizer": "ninr", "sigma_eps": sigma,
                                               "lr": 0.05})
        res = ninr.train(cfg, ninr.load_data(cfg))
        run, lam = res.columns, res.artefacts["hessian_top"]
        seen[sigma] = (run["predicted_phase"], run["measured_phase"], cfg.lr * lam)
        if sigma <= 3:
            assert run["predicted_phase"] == "decay" and (cfg.lr * lam[np.isfinite(lam)] <= 1).all(), seen
            assert run["measured_phase"] == "decay", seen
        else:
            assert run["predicted_phase"] == "catapult", seen
            assert run["measured_phase"] in ("catapult", "divergent"), seen


def test_the_predicted_phase_follows_the_stability_boundary():
    assert ninr.predicted_phase(0.1, 25.0, 100, "sgd") == "catapult"  # |1 - 2.5| >= 1
    assert ninr.predicted_phase(0.1, 19.0, 100, "sgd") == "decay"  # 1.9 < 2, 100 * 1.9 >> ln 2
    assert ninr.predicted_phase(0.1, 0.01, 100, "sgd") == "decoupled"  # 100 * 0.001 < ln 2
    assert ninr.predicted_phase(0.1, 25.0, 100, "adam") == "n/a"


def test_a_run_records_its_trajectory_hessian_and_phases(tmp_path):
    cfg, _ = ninr.preset_configs("smoke", {"arch": "linear_toy", "regularizer": "ninr", "sigma_eps": 0.5,
                                           "steps": 40, "trajectory_points": 10})
    data = ninr.load_data(cfg)
    res = ninr.train(cfg, data)
    art = res.artefacts
    assert len(art["loss_steps"]) == 40 and len(art["niw_norm"]) <= 11
    assert art["niw_norm_steps"][0] == 0 and art["niw_norm_steps"][-1] == 40
    assert list(art["hessian_steps"]) == [0, 20, 40]
    run = res.columns
    assert run["measured_phase"] in ninr.PHASES and run["predicted_phase"] in ninr.PHASES
    assert run["eta_lambda"] == pytest.approx(cfg.lr * art["hessian_top"][0])
    row = ninr.evaluate(res.model, data, [{"corruption": "clean", "strength": 0.0}], cfg, ninr.NINREvalConfig(), 0)[0]
    assert data.name == run["data_name"] == ninr.TOY_DATASET and math.isfinite(row["test_loss"])


def test_downsampling_keeps_the_ends_and_the_peak():
    v = list(np.linspace(0, 1, 1000))
    v[517] = 50.0
    steps, values = ninr.downsample(v, 20)
    assert steps[0] == 0 and steps[-1] == 999 and 517 in steps and len(steps) <= 20


# ---------------------------------------------------------------------------------------------
# Corruptions


def _grey(n=64, size=8):
    return torch.full((n, 1, size, size), 0.5)


def test_every_corruption_at_strength_zero_is_the_identity():
    x = torch.rand(6, 1, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    for name in CORRUPTIONS:
        assert torch.equal(corrupt(x, name, 0.0, 0, model, torch.arange(6)), x), name


def test_gaussian_noise_has_the_stated_std_and_impulse_the_stated_share():
    x = _grey(200)
    d = corrupt(x, "gaussian_noise", 0.1, 1) - x
    assert abs(float(d.std()) - 0.1) < 0.003 and abs(float(d.mean())) < 0.002
    out = corrupt(x, "impulse_noise", 0.2, 1)
    changed = out != x
    assert abs(float(changed.float().mean()) - 0.2) < 0.01
    assert set(out[changed].unique().tolist()) == {0.0, 1.0}


def test_blur_equals_a_hand_written_gaussian_kernel():
    x = torch.rand(2, 1, 8, 8)
    s = 1.0
    side = 2 * math.ceil(3 * s) + 1
    k = torch.tensor([math.exp(-((i - side // 2) ** 2) / (2 * s * s)) for i in range(side)])
    k = k / k.sum()
    pad = F.pad(x, (side // 2,) * 4, mode="reflect")
    want = torch.zeros_like(x)
    for yy in range(8):
        for xx in range(8):
            patch = pad[:, :, yy:yy + side, xx:xx + side]
            want[:, :, yy, xx] = (patch * k.view(-1, 1) * k.view(1, -1)).sum((-1, -2))
    torch.testing.assert_close(corrupt(x, "blur", s, 0), want, rtol=1e-4, atol=1e-5)


def test_contrast_moves_each_pixel_towards_the_image_mean():
    x = torch.rand(3, 1, 8, 8)
    out = corrupt(x, "contrast", 0.6, 0)
    mean = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (0.4 * x + 0.6 * mean).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_rotation_turns_by_the_stated_degrees():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 1, 4] = 1.0  # above the centre
    out = corrupt(x, "rotation", 90.0, 0)  # counter-clockwise: to the left of the centre
    assert float(out[0, 0, 4, 1]) == pytest.approx(1.0, abs=1e-5) and float(out.sum()) == pytest.approx(1.0, abs=1e-4)


def test_fgsm_is_one_signed_gradient_step_within_the_budget():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(8, 1, 8, 8) * 0.8 + 0.1, torch.arange(8)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    want = (x + 0.05 * xr.grad.sign()).clamp(0, 1)
    got = corrupt(x, "fgsm", 0.05, 0, model, y)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("fields, message", [
    ({"sigma_eps": -1.0}, r"sigma_eps=-1.0 is out of range; allowed: \[0.0, inf\]"),
    ({"regularizer": "ninr", "sigma_eps": 0.0}, r"sigma_eps=0 with regularizer='ninr'.*allowed: sigma_eps > 0"),
    ({"regularizer": "nin"}, r"regularizer='nin' is not allowed.*allowed: none, l2, dropout, ninr, cdt"),
    ({"placement": "middle"}, r"placement='middle'.*allowed: in, full"),
    ({"arch": "linear_toy", "regularizer": "dropout"}, r"not defined for arch='linear_toy'; allowed: none, l2, ninr"),
    ({"arch": "cnn", "cnn_channels": (4, 4, 4, 4)}, r"cnn_channels=.*allowed: at most 3 entries"),
])
def test_bad_training_fields_are_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        cfg, _ = ninr.preset_configs("smoke", fields)
        ninr.build_model(cfg, ninr.load_data(cfg), "cpu", None)


@pytest.mark.parametrize("setting, message", [
    ({"corruption": "fog", "strength": 0.1}, r"corruption='fog' is not allowed.*allowed: clean, gaussian_noise"),
    ({"corruption": "blur", "strength": -0.5}, r"strength=-0.5 is out of range; allowed: \[0.0, inf\]"),
    ({"corruption": "contrast", "strength": 1.5}, r"strength=1.5 is out of range; allowed: \[0.0, 1.0\]"),
    ({"corruption": "clean", "strength": 0.3}, r"strength=0.3 with corruption='clean'; allowed: 0"),
])
def test_bad_test_settings_are_one_line_naming_the_field(setting, message):
    with pytest.raises(ConfigError, match=message):
        ninr.check_setting(setting)


def test_ninr_on_a_model_without_linear_layers_is_refused():
    with pytest.raises(ConfigError, match="needs a model with Linear or Conv2d layers"):
        ninr.nin_layers(torch.nn.Sequential(torch.nn.ReLU()), "in")


def test_a_bad_value_on_the_command_line_is_refused_before_ray_starts():
    assert refusal("ninr_compare", "--preset", "smoke", "--set", "l2=-0.2").startswith("error: l2=-0.2 is out of range")


# ---------------------------------------------------------------------------------------------
# Experiments


def test_the_experiments_cover_the_posters_table_and_the_phase_grid():
    from search_spaces import ninr as spaces
    compare = spaces.ninr_compare("paper")
    assert len(compare.train) == 18 and {p["arch"] for p in compare.train} == {"fc", "cnn"}
    tests = compare.tests(compare.train[0])
    assert {t["corruption"] for t in tests} == set(CORRUPTIONS)
    assert all(len([t for t in tests if t["corruption"] == c]) >= 3 for c in CORRUPTIONS if c != "clean")
    phases = spaces.ninr_phases("quick")
    assert {p["arch"] for p in phases.train} == {"linear_toy", "mlp3"}
    assert len({p["sigma_eps"] for p in phases.train}) >= 6 and len({p["lr"] for p in phases.train}) >= 3
    from tuner import registry
    assert registry.get("ninr_compare").default_seeds["paper"] == 5


@pytest.mark.usefixtures("one_thread")
def test_a_trials_parquet_final_loss_is_the_mean_over_the_last_tenth_of_steps(tmp_path):
    """The row's final_loss is NINR's own (the mean training loss over the last 10% of steps,
    recomputed here from the step losses kept beside the part), not the last epoch's mean."""
    import pandas as pd
    from tuner import registry, trial
    from tuner.store import ResultStore
    exp = registry.get("ninr_compare")
    trial.run_trial({"experiment": exp.name, "preset": "smoke", "seed": 0, "point": exp.space("smoke").train[0],
                     "overrides": {"steps": 30}, "storage": str(tmp_path), "name": "run", "meta": {},
                     "threads": 1}, local=True)
    (part,) = ResultStore(str(tmp_path), "run").parts()
    rows = pd.read_parquet(part)
    losses = np.load(part[:-len(".parquet")] + ".npz")["loss_steps"]
    assert len(losses) == 30 and set(rows["status"]) == {"ok"}
    want = (losses[27] + losses[28] + losses[29]) / 3  # the last 3 of 30 steps
    assert rows["final_loss"].tolist() == pytest.approx([want] * len(rows), rel=1e-12, abs=0)


# ---------------------------------------------------------------------------------------------
# End to end: tuner.run, the report, the notebook


@pytest.fixture(scope="module")
def smoke_runs(shared_smoke):
    """Real ninr_phases (1 seed) and ninr_compare (2 seeds: an SEM) smoke runs through the CLI, in
    one storage folder (tests/conftest.py)."""
    phases, compare = shared_smoke("ninr_phases")[0], shared_smoke("ninr_compare")[0]
    assert phases.parent == compare.parent
    return phases.parent


@pytest.mark.slow
def test_report_of_real_runs_draws_the_phase_diagram_table_and_curves(smoke_runs, tmp_path):
    from analysis import load
    from analysis.report import build

    phases = load(smoke_runs / "ninr_phases-smoke")
    assert set(phases["measured_phase"]) <= set(ninr.PHASES) and phases["eta_lambda"].notna().all()
    compare = load(smoke_runs / "ninr_compare-smoke")
    assert set(compare["corruption"]) == set(CORRUPTIONS) and len(compare) == 6 * 7 * 2
    for run in ("ninr_phases-smoke", "ninr_compare-smoke"):
        info = build(smoke_runs / run, tmp_path / run)
        md = (tmp_path / run / "report.md").read_text()
        assert "Noise injection node regularisation" in md and "Traceback" not in md
        if run == "ninr_phases-smoke":
            assert {"phase_diagram", "niw_trajectories"} <= set(info["figures"]) and "Phases measured over" in md
        else:
            assert "robustness" in info["figures"] and "keeps clean accuracy?" in md


@pytest.mark.slow
def test_notebook_executes_headless_on_a_real_run(smoke_runs):
    out = notebook_output("ninr", smoke_runs / "ninr_phases-smoke")
    assert "Phases measured over" in out


def test_agreement_counts_identical_labels_only_and_the_confusion_table_shows_the_rest():
    import pandas as pd
    from analysis import ninr as analysis
    cells = [(1.0, "decay", "decay"), (100.0, "divergent", "catapult"), (200.0, "failed", "decay"),
             (3.0, "catapult", "catapult")]
    rows = pd.DataFrame([{"family": "ninr", "method": "ninr", "status": "ok", "regularizer": "ninr", "arch": "mlp3",
                          "placement": "in", "sigma_eps": s, "lr": 0.05, "seed": 0, "measured_phase": m,
                          "predicted_phase": p, "eta_lambda": 0.5, "hessian_top_init": 10.0, "niw_norm_init": 1.0,
                          "niw_norm_final": 0.5, "final_loss": 1.0, "accuracy": 0.5, "label": f"in-NINR σ={s:g}"}
                         for s, m, p in cells])
    found = [f for f in analysis.findings(rows) if f.startswith("[mlp3] Phases")]
    assert len(found) == 1 and "is the predicted one in 2 of 4 cells (identical labels only" in found[0]
    assert "1 cell failed (the network learned nothing)" in found[0]
    conf = analysis.confusion_table(rows).set_index("measured \\ predicted")
    assert conf.loc["divergent", "catapult"] == 1 and conf.loc["failed", "decay"] == 1
    assert conf.loc["decay", "decay"] == 1 and conf.loc["catapult", "catapult"] == 1


def test_the_phase_probe_picks_the_smallest_sigma_with_a_learning_target_phase():
    grid = (0.3, 1.0, 3.0, 20.0, 40.0)
    fields = {"arch": "linear_toy", "regularizer": "ninr", "lr": 0.05, "probe_sigmas": grid, "probe_steps": 120}
    cfg, _ = ninr.preset_configs("quick", fields | {"phase_target": "decay"})
    data = ninr.load_data(cfg)
    seen = {}
    for sigma in grid:  # each probe on its own: the plain run at that sigma, probe length and seed
        one, _ = ninr.preset_configs("quick", fields | {"sigma_eps": sigma, "steps": 120, "hessian_points": 0})
        run = ninr.train(one, data).columns
        seen[sigma] = (run["measured_phase"], run["learned"])
    want = min(s for s, (phase, learned) in seen.items() if phase == "decay" and learned)
    sigma, probes = ninr.probe_phase_sigma(cfg, data)
    assert sigma == want and [p["sigma_eps"] for p in probes] == [s for s in grid if s <= want], (seen, probes)
    res = ninr.train(cfg, data)
    assert res.columns["sigma_eps_used"] == want == res.columns["probe_sigma"]
    assert res.model.nodes.sigma == want


def test_no_learning_phase_in_the_probe_grid_skips_the_trial_and_says_why():
    cfg, _ = ninr.preset_configs("quick", {"arch": "linear_toy", "regularizer": "ninr", "phase_target": "catapult",
                                           "probe_sigmas": (0.3, 1.0), "probe_steps": 60})
    res = ninr.train(cfg, ninr.load_data(cfg))
    assert res.status == "skipped" and res.model is None
    assert res.message.startswith("no probe sigma gives a learning catapult for linear_toy (in-NINR, lr 0.05, 60 steps)")
    assert "σ=0.3 " in res.message and "σ=1 " in res.message
    with pytest.raises(ConfigError, match=r"phase_target='decay' needs regularizer='ninr'"):
        ninr.preset_configs("quick", {"regularizer": "l2", "phase_target": "decay"})

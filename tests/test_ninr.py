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
            "divergent": np.exp(6 * t)}[kind]


@pytest.mark.parametrize("kind", ninr.PHASES)
def test_the_phase_rule_classifies_hand_made_trajectories(kind):
    losses = np.linspace(2.0, 0.5, 50)
    assert ninr.phase_of(_trajectory(kind), losses) == kind


def test_a_non_finite_or_rising_loss_is_divergent():
    norms = _trajectory("decay")
    assert ninr.phase_of(norms, [2.0, np.nan]) == "divergent"
    assert ninr.phase_of(norms, [1.0, 1.5]) == "divergent"
    assert ninr.phase_of(np.r_[norms, np.inf], [2.0, 1.0]) == "divergent"


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

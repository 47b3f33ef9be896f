"""SE-SNN: stochastic layers, the max-entropy regulariser, the label-noise baselines, EOT attacks.

The fast path is checked against `reference_sesnn.py`, written from the papers' equations with
explicit loops and fed the same noise; the label-noise generator and the anchor estimate against
what they must recover; the attack against ART's FGSM and against finite differences.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests import reference_sesnn as ref
from tests.conftest import notebook_output, refusal
from trainables import sesnn
from trainables.checks import ConfigError
from trainables.corruptions import eot_fgsm, fgsm

REPO = Path(__file__).resolve().parents[1]


def _net(**fields):
    cfg, ecfg = sesnn.preset_configs("smoke", {"model": "sesnn", "hidden": (8, 6), "stochastic_layers": (0, 1)}
                                     | fields)
    data = sesnn.load_data(cfg)
    torch.manual_seed(0)
    return cfg, data, sesnn.build_model(cfg, data, "cpu")


def _draws(net, n: int, gen: torch.Generator) -> dict[int, torch.Tensor]:
    """The noise one forward pass of `net` draws from `gen`: layer by layer, (n, width) each."""
    return {k: torch.randn((n, m.mu.out_features), generator=gen) for k, m in enumerate(net.stochastic)}


# ---------------------------------------------------------------------------------------------
# The network


@pytest.mark.parametrize("fields", [{"model": "sesnn"}, {"model": "vib", "stochastic_layers": (1,)},
                                    {"model": "deterministic"}, {"model": "deterministic", "parallel_layer": False}])
def test_the_network_equals_the_reference_fed_the_same_noise(fields):
    cfg, data, net = _net(**fields)
    x = data.x_train[:4]
    net.set_noise(True, torch.Generator().manual_seed(7))
    with torch.no_grad():
        fast = net(x)
    eps = _draws(net, len(x), torch.Generator().manual_seed(7))
    want, stats = ref.forward(net, x, eps if net.stochastic else None)
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-5)
    for k, m in enumerate(net.stochastic):  # the (mu, sigma) the regulariser reads
        torch.testing.assert_close(m.last[0].double(), stats[k][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.last[1].double(), stats[k][1], rtol=1e-5, atol=1e-5)
    if net.stochastic:
        mean_only, _ = ref.forward(net, x, None)
        assert (fast.double() - mean_only).abs().max() > 1e-3  # the noise reached the logits
        net.set_noise(False, None)
        with torch.no_grad():
            torch.testing.assert_close(net(x).double(), mean_only, rtol=1e-5, atol=1e-5)


def test_the_layers_that_are_stochastic_are_the_configured_ones():
    _, _, net = _net(hidden=(8, 6, 4), stochastic_layers=(2,))
    assert [type(m).__name__ for m in net.hidden] == ["Linear", "Linear", "StochasticLinear"]
    _, _, base = _net(model="deterministic", hidden=(8, 6, 4))
    assert [type(m).__name__ for m in base.hidden] == ["Linear", "Linear", "ParallelLinear"]
    n_snn = sum(p.numel() for p in _net(hidden=(8, 6), stochastic_layers=(1,))[2].parameters())
    n_base = sum(p.numel() for p in _net(model="deterministic", hidden=(8, 6))[2].parameters())
    assert n_snn == n_base  # the paper's parameter-matched baseline


# ---------------------------------------------------------------------------------------------
# The regularisers


@pytest.mark.parametrize("aggregation", sesnn.AGGREGATIONS)
def test_the_max_entropy_regulariser_equals_eq_5_6_7(aggregation):
    gen = torch.Generator().manual_seed(3)
    log_sigma = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 2  # some entries above the margin
    for b in (-1.0, math.log(4), 3.0):
        got = float(sesnn.max_entropy(log_sigma, b, aggregation))
        assert got == pytest.approx(ref.omega(log_sigma, b, aggregation), rel=1e-12, abs=1e-12)
    assert float(sesnn.max_entropy(log_sigma, -100.0, aggregation)) == 0.0  # above the margin: no cost


def test_the_three_aggregations_differ_where_the_paper_says():
    """Eq. 5 averages a unit over samples before the hinge, Eq. 6 a sample over units: one unit far
    above the margin can pay for the others only under Eq. 6 (per sample), never under Eq. 5."""
    log_sigma = torch.tensor([[10.0, -1.0], [10.0, -1.0]], dtype=torch.float64)
    assert float(sesnn.max_entropy(log_sigma, 0.0, "sample")) == 0.0
    assert float(sesnn.max_entropy(log_sigma, 0.0, "neuron")) == pytest.approx(0.5)
    assert float(sesnn.max_entropy(log_sigma, 0.0, "both")) == pytest.approx(0.5)


def test_the_vib_term_equals_the_gaussian_kl():
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    sigma = torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.1
    assert float(sesnn.vib_kl(mu, sigma)) == pytest.approx(ref.vib_kl(mu, sigma), rel=1e-12)
    assert float(sesnn.vib_kl(torch.zeros(2, 3), torch.ones(2, 3))) == 0.0  # the prior itself


def test_the_weighted_regulariser_sums_the_layers_terms():
    cfg, data, net = _net(omega=0.3, aggregation="both")
    net.set_noise(True, torch.Generator().manual_seed(1))
    net(data.x_train[:5])
    want = 0.3 * sum(ref.omega(torch.log(m.last[1]).detach().double(), cfg.margin, "both") for m in net.stochastic)
    assert float(sesnn.regulariser(net, cfg).detach()) == pytest.approx(want, rel=1e-5)


def test_training_with_the_regulariser_raises_the_entropy():
    """omega > 0 pushes log sigma up towards the margin; omega = 0 leaves only the task loss."""
    out = {}
    for omega in (0.0, 1.0):
        cfg, _ = sesnn.preset_configs("smoke", {"model": "sesnn", "omega": omega, "margin": 2.0, "epochs": 15,
                                                "train_limit": 40, "label_noise": 0.0})
        data = sesnn.load_data(cfg)
        res = sesnn.train(cfg, data)
        out[omega] = res.model.info["log_sigma_kept"]
    assert out[1.0] > out[0.0] + 0.2, out


# ---------------------------------------------------------------------------------------------
# Label noise and the baselines' losses


def test_patterned_label_noise_flips_each_class_to_one_other_at_the_stated_rate():
    y = torch.arange(10).repeat(300)
    noisy, flipped, pattern = sesnn.noisy_labels(y, 10, 0.4, seed=0)
    assert all(pattern[c] != c for c in range(10))
    assert torch.equal(noisy[~flipped], y[~flipped])
    assert torch.equal(noisy[flipped], torch.as_tensor(pattern)[y[flipped]])  # one target per class
    rate, se = float(flipped.float().mean()), math.sqrt(0.4 * 0.6 / len(y))
    assert abs(rate - 0.4) < 4 * se
    for c in range(10):  # per class too
        assert abs(float(flipped[y == c].float().mean()) - 0.4) < 4 * math.sqrt(0.24 / 300)
    again = sesnn.noisy_labels(y, 10, 0.4, seed=0)
    assert torch.equal(again[0], noisy)  # fixed within a run
    assert any(not np.array_equal(sesnn.flip_pattern(10, s), pattern) for s in (1, 2))  # varies across runs
    assert not sesnn.noisy_labels(y, 10, 0.0, seed=0)[1].any()
    T = sesnn.true_transition(pattern, 0.4)
    assert np.allclose(T.sum(1), 1) and np.allclose(np.diag(T), 0.6)


@pytest.mark.parametrize("hard", [False, True])
def test_bootstrap_losses_equal_reeds_equations(hard):
    gen = torch.Generator().manual_seed(5)
    logits, y = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3, torch.randint(0, 4, (6,), generator=gen)
    cfg, _ = sesnn.preset_configs("smoke", {"loss": "bootstrap_hard" if hard else "bootstrap_soft"})
    got = float(sesnn.task_loss(cfg, logits, y, None))
    want = ref.bootstrap(logits, y, cfg.hard_beta if hard else cfg.soft_beta, hard)
    assert got == pytest.approx(want, rel=1e-9)


def test_the_soft_bootstraps_gradient_flows_through_its_target_as_in_patrinis_code():
    """Keras differentiates the whole expression -sum (beta t + (1 - beta) q) log q, so the
    gradient is the reference's, taken by central differences over every logit."""
    gen = torch.Generator().manual_seed(9)
    logits, y = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randint(0, 4, (3,), generator=gen)
    cfg, _ = sesnn.preset_configs("smoke", {"loss": "bootstrap_soft"})
    x = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sesnn.task_loss(cfg, x, y, None), x)
    h, want = 1e-6, torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            up, down = logits.clone(), logits.clone()
            up[i, j] += h
            down[i, j] -= h
            want[i, j] = (ref.bootstrap(up, y, cfg.soft_beta, False) - ref.bootstrap(down, y, cfg.soft_beta, False)) / (2 * h)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)


def test_the_forward_loss_equals_patrinis_and_is_cross_entropy_under_the_identity():
    gen = torch.Generator().manual_seed(6)
    logits, y = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randint(0, 4, (6,), generator=gen)
    T = torch.softmax(torch.randn(4, 4, generator=gen, dtype=torch.float64) + 3 * torch.eye(4), 1)
    cfg, _ = sesnn.preset_configs("smoke", {"loss": "forward"})
    assert float(sesnn.task_loss(cfg, logits, y, T)) == pytest.approx(ref.forward_loss(logits, y, T), rel=1e-9)
    eye = float(sesnn.task_loss(cfg, logits, y, torch.eye(4, dtype=torch.float64)))
    assert eye == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert float(sesnn.task_loss(cfg, logits, y, None)) == pytest.approx(float(F.cross_entropy(logits, y)))


@pytest.mark.parametrize("q", [97.0, 90.0, 100.0])
def test_the_anchor_estimate_equals_the_reference(q):
    gen = torch.Generator().manual_seed(8)
    probs = torch.softmax(torch.randn(200, 5, generator=gen, dtype=torch.float64) * 3, 1)
    got = sesnn.estimate_transition(probs.numpy(), q)
    np.testing.assert_allclose(got, ref.estimate_transition(probs, q).numpy(), rtol=0, atol=0)


def test_the_anchor_estimate_recovers_t_and_its_percentile_discards_overconfident_outliers():
    """Examples whose noisy-label posterior is exactly T[true class] give back T row by row (q=100).
    Add over 3% of overconfident examples per class (p_i = 0.99): the plain argmax takes one of
    them as the anchor, the 97th-percentile rule discards them and still gives back T."""
    pattern = sesnn.flip_pattern(6, seed=3)
    T = sesnn.true_transition(pattern, 0.3)
    probs = np.repeat(T, 50, axis=0)
    np.testing.assert_allclose(sesnn.estimate_transition(probs, 100.0), T)
    outliers = np.full((6, 6), 0.01 / 5)
    np.fill_diagonal(outliers, 0.99)
    with_outliers = np.vstack([probs, np.repeat(outliers, 12, axis=0)])
    np.testing.assert_allclose(sesnn.estimate_transition(with_outliers, 97.0), T)
    np.testing.assert_allclose(sesnn.estimate_transition(with_outliers, 100.0), outliers)


# ---------------------------------------------------------------------------------------------
# Attacks


def test_one_draw_eot_fgsm_on_a_deterministic_net_equals_arts_fgsm():
    _, data, net = _net(model="deterministic")
    net.eval()
    x, y = data.x_test[:20], data.y_test[:20]
    torch.testing.assert_close(eot_fgsm(net, x, y, 0.1, draws=1), fgsm(net, x, y, 0.1), rtol=0, atol=1e-6)


def test_eot_fgsm_follows_the_expected_gradient_over_the_draws():
    _, data, net = _net(hidden=(5, 4))
    net = net.double()
    for m in net.stochastic:
        m.floor = 1e-6
    x, y = data.x_test[:3].double(), data.y_test[:3]
    net.set_noise(True, torch.Generator().manual_seed(11))
    fast = eot_fgsm(net, x, y, 0.2, draws=3)
    gen = torch.Generator().manual_seed(11)
    draws = [{k: v.double() for k, v in _draws(net, len(x), gen).items()} for _ in range(3)]
    want = ref.eot_fgsm(net, x, y, 0.2, draws)
    torch.testing.assert_close(fast, want, rtol=0, atol=1e-9)
    one = ref.eot_fgsm(net, x, y, 0.2, draws[:1])
    assert not torch.equal(one, want)  # the draws matter: one draw's sign is not the mean's


def test_an_attack_leaves_the_models_gradients_alone():
    _, data, net = _net()
    eot_fgsm(net, data.x_test[:5], data.y_test[:5], 0.1, draws=2)
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def test_forward_resumes_in_its_second_stage_to_the_uninterrupted_weights():
    cfg, _ = sesnn.preset_configs("smoke", {"model": "sesnn", "loss": "forward", "label_noise": 0.3, "epochs": 3})
    data = sesnn.load_data(cfg)
    states = {}
    whole = sesnn.train(cfg, data, callback=lambda p: states.__setitem__(p.epoch, p.state()))
    assert sorted(states) == [1, 2, 3, 4, 5, 6] and whole.epochs_done == 6
    assert states[4]["stage"] == 2 and states[2]["stage"] == 1
    resumed = sesnn.train(cfg, data, state=states[4])
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert str(whole.model.info) == str(resumed.model.info)  # str: NaN columns compare equal
    np.testing.assert_array_equal(whole.artefacts["transition"], resumed.artefacts["transition"])


def test_the_loss_tail_is_the_change_and_the_share_of_the_decrease_over_the_last_fifth():
    history = [10.0] + [5.0] * 7 + [4.0, 3.0]  # 10 epochs: L80 = epoch 8 (5.0), L_end = epoch 10 (3.0)
    change, share = sesnn.loss_tail(history)
    assert change == pytest.approx((3.0 - 5.0) / 5.0) and share == pytest.approx((5.0 - 3.0) / (10.0 - 3.0))
    assert all(math.isnan(v) for v in sesnn.loss_tail([3.0, 2.0]))


def test_rows_carry_the_label_noise_and_entropy_measurements():
    cfg, ecfg = sesnn.preset_configs("smoke", {"model": "sesnn", "loss": "forward", "label_noise": 0.4,
                                               "test_mode": "sample"})
    data = sesnn.load_data(cfg)
    res = sesnn.train(cfg, data)
    rows = sesnn.evaluate(res.model, data, [{"attack": "none", "eps": 0.0}, {"attack": "fgsm", "eps": 0.3}],
                          cfg, ecfg, seed=0)
    assert [r["attack"] for r in rows] == ["none", "fgsm"]
    r = rows[0]
    assert 0 < r["label_noise_realised"] < 1 and len(eval(r["flip_pattern"])) == data.num_classes
    assert math.isfinite(r["transition_error"]) and math.isfinite(r["log_sigma_flipped"])
    assert r["test_mode"] == "sample" and r["test_draws"] == ecfg.test_draws
    again = sesnn.evaluate(res.model, data, [{"attack": "fgsm", "eps": 0.3}], cfg, ecfg, seed=0)
    assert again[0]["accuracy"] == rows[1]["accuracy"]  # test-time draws are seeded


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("fields, message", [
    ({"model": "bnn"}, r"model='bnn' is not allowed.*allowed: deterministic, sesnn, vib"),
    ({"stochastic_layers": (2,)}, r"stochastic_layers=\(2,\) is not allowed; allowed: distinct hidden-layer indices from 0, 1"),
    ({"model": "sesnn", "stochastic_layers": ()}, r"makes nothing stochastic"),
    ({"aggregation": "layer"}, r"aggregation='layer'.*allowed: neuron, sample, both"),
    ({"label_noise": 1.0}, r"label_noise=1.0 flips every label; allowed: \[0, 1\)"),
    ({"label_noise": -0.1}, r"label_noise=-0.1 is out of range; allowed: \[0.0, 1.0\]"),
    ({"loss": "mae"}, r"loss='mae'.*allowed: ce, bootstrap_soft, bootstrap_hard, forward"),
    ({"anchor_percentile": 0.0}, r"anchor_percentile=0.0 is out of range; allowed: \(0.0, 100.0\]"),
    ({"test_mode": "mc"}, r"test_mode='mc'.*allowed: mean, sample"),
    ({"hidden": ()}, r"hidden=\(\) is not allowed"),
])
def test_bad_fields_are_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        sesnn.preset_configs("smoke", fields)


@pytest.mark.parametrize("setting, message", [
    ({"attack": "cw", "eps": 0.1}, r"attack='cw' is not allowed.*allowed: none, fgsm"),
    ({"attack": "fgsm", "eps": 1.5}, r"eps=1.5 is out of range; allowed: \[0.0, 1.0\]"),
    ({"attack": "none", "eps": 0.2}, r"eps=0.2 with attack='none'; allowed: 0"),
])
def test_bad_test_settings_are_one_line_naming_the_field(setting, message):
    with pytest.raises(ConfigError, match=message):
        sesnn.check_setting(setting)


def test_a_bad_value_on_the_command_line_is_refused_before_ray_starts():
    assert refusal("adversarial_sesnn", "--preset", "smoke", "--set", "omega=-1").startswith("error: omega=-1 is out of range")


# ---------------------------------------------------------------------------------------------
# Experiments


def test_the_experiments_cover_the_papers_figures():
    from search_spaces import sesnn as spaces
    label = spaces.labelnoise_sesnn("paper")
    assert len(label.train) == 6 * 6 and {p["label_noise"] for p in label.train} >= {0.0, 0.4, 0.5}
    assert {(p["model"], p["loss"]) for p in label.train} == {(m["model"], m["loss"]) for m in
                                                              spaces.LABEL_NOISE_METHODS.values()}
    assert label.fixed["hidden"] == (128, 128) and label.fixed["aggregation"] == "sample"
    adv = spaces.adversarial_sesnn("paper")
    assert {p["model"] for p in adv.train} == {"deterministic", "vib", "sesnn"}
    assert {p["adv_train_eps"] for p in adv.train} == {0.0, spaces.ADV_TRAIN_EPS}
    assert adv.fixed["hidden"] == (1024, 1024, 256) and adv.fixed["stochastic_layers"] == (2,)
    assert max(t["eps"] for t in adv.tests(adv.train[0])) == 0.5
    margin = spaces.margin_sesnn("paper")
    assert {p["margin"] for p in margin.train} == {math.log(1), math.log(4), math.log(16)}
    from tuner import registry
    assert registry.get("adversarial_sesnn").default_seeds["paper"] == 20


# ---------------------------------------------------------------------------------------------
# End to end: tuner.run, the report, the notebook


@pytest.fixture(scope="module")
def smoke_runs(shared_smoke):
    """Real labelnoise_sesnn (2 seeds: an SEM) and adversarial_sesnn (1 seed) smoke runs through
    the CLI, in one storage folder (tests/conftest.py)."""
    label, adv = shared_smoke("labelnoise_sesnn")[0], shared_smoke("adversarial_sesnn")[0]
    assert label.parent == adv.parent
    return label.parent


@pytest.mark.slow
def test_report_of_real_runs_draws_the_curves_table_and_findings(smoke_runs, tmp_path):
    from analysis import load
    from analysis.report import build

    label = load(smoke_runs / "labelnoise_sesnn-smoke")
    assert set(label["loss"]) == {"forward", "ce"} and label["seed"].nunique() == 2
    for run, figures, words in (("labelnoise_sesnn-smoke", {"label_noise_curves", "entropy_of_flipped"},
                                 "beats Baseline under 40% label noise?"),
                                ("adversarial_sesnn-smoke", {"fgs_curves"}, "under FGS")):
        info = build(smoke_runs / run, tmp_path / run)
        md = (tmp_path / run / "report.md").read_text()
        assert "Stochastic networks with max-entropy regularisation" in md and "Traceback" not in md
        assert figures <= set(info["figures"]), info["skipped"]
        assert words in md


@pytest.mark.slow
def test_notebook_executes_headless_on_a_real_run(smoke_runs):
    out = notebook_output("sesnn", smoke_runs / "labelnoise_sesnn-smoke")
    assert "label noise?" in out

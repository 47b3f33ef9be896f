"""SE-SNN: stochastic layers, the max-entropy regulariser, the label-noise baselines, EOT attacks.

The fast path is checked against `reference_sesnn.py`, written from the papers' equations with
explicit loops and fed the same noise; the label-noise generator and the anchor estimate against
what they must recover; the attack against ART's FGSM and against finite differences; the
compression networks and their pruning against hand counts of LeNet-5 and against networks built
at the kept widths, the ranking against hand-made entropies, resume against a straight run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests import reference_sesnn as ref
from tests.conftest import notebook_output, refusal
from trainables import pruning, sesnn
from trainables.checks import ConfigError
from trainables.supervised import train_supervised
from trainables.corruptions import DrawMean, eot_cw_l2, eot_fgsm, fgsm

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
                                    {"model": "vib", "stochastic_layers": (0,)},
                                    {"model": "vib", "stochastic_layers": (1,), "vib_z_relu": True},
                                    {"model": "deterministic"}, {"model": "deterministic", "parallel_layer": False}])
def test_the_network_equals_the_reference_fed_the_same_noise(fields):
    cfg, data, net = _net(**fields)
    x = data.x_train[:4]
    net.set_noise(True, torch.Generator().manual_seed(7))
    with torch.no_grad():
        fast = net(x)
    eps = _draws(net, len(x), torch.Generator().manual_seed(7))
    alemi = cfg.model == "vib" and not cfg.vib_z_relu  # Deep VIB's next layer reads z itself
    want, stats = ref.forward(net, x, eps if net.stochastic else None, code_relu=not alemi)
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-5)
    for k, m in enumerate(net.stochastic):  # the (mu, sigma) the regulariser reads
        torch.testing.assert_close(m.last[0].double(), stats[k][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.last[1].double(), stats[k][1], rtol=1e-5, atol=1e-5)
    if net.stochastic:
        mean_only, _ = ref.forward(net, x, None, code_relu=not alemi)
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


def test_deep_vibs_classifier_reads_the_code_z_and_se_snns_reads_relu_z():
    """Alemi et al.'s decoder is a linear softmax on z: negative code values reach the logits."""
    cfg, data, vib = _net(model="vib", hidden=(8, 6), stochastic_layers=(1,))
    vib.set_noise(False, None)
    with torch.no_grad():
        vib(data.x_train[:4])
        mu = vib.stochastic[0].last[0]
        assert (mu < 0).any()  # so a ReLU would change what the classifier reads
        torch.testing.assert_close(vib(data.x_train[:4]), vib.classifier(mu))
    assert vib.relu_after == [True, False]
    assert _net(model="vib", hidden=(8, 6), stochastic_layers=(1,), vib_z_relu=True)[2].relu_after == [True, True]
    assert _net(model="sesnn", hidden=(8, 6), stochastic_layers=(1,))[2].relu_after == [True, True]


@pytest.mark.parametrize("aggregation", sesnn.AGGREGATIONS)
def test_each_aggregations_gradient_equals_the_finite_difference_of_its_equation(aggregation):
    gen = torch.Generator().manual_seed(5)
    log_sigma = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2
    for b in (-0.5, 0.3, 1.0):  # some terms of every aggregation active and some not at 0.3
        ls = log_sigma.clone().requires_grad_(True)
        sesnn.max_entropy(ls, b, aggregation).backward()
        torch.testing.assert_close(ls.grad, ref.omega_gradient(log_sigma, b, aggregation), rtol=1e-6, atol=1e-8)


def test_eq_5_6_7_give_one_gradient_when_every_term_is_active_and_differ_once_some_are_not():
    """With every hinge active each is omega * (b - mean log sigma): the same loss. Once the margin
    binds for some terms (here at b = 0.3), the three aggregations push different entries."""
    log_sigma = torch.tensor([[2.0, -1.0, 0.5], [-2.0, 1.5, 0.0], [0.5, 0.5, -0.5], [3.0, -3.0, 1.0]],
                             dtype=torch.float64)  # unit means 0.875, -0.5, 0.25; sample means 0.5, -0.17, 0.17, 0.33

    def grads(b):
        out = {}
        for a in sesnn.AGGREGATIONS:
            ls = log_sigma.clone().requires_grad_(True)
            sesnn.max_entropy(ls, b, a).backward()
            out[a] = ls.grad
        return out

    b_all = float(log_sigma.max()) + 1.0  # above every entry: every term of every aggregation active
    shares = sesnn.hinge_active_shares([log_sigma], b_all)
    assert shares == {"hinge_active_neuron": 1.0, "hinge_active_sample": 1.0, "hinge_active_both": 1.0}
    g = grads(b_all)
    for a in ("neuron", "both"):
        torch.testing.assert_close(g[a], g["sample"], rtol=0, atol=1e-15)
    torch.testing.assert_close(g["sample"], torch.full_like(log_sigma, -1 / log_sigma.numel()))
    g = grads(0.3)
    for a in sesnn.AGGREGATIONS:  # the shares match a count written from the equations
        active, total = ref.hinge_active(log_sigma, 0.3, a)
        assert 0 < active < total
        assert sesnn.hinge_active_shares([log_sigma], 0.3)[f"hinge_active_{a}"] == pytest.approx(active / total)
    assert (g["neuron"] - g["sample"]).abs().max() > 1e-3
    assert (g["neuron"] - g["both"]).abs().max() > 1e-3
    assert (g["sample"] - g["both"]).abs().max() > 1e-3


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
        out[omega] = res.columns["log_sigma_kept"]
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


class _Noisy(torch.nn.Module):
    """A linear model whose every forward adds fresh noise to its logits, recording each call's
    input and output: what a stochastic network looks like to an attack."""

    def __init__(self, fan_in: int, classes: int, scale: float):
        super().__init__()
        self.lin = torch.nn.Linear(fan_in, classes)
        self.scale, self.gen, self.calls = scale, torch.Generator().manual_seed(5), []

    def forward(self, x):
        out = self.lin(x.flatten(1)) + self.scale * torch.randn((len(x), self.lin.out_features), generator=self.gen)
        self.calls.append((x.detach().clone(), out.detach().clone()))
        return out


@pytest.mark.parametrize("output", ["logits", "probs"])
def test_eot_cw_sees_the_mean_over_k_draws_in_every_model_call(monkeypatch, output):
    """Every prediction and class gradient ART's CW takes is of DrawMean: K calls of the model on the
    same input, whose outputs it averages (logits, or the log of the mean softmax)."""
    torch.manual_seed(0)
    model, k = _Noisy(6, 3, 0.5), 4
    seen = []
    forward = DrawMean.forward
    monkeypatch.setattr(DrawMean, "forward", lambda self, x: seen.append(forward(self, x)) or seen[-1])
    x = torch.rand(5, 6) * 0.2 + 0.4
    y = model.lin(x).argmax(1)
    model.calls.clear()
    eot_cw_l2(model, x, y, draws=k, output=output, max_iter=3, binary_search_steps=2)
    calls = model.calls[1:]  # the first: one pass on one image that reads the number of classes
    assert len(seen) >= 6 and len(calls) == k * len(seen)  # predictions and gradients alike
    for i, mean in enumerate(seen):
        group = calls[k * i:k * (i + 1)]
        assert all(torch.equal(g[0], group[0][0]) for g in group)  # one input, K draws
        outs = torch.stack([g[1] for g in group])
        assert not torch.allclose(outs[0], outs[1])  # the draws differ: sampling stays on under ART
        want = outs.mean(0) if output == "logits" else torch.log(F.softmax(outs, -1).mean(0))
        torch.testing.assert_close(mean.detach(), want, rtol=1e-6, atol=1e-6)
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())


def test_eot_cw_keeps_se_snns_sampling_on_under_art():
    """ART puts the classifier in eval mode; an SE-SNN's layers sample by their own switch, so the
    K passes of one DrawMean call draw different noise."""
    _, data, net = _net()
    net.set_noise(True, torch.Generator().manual_seed(3))
    outs = []
    net.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
    eot_cw_l2(net, data.x_test[:4], data.y_test[:4], draws=3, max_iter=1, binary_search_steps=1)
    outs = outs[1:]  # after the probe that reads the number of classes
    assert len(outs) % 3 == 0 and not torch.allclose(outs[0], outs[1])


def _shared_draws(net, n: int, gen: torch.Generator) -> dict[int, torch.Tensor]:
    """The noise one forward pass of `net` draws from `gen` with shared=True: one (1, width) row
    per layer, the same for all n images."""
    return {k: torch.randn((1, m.mu.out_features), generator=gen).expand(n, -1) for k, m in enumerate(net.stochastic)}


def test_fixed_draws_give_every_drawmean_call_the_same_k_draws():
    """With its generator, DrawMean's every call is the mean over the same K draws, the K draws
    differ, an image's draws do not depend on the batch it sits in, and the mean is the reference
    network's mean over the K noise rows drawn from the generator's first state. Without, two
    calls on one input differ."""
    _, data, net = _net()
    x, k = data.x_test[:5], 3
    gen = torch.Generator().manual_seed(11)
    net.set_noise(True, gen, shared=True)
    fixed = DrawMean(net, k, "logits", gen)
    with torch.no_grad():
        first, second, part = fixed(x), fixed(x), fixed(x[2:4])
    assert torch.equal(first, second)
    torch.testing.assert_close(part, first[2:4], rtol=1e-6, atol=1e-6)
    again = torch.Generator().manual_seed(11)
    outs = torch.stack([ref.forward(net, x, _shared_draws(net, len(x), again))[0] for _ in range(k)])
    assert all((outs[i] - outs[j]).abs().max() > 1e-3 for i in range(k) for j in range(i))  # K different draws
    torch.testing.assert_close(first.double(), outs.mean(0), rtol=1e-5, atol=1e-5)
    net.set_noise(True, gen)
    fresh = DrawMean(net, k, "logits")
    with torch.no_grad():
        assert (fresh(x) - fresh(x)).abs().max() > 1e-3


def test_a_shared_draw_is_one_noise_map_for_every_image_of_a_convolution_too():
    """shared=True: a convolution's noise is one (C, H, W) map per draw, the same for every image,
    so identical images get identical outputs; without, they differ."""
    torch.manual_seed(0)
    layer = sesnn.StochasticConv2d(1, 2, 3, 1, 0.1, False)
    x = torch.rand(1, 1, 5, 5).expand(3, -1, -1, -1)
    layer.generator, layer.shared = torch.Generator().manual_seed(4), True
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out[0], out[2], rtol=1e-6, atol=1e-6)
        assert (out[0] - layer.last[0][0]).abs().max() > 1e-3
        layer.shared = False
        out = layer(x)
    assert (out[0] - out[2]).abs().max() > 1e-3


@pytest.mark.parametrize("fixed", [True, False])
def test_with_fixed_draws_every_model_call_of_the_attack_sees_the_same_draws(fixed):
    """The noise each stochastic layer drew, read back as (z - mu) / sigma from every forward pass
    ART's CW makes (in groups of K per DrawMean call, on the whole batch or on subsets of it): with
    fixed draws the k-th pass of every call has the k-th pass's noise of the first call, and the K
    passes differ; with fresh draws the calls differ."""
    _, data, net = _net()
    k, gen = 3, torch.Generator().manual_seed(3)
    net.set_noise(True, gen, shared=fixed)
    noise = []
    layer = net.stochastic[0]
    layer.register_forward_hook(lambda m, i, o: noise.append(((o - m.last[0]) / m.last[1]).detach().clone()))
    eot_cw_l2(net, data.x_test[:6], data.y_test[:6], draws=k, max_iter=2, binary_search_steps=2,
              generator=gen if fixed else None)
    noise = noise[1:]  # after the probe that reads the number of classes
    assert len(noise) % k == 0 and len(noise) >= 4 * k
    assert len({len(e) for e in noise}) > 1  # ART called on subsets of the batch too
    if not fixed:
        assert (noise[0][0] - noise[k][0]).abs().max() > 1e-3
        return
    for i, e in enumerate(noise):
        torch.testing.assert_close(e, noise[i % k][:1].expand_as(e), rtol=0, atol=1e-4)
    assert all((noise[i][0] - noise[j][0]).abs().max() > 1e-2 for i in range(k) for j in range(i))


def test_cw_l2_finds_the_closed_form_minimal_perturbation_of_a_linear_model():
    """Two classes, untargeted at confidence k: a linear model's adversarial set is the half-space
    z_other >= z_y + k, so the minimal L2 perturbation is (z_y - z_other + k) / ||w_y - w_other||
    (its projection stays inside the [0, 1] box here): CW cannot go below it and must come close.
    (With more classes CW's max-over-others loss follows the highest rival logit, not the nearest
    boundary, so only two classes give a closed form it must reach.)"""
    torch.manual_seed(1)
    lin = torch.nn.Linear(8, 2)
    x = 0.5 + 0.01 * torch.randn(6, 8)
    with torch.no_grad():
        z = lin(x)
    y = z.argmax(1)
    g = lin.weight.detach()[y] - lin.weight.detach()[1 - y]  # the margin's gradient per image
    kappa = 1e-3
    gaps = (z.gather(1, y[:, None]) - z.gather(1, 1 - y[:, None]) + kappa)[:, 0] / g.norm(dim=1)
    nearest = x - gaps[:, None] * g / g.norm(dim=1, keepdim=True)
    assert gaps.min() > 0.05 and 0 < nearest.min() and nearest.max() < 1  # inside the box
    adv = eot_cw_l2(lin, x, y, confidence=kappa, max_iter=20, binary_search_steps=5, initial_const=1.0)
    assert (lin(adv).argmax(1) != y).all()
    ratio = (adv - x).flatten(1).norm(dim=1) / gaps
    assert ratio.min() >= 1 - 1e-3 and ratio.max() <= 1.05, ratio


def test_an_attacked_row_counts_successes_among_the_images_the_clean_row_gets_right(monkeypatch):
    """Success rate and mean L2 by hand: labels made so that the first 20 images are right when
    clean, a stand-in attack that swaps every even image for one the network labels otherwise."""
    import dataclasses
    cfg, data, net = _net(model="deterministic", parallel_layer=False)
    x = data.x_test[:30]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()  # larger than the init's weights: not every image gets one class
        pred = net(x).argmax(1)
    other = [int(torch.nonzero(pred != pred[i])[0]) for i in range(30)]
    labels = torch.where(torch.arange(30) < 20, pred, (pred + 1) % data.num_classes)
    data = dataclasses.replace(data, x_test=x, y_test=labels)
    swapped = torch.stack([x[other[i]] if i % 2 == 0 else x[i] for i in range(30)])
    monkeypatch.setattr(sesnn, "eot_cw_l2", lambda model, xs, ys, **kw: swapped[:len(xs)])
    _, ecfg = sesnn.preset_configs("smoke", {"cw_images": 30})
    clean, attacked = sesnn.evaluate(net, data, [{"attack": "none", "eps": 0.0}, {"attack": "cw_l2", "eps": 0.0}],
                                     cfg, ecfg)
    assert clean["accuracy"] == pytest.approx(20 / 30) and math.isnan(clean["attack_success_rate"])
    with torch.no_grad():
        after = (net(swapped).argmax(1) == labels).float().mean()
    assert attacked["test_images"] == 30 and attacked["accuracy"] == pytest.approx(float(after))
    assert attacked["attack_success_rate"] == pytest.approx(10 / 20)  # 10 of the 20 right ones swapped
    l2 = (swapped - x).flatten(1).norm(dim=1)[:20:2]
    assert attacked["mean_l2"] == pytest.approx(float(l2.mean()))


def test_cw_attacks_the_first_cw_images_and_records_its_fields(monkeypatch):
    cfg, data, net = _net()
    got = {}
    monkeypatch.setattr(sesnn, "eot_cw_l2", lambda model, xs, ys, **kw: got.update(
        kw, n=len(xs), layers=[(m.generator, m.shared) for m in model.stochastic]) or xs)
    _, ecfg = sesnn.preset_configs("smoke", {"cw_images": 7, "eot_draws": 3, "test_mode": "sample",
                                             "cw_confidence": 0.5, "eot_output": "probs"})
    (row,) = sesnn.evaluate(net, data, [{"attack": "cw_l2", "eps": 0.0}], cfg, ecfg)
    assert got["n"] == 7 and got["draws"] == 3 and got["confidence"] == 0.5 and got["output"] == "probs"
    # fixed draws by default: the attack's layers draw shared noise from the generator DrawMean resets
    assert ecfg.eot_fixed_draws and isinstance(got["generator"], torch.Generator)
    assert all(g is got["generator"] and shared for g, shared in got["layers"])
    assert not any(m.shared for m in net.stochastic)  # the attacked images were tested on fresh draws
    _, fresh = sesnn.preset_configs("smoke", {"cw_images": 7, "eot_draws": 3, "test_mode": "sample",
                                              "eot_fixed_draws": False})
    sesnn.evaluate(net, data, [{"attack": "cw_l2", "eps": 0.0}], cfg, fresh)
    assert got["generator"] is None and not any(shared for _, shared in got["layers"])
    assert row["test_images"] == 7 and row["attack_success_rate"] == 0 and math.isnan(row["mean_l2"])
    _, ecfg = sesnn.preset_configs("smoke", {"eot_draws": 3, "test_mode": "mean"})
    sesnn.evaluate(net, data, [{"attack": "cw_l2", "eps": 0.0}], cfg, ecfg)
    assert got["draws"] == 1  # mu only: nothing to average


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
    assert str(whole.columns) == str(resumed.columns)  # str: NaN columns compare equal
    np.testing.assert_array_equal(whole.artefacts["transition"], resumed.artefacts["transition"])
    # App. B.4's per-epoch losses: each stage's, whole after a resume in the second stage too
    assert whole.history == resumed.history and len(whole.history) == 6
    for name in ("epoch_loss", "epoch_loss_stage1"):
        np.testing.assert_array_equal(whole.artefacts[name], resumed.artefacts[name])
    np.testing.assert_array_equal(whole.artefacts["epoch_loss_stage1"], whole.history[:3])
    np.testing.assert_array_equal(whole.artefacts["epoch_loss"], whole.history[3:])


def test_every_label_noise_method_keeps_its_per_epoch_training_loss():
    """App. B.4: the loss the optimiser saw (task loss plus omega * Omega) of each epoch."""
    from search_spaces.sesnn import LABEL_NOISE_METHODS
    for name in ("Baseline", "SE-SNN", "Bootstrap-soft"):
        cfg, _ = sesnn.preset_configs("smoke", LABEL_NOISE_METHODS[name] | {"label_noise": 0.4, "epochs": 3})
        res = sesnn.train(cfg, sesnn.load_data(cfg))
        assert list(res.artefacts) == ["epoch_loss"] and len(res.artefacts["epoch_loss"]) == 3, name
        np.testing.assert_array_equal(res.artefacts["epoch_loss"], res.history)
        assert res.artefacts["epoch_loss"][-1] == res.columns["final_loss"]


def test_the_loss_tail_is_the_change_and_the_share_of_the_decrease_over_the_last_fifth():
    history = [10.0] + [5.0] * 7 + [4.0, 3.0]  # 10 epochs: L80 = epoch 8 (5.0), L_end = epoch 10 (3.0)
    change, share = sesnn.loss_tail(history)
    assert change == pytest.approx((3.0 - 5.0) / 5.0) and share == pytest.approx((5.0 - 3.0) / (10.0 - 3.0))
    assert all(math.isnan(v) for v in sesnn.loss_tail([3.0, 2.0]))


def test_a_run_measures_the_label_noise_and_entropy_and_its_test_draws_are_seeded():
    cfg, ecfg = sesnn.preset_configs("smoke", {"model": "sesnn", "loss": "forward", "label_noise": 0.4,
                                               "test_mode": "sample"})
    data = sesnn.load_data(cfg)
    res = sesnn.train(cfg, data)
    rows = sesnn.evaluate(res.model, data, [{"attack": "none", "eps": 0.0}, {"attack": "fgsm", "eps": 0.3}],
                          cfg, ecfg, eval_seed=0)
    assert [r["attack"] for r in rows] == ["none", "fgsm"]
    r = res.columns  # the trial writes them on every row
    assert 0 < r["label_noise_realised"] < 1 and len(eval(r["flip_pattern"])) == data.num_classes
    assert math.isfinite(r["transition_error"]) and math.isfinite(r["log_sigma_flipped"])
    again = sesnn.evaluate(res.model, data, [{"attack": "fgsm", "eps": 0.3}], cfg, ecfg, eval_seed=0)
    assert again[0]["accuracy"] == rows[1]["accuracy"]  # test-time draws are seeded
    # the hinge shares count, over both layers, the terms of Eq. 5-7 that the margin does not bind
    res.model.set_noise(False, None)
    with torch.no_grad():
        res.model(data.x_train)
    log_sigmas = [torch.log(m.last[1]).double() for m in res.model.stochastic]
    for aggregation in sesnn.AGGREGATIONS:
        counts = [ref.hinge_active(ls, cfg.margin, aggregation) for ls in log_sigmas]
        want = sum(a for a, _ in counts) / sum(t for _, t in counts)
        assert r[f"hinge_active_{aggregation}"] == pytest.approx(want)
    assert len(r["params_digest"]) == 16 and r["params_digest"] == sesnn.params_digest(res.model)


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
    ({"eot_output": "mean"}, r"eot_output='mean' is not allowed.*allowed: logits, probs"),
    ({"cw_max_iter": 0}, r"cw_max_iter=0"),
    ({"cw_initial_const": 0.0}, r"cw_initial_const=0.0 is out of range"),
    ({"eot_fixed_draws": 1}, r"eot_fixed_draws=1 is not allowed; allowed: True, False"),
])
def test_bad_fields_are_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        sesnn.preset_configs("smoke", fields)


@pytest.mark.parametrize("setting, message", [
    ({"attack": "cw", "eps": 0.1}, r"attack='cw' is not allowed.*allowed: none, fgsm, cw_l2"),
    ({"attack": "cw_l2", "eps": 0.1}, r"eps=0.1 with attack='cw_l2'; allowed: 0"),
    ({"attack": "fgsm", "eps": 1.5}, r"eps=1.5 is out of range; allowed: \[0.0, 1.0\]"),
    ({"attack": "none", "eps": 0.2}, r"eps=0.2 with attack='none'; allowed: 0"),
])
def test_bad_test_settings_are_one_line_naming_the_field(setting, message):
    with pytest.raises(ConfigError, match=message):
        sesnn.check_setting(setting)


def test_a_bad_value_on_the_command_line_is_refused_before_ray_starts():
    assert refusal("adversarial_sesnn", "--preset", "smoke", "--set", "omega=-1").startswith("error: omega=-1 is out of range")


# ---------------------------------------------------------------------------------------------
# Pruning (Sec. 4.1): the compression networks, Eq. 5 per channel, the pipeline


def _lenet(widths=(4, 6, 12), **fields):
    cfg, ecfg = sesnn.prune_preset_configs("smoke", {"widths": widths} | fields)
    data = sesnn.load_data(cfg)
    torch.manual_seed(0)
    return cfg, ecfg, data, sesnn.build_compression_net(cfg, data, cfg.hidden_widths, "cpu")


def _lenet_counts(w1, w2, w3, classes=10):
    """LeNet-5-Caffe on 28 px by hand: conv5x5 -> 24x24, pool -> 12, conv5x5 -> 8x8, pool -> 4x4.
    (multiplications, weights, feature-map elements) of the mu-only network."""
    mults = 24 * 24 * w1 * 25 + 8 * 8 * w2 * w1 * 25 + 16 * w2 * w3 + w3 * classes
    weights = w1 * 25 + w2 * w1 * 25 + 16 * w2 * w3 + w3 * classes
    maps = 24 * 24 * w1 + 8 * 8 * w2 + w3 + classes
    return mults, weights, maps


def test_the_compression_networks_have_the_papers_layers():
    _, _, data, net = _lenet(widths=())
    assert net.widths == (20, 50, 500) and type(net.stochastic[0]).__name__ == "StochasticConv2d"
    assert [type(m).__name__ for m in net.stochastic] == ["StochasticConv2d"] * 2 + ["StochasticLinear"]
    assert net.classifier.in_features == 500 and net.stochastic[2].mu.in_features == 50 * 4 * 4
    x = data.x_test[:1]
    deployed = net.deployed()
    assert pruning.multiplications(deployed, x) == _lenet_counts(20, 50, 500)[0] == 2_293_000
    assert pruning.weight_count(deployed) == _lenet_counts(20, 50, 500)[1] == 430_500
    assert pruning.feature_map_size(deployed, x) == _lenet_counts(20, 50, 500)[2]
    assert sesnn.PruneConfig(arch="vgg16").hidden_widths == (64, 64, 128, 128, 256, 256, 256, *[512] * 8)
    assert sesnn.PruneConfig(arch="vgg16_cifar100").hidden_widths == (64, 64, 128, 128, *[256] * 4, *[512] * 8)
    vgg = sesnn.CompressionNet("vgg16", tuple(range(1, 16)), 3, 32, 10, 1e-6, True)  # narrow: the shape is tested
    assert [type(m).__name__ for m in vgg.stochastic] == ["StochasticConv2d"] * 13 + ["StochasticLinear"] * 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.body) == 5 and vgg.stochastic[13].mu.in_features == 13
    assert isinstance(vgg.stochastic[0].norm, nn.BatchNorm2d) and vgg.classifier.in_features == 15
    c100 = sesnn.CompressionNet("vgg16_cifar100", tuple(range(1, 17)), 3, 32, 100, 1e-6, True)
    assert len(c100.stochastic) == 16 and all(isinstance(m, sesnn.StochasticConv2d) for m in c100.stochastic)
    assert isinstance(c100.body[-2], nn.AvgPool2d) and c100.classifier.in_features == 16  # 32 px -> 1x1


def test_the_stochastic_conv_layer_draws_one_gaussian_per_channel_and_position():
    layer = sesnn.StochasticConv2d(2, 3, 3, 1, 1e-6, norm=False).double()
    h = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    layer.generator = torch.Generator().manual_seed(4)
    z = layer(h)
    eps = torch.randn((2, 3, 5, 5), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mu = F.conv2d(h, layer.mu.weight, layer.mu.bias, padding=1)
    sigma = F.softplus(F.conv2d(h, layer.log_scale.weight, layer.log_scale.bias, padding=1)) + 1e-6
    torch.testing.assert_close(z, mu + eps * sigma)
    layer.sample = False
    torch.testing.assert_close(layer(h), mu)  # test time: mu only


def test_eq_5_per_channel_averages_each_channels_log_sigma_over_samples_and_positions():
    cfg, _, data, net = _lenet(omega=0.5, margin=0.3)
    net.set_noise(True, torch.Generator().manual_seed(1))
    net(data.x_train[:3])
    want = 0.0
    for m in net.stochastic:
        log_sigma = torch.log(m.last[1].detach().double())
        per_unit = [float(log_sigma[:, j].mean()) for j in range(log_sigma.shape[1])]  # over N (and H, W)
        want += sum(max(cfg.margin - v, 0.0) for v in per_unit) / len(per_unit)
    assert float(sesnn.prune_regulariser(net, cfg).detach()) == pytest.approx(cfg.omega * want, rel=1e-5)


def test_removing_never_active_units_leaves_every_logit_unchanged():
    """Units forced silent (mu = -1 everywhere) and any found silent on the batch are removed; the
    removed terms were exact zeros, so the logits on that batch stay the same (equal up to the
    order in which the shorter sums are added: 1 ulp of float64)."""
    _, _, data, net = _lenet()
    net = net.double()
    with torch.no_grad():
        for m, silent in zip(net.stochastic, ([1], [0, 4], [3, 7, 8])):
            m.mu.weight[silent] = 0
            m.mu.bias[silent] = -1.0
    x = data.x_train.double()
    peaks, _ = sesnn.unit_statistics(net, x, 64)
    dead = [pruning.inactive_units(p) for p in peaks]
    assert all(set(s) <= set(d) for s, d in zip(([1], [0, 4], [3, 7, 8]), dead))
    with torch.no_grad():
        before = net(x)
    sesnn.remove_stochastic_units(net, dead)
    assert net.widths == tuple(w - len(d) for w, d in zip((4, 6, 12), dead))
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-14)
    assert before.abs().max() > 1e-3  # the logits are not trivially zero


def test_a_pruned_networks_measures_equal_a_network_built_at_the_kept_widths():
    cfg, _, data, net = _lenet()
    sesnn.remove_stochastic_units(net, [[0], [2, 5], [1, 4, 6, 9]])
    assert net.widths == (3, 4, 8)
    assert net.stochastic[1].log_scale.in_channels == 3 and net.stochastic[2].log_scale.in_features == 4 * 16
    small = sesnn.build_compression_net(cfg, data, (3, 4, 8), "cpu")
    x = data.x_test[:1]
    for measure in (pruning.multiplications, pruning.feature_map_size):
        assert measure(net.deployed(), x) == measure(small.deployed(), x)
    assert pruning.weight_count(net.deployed()) == pruning.weight_count(small.deployed())
    assert (pruning.multiplications(net.deployed(), x), pruning.weight_count(net.deployed()),
            pruning.feature_map_size(net.deployed(), x)) == _lenet_counts(3, 4, 8)


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_cifar100"])
def test_a_pruned_vgg_equals_one_built_at_the_kept_widths(arch):
    """BatchNorm on mu, five pools, the last conv's channels into the flatten (or the classifier)."""
    widths = tuple(3 + i % 4 for i in range(len(sesnn.PruneConfig(arch=arch).hidden_widths)))
    torch.manual_seed(0)
    net = sesnn.CompressionNet(arch, widths, 3, 32, 10, 1e-6, True)
    removals = [[0] if k in (0, 6, len(widths) - 1, len(widths) - 3) else [] for k in range(len(widths))]
    removals[len(widths) - 2] = [1, 2]
    sesnn.remove_stochastic_units(net, removals)
    kept = tuple(w - len(r) for w, r in zip(widths, removals))
    assert net.widths == kept
    small = sesnn.CompressionNet(arch, kept, 3, 32, 10, 1e-6, True)
    x = torch.rand(2, 3, 32, 32)
    assert all(m.norm.num_features == w for m, w in zip(net.stochastic, kept) if isinstance(m.norm, nn.BatchNorm2d))
    assert pruning.multiplications(net.deployed(), x) == pruning.multiplications(small.deployed(), x)
    assert pruning.weight_count(net.deployed()) == pruning.weight_count(small.deployed())
    net.set_noise(True, torch.Generator().manual_seed(0))
    assert net(x).shape == (2, 10)  # the sigma predictors were resized with their mu


def test_the_unit_of_highest_mean_log_sigma_goes_first():
    """Hand-made entropies: sigma predictors with zero weights and chosen biases give every unit a
    constant log sigma = log(softplus(bias) + floor); the ranking removes the largest ones first,
    across layers, leaving one unit per layer."""
    _, _, data, net = _lenet()
    biases = ([0.0, 3.0, -1.0, 0.5], [2.0, -2.0, 4.0, 1.0, 0.1, -0.5], [float(v) for v in range(-6, 6)])
    with torch.no_grad():
        for m, b in zip(net.stochastic, biases):
            m.log_scale.weight.zero_()
            m.log_scale.bias.copy_(torch.tensor(b))
    _, scores = sesnn.unit_statistics(net, data.x_train, 32)
    for s, b in zip(scores, biases):
        want = torch.log(F.softplus(torch.tensor(b, dtype=torch.float64)) + 1e-6)
        torch.testing.assert_close(s, want, rtol=1e-6, atol=1e-6)
    assert pruning.least_important(scores, 1) == [[], [], [11]]  # bias 5
    assert pruning.least_important(scores, 3) == [[], [2], [10, 11]]  # 5, 4 (layer 2), 4 (layer 3)
    assert pruning.least_important(scores, 5) == [[1], [2], [9, 10, 11]]  # then 3, 3: layer 1 first on a tie


def _pipeline(**fields):
    cfg, ecfg = sesnn.prune_preset_configs("smoke", {"max_rounds": 4, "prune_per_step": 2} | fields)
    return cfg, ecfg, sesnn.load_data(cfg)


def test_a_pipeline_resumed_from_its_checkpoints_ends_as_one_run_straight_through(one_thread):
    cfg, _, data = _pipeline()
    states = []
    whole = sesnn.train_prune(cfg, data, callback=lambda p: states.append((p.epoch, p.metrics, p.state())))
    assert whole.columns["stop_reason"] == "max_rounds" and whole.columns["prune_rounds"] == 4
    assert [e for e, _, _ in states] == [1, 2, 3, 4, 5, 6]  # two training epochs, then one per round
    units = [m["units"] for _, m, _ in states]
    assert units[0] == units[1] == 22 and units[2:] == sorted(units[2:], reverse=True) and units[-1] < units[2]
    assert units[-1] == sum(whole.model.pruned.widths)
    for epoch, _, state in (states[0], states[3]):  # mid-training, and mid-pruning after round 2
        state = torch.load(_saved(state), weights_only=True)  # what a trial's checkpoint holds
        resumed = sesnn.train_prune(cfg, data, state=state)
        assert resumed.model.pruned.widths == whole.model.pruned.widths, epoch
        assert resumed.columns["params_digest"] == whole.columns["params_digest"], epoch
        assert resumed.columns == whole.columns | {"device_name": resumed.columns["device_name"]}


def _saved(state: dict):
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_the_pipeline_keeps_the_last_network_within_the_error_budget(one_thread):
    """Budget 0 on the held-out images: the first round that costs accuracy is undone and ends
    the pipeline; every kept round stayed within it."""
    cfg, ecfg, data = _pipeline(error_budget=0.0, max_rounds=0, prune_per_step=3, val_size=40, epochs=6,
                                train_limit=30)
    res = sesnn.train_prune(cfg, data)
    c = res.columns
    assert c["stop_reason"] in ("budget", "one_unit_per_layer")
    assert (res.artefacts["prune_budget_accuracy"] >= c["budget_accuracy_start"]).all()
    assert c["budget_accuracy_end"] >= c["budget_accuracy_start"] and c["budget_images"] == 40
    assert c["units_left"] == sum(res.model.pruned.widths) == c["units_trained"] - c["units_batch_pruned"] \
        - c["units_removed_iteratively"]
    rows = sesnn.evaluate_prune(res.model, data, [{"stage": s} for s in sesnn.PRUNE_STAGES], cfg, ecfg)
    trained, batch, pruned = rows
    assert trained["size_pct"] == trained["memory_pct"] == 100.0 and trained["architecture"] == "4-6-12-10"
    assert pruned["architecture"] == sesnn.architecture(res.model.pruned.widths, 10)
    assert pruned["mflops"] == pytest.approx(_lenet_counts(*res.model.pruned.widths)[0] / 1e6)
    assert pruned["size_pct"] == pytest.approx(100 * _lenet_counts(*res.model.pruned.widths)[1]
                                               / _lenet_counts(4, 6, 12)[1])
    assert pruned["error"] == pytest.approx(1 - pruned["accuracy"])


def test_a_drop_of_exactly_the_budget_is_allowed_and_one_image_more_is_not():
    # 0.972 - 0.962 is 5 of 500 images, the 1-point budget; in floats it is 0.010000000000000009
    assert 0.972 - 0.962 > 0.01 and not sesnn.over_budget(0.972, 0.962, 0.01)
    assert sesnn.over_budget(0.972, 0.960, 0.01) and not sesnn.over_budget(0.9, 0.95, 0.0)


def test_fine_tuning_recovers_what_a_removal_cost_where_the_old_settings_did_not(one_thread):
    """Half of conv1 removed from a trained LeNet-5 costs accuracy; the default fine-tuning (SGD,
    50 steps, recovery chunks up to 500) brings it back within the budget on the held-out images.
    The settings before (a fresh Adam at 1e-4 for 20 steps, no recovery) stay over it."""
    cfg, _, data = _pipeline(widths=(6, 8, 32), train_limit=600, val_size=200, epochs=5, batch_size=32,
                             error_budget=0.03, **{f: getattr(sesnn.PruneConfig(), f) for f in
                                                  ("finetune_steps", "finetune_lr", "recovery_steps")})
    fit, val = sesnn._split(cfg, len(data.x_train))
    x, y, xv, yv = data.x_train[fit], data.y_train[fit], data.x_train[val], data.y_train[val]
    torch.manual_seed(0)
    net = sesnn.build_compression_net(cfg, data, cfg.hidden_widths, "cpu")
    gen = torch.Generator().manual_seed(1)
    net.set_noise(True, gen)
    train_supervised(net, x, y, seed=0, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     batch_loss=sesnn.prune_loss(cfg), generators={"snn_rng": gen})
    base = sesnn._accuracy(net, xv, yv, 1000)
    assert base > 0.8
    sesnn.remove_stochastic_units(net, [[0, 1, 2], [], []])
    cut = sesnn._accuracy(net, xv, yv, 1000)
    assert sesnn.over_budget(base, cut, cfg.error_budget)  # the removal costs more than the budget
    results = {}
    for name, fields in (("old", {"finetune_optimizer": "adam", "finetune_lr": 1e-4, "finetune_steps": 20,
                                  "recovery_steps": 0}), ("new", {})):
        tuned = copy.deepcopy(net)
        results[name] = sesnn.finetune(tuned, x, y, xv, yv, dataclasses.replace(cfg, **fields), base, 0)[:2]
    assert sesnn.over_budget(base, results["old"][0], cfg.error_budget) and results["old"][1] == 20
    accuracy, steps = results["new"]
    assert not sesnn.over_budget(base, accuracy, cfg.error_budget), (base, cut, results)
    assert steps % 50 == 0 and 50 <= steps <= 500


@pytest.mark.parametrize("fields, message", [
    ({"widths": (4, 6)}, "widths=(4, 6) is not allowed; allowed: () or 3 integers"),
    ({"arch": "resnet"}, "arch='resnet'"),
    ({"error_budget": -0.1}, "error_budget"),
    ({"budget_data": "train"}, "budget_data='train'"),
    ({"prune_per_step": 0}, "prune_per_step"),
])
def test_bad_pruning_fields_are_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sesnn.prune_preset_configs("smoke", fields)


def test_a_held_out_set_as_large_as_the_training_set_and_a_bad_image_size_are_refused_before_training():
    cfg, _, data = _pipeline(val_size=80)
    with pytest.raises(ConfigError, match="val_size=80 leaves no training images of 80"):
        sesnn.train_prune(cfg, data)
    cfg, _, data = _pipeline(image_size=12)
    with pytest.raises(ConfigError, match="arch='lenet5' cannot take image_size=12"):
        sesnn.train_prune(cfg, data)


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


def test_the_number_of_stochastic_layers_changes_the_network_and_each_row_says_which():
    """App. B.3: 0 SL is the Baseline (no stochastic layer), 1 SL the penultimate layer, 2 SL both;
    trained from one seed, the three networks' parameters differ."""
    from search_spaces import sesnn as spaces
    from trainables.common import config_row
    space = spaces.layers_sesnn("smoke")
    got = {}
    for point in space.train:
        cfg, _ = sesnn.preset_configs("smoke", space.fixed | point | {"epochs": 1})
        res = sesnn.train(cfg, sesnn.load_data(cfg))
        got[space.label(point)] = ([type(m).__name__ for m in res.model.hidden], res.columns["params_digest"],
                                   config_row(cfg)["stochastic_layers"])
    assert got["0 SL (Baseline)"][0] == ["Linear", "ParallelLinear"]
    assert got["1 SL"][0] == ["Linear", "StochasticLinear"]
    assert got["2 SL (SE-SNN)"][0] == ["StochasticLinear", "StochasticLinear"]
    assert len({v[1] for v in got.values()}) == 3
    assert [v[2] for v in got.values()] == ["[]", "[1]", "[0, 1]"]
    assert len(spaces.layers_sesnn("paper").train) == 3 * 6


def test_cw_l2_is_a_test_setting_of_every_defence_trial():
    from search_spaces import sesnn as spaces
    for preset in ("paper", "quick", "smoke"):
        space = spaces.adversarial_sesnn(preset)
        assert all({"attack": "cw_l2", "eps": 0.0} in space.tests(p) for p in space.train)
        _, ecfg = sesnn.preset_configs(preset, space.fixed)
        assert ecfg.cw_images == {"paper": 1000, "quick": 100, "smoke": 20}[preset]


def test_every_grid_point_gets_its_label_from_the_search_spaces_dicts():
    """search_spaces/sesnn.py is the one source of the method labels: Space(label=...) names each
    point from LABEL_NOISE_METHODS / DEFENCE_METHODS, and the claims of analysis/sesnn.py name
    only labels it gives (analysis keeps no (model, loss) -> label table of its own)."""
    from analysis import sesnn as analysis
    from search_spaces import sesnn as spaces
    for make, methods in ((spaces.labelnoise_sesnn, spaces.LABEL_NOISE_METHODS),
                          (spaces.adversarial_sesnn, spaces.DEFENCE_METHODS),
                          (spaces.margin_sesnn, {"SE-SNN": spaces.LABEL_NOISE_METHODS["SE-SNN"]})):
        for preset in ("paper", "quick", "smoke"):
            space = make(preset)
            assert space.label is not None
            for point in space.train:
                name = space.label(point | {"seed": 0})
                assert name in methods, (preset, point)
                cfg = sesnn.SESNNConfig(**{k: v for k, v in point.items() if k in ("model", "loss", "omega")})
                assert all(getattr(cfg, k) == v for k, v in methods[name].items())
                rivals = [m for m, f in methods.items() if m != name and all(getattr(cfg, k) == v for k, v in f.items())]
                assert all(len(methods[m]) < len(methods[name]) for m in rivals), (name, rivals)  # the most specific
    assert spaces.margin_sesnn("quick").label({"model": "sesnn", "label_noise": 0.4}) == "SE-SNN"  # loss: default ce
    given = set(spaces.LABEL_NOISE_METHODS) | set(spaces.DEFENCE_METHODS)
    assert {analysis.SESNN, analysis.SESNN_FORWARD, analysis.BASELINE, analysis.FORWARD, analysis.VIB} <= given
    assert set(analysis.ANCHORS) <= given and not hasattr(analysis, "LABELS")


def test_the_pruning_experiment_runs_both_arms_on_the_papers_networks_with_labels_from_its_arms():
    from analysis import sesnn as analysis
    from search_spaces import sesnn as spaces
    paper = spaces.prune_sesnn("paper")
    assert {(p["arch"], p["dataset"]) for p in paper.train} == {("lenet5", "mnist"), ("vgg16", "cifar10"),
                                                                ("vgg16_cifar100", "cifar100")}
    for preset in ("paper", "quick", "smoke"):
        space = spaces.prune_sesnn(preset)
        assert sorted(space.label(p) for p in space.train) == sorted(list(spaces.PRUNE_ARMS) * len(spaces.PRUNE_NETS[preset]))
        assert space.tests(space.train[0]) == [{"stage": s} for s in sesnn.PRUNE_STAGES]
    assert {p["omega"] for p in paper.train} == {1e-4, 0.0}
    assert {analysis.SESNN, analysis.BASELINE_PRUNE} == set(spaces.PRUNE_ARMS)
    cfg, _ = sesnn.prune_preset_configs("paper")
    assert (cfg.omega, cfg.margin, cfg.prune_per_step, cfg.hidden_widths) == (1e-4, math.log(4), 1, (20, 50, 500))


def _mlp_pipeline(**fields):
    """App. B.2's pipeline on the smoke preset: the label-noise MLP at 16-16."""
    cfg, ecfg = sesnn.prune_preset_configs("smoke", {"arch": "mlp", "widths": (16, 16), "max_rounds": 2,
                                                     "prune_per_step": 2, "val_size": 16} | fields)
    return cfg, ecfg, sesnn.load_data(cfg)


def _recording_training(monkeypatch) -> list:
    """Record, per call of the supervised loop in the pruning code, its labels and whether the
    network's stochastic layers sample."""
    seen, real = [], sesnn.train_supervised

    def spy(net, x, y, **kw):
        seen.append((y.clone(), [m.sample for m in net.stochastic]))
        return real(net, x, y, **kw)
    monkeypatch.setattr(sesnn, "train_supervised", spy)
    return seen


def test_app_b2_trains_and_fine_tunes_on_the_noisy_labels_and_tests_on_clean_ones(one_thread, monkeypatch):
    from trainables.label_noise import noisy_labels
    cfg, ecfg, data = _mlp_pipeline(label_noise=0.4, omega=1e-2, aggregation="sample")
    seen = _recording_training(monkeypatch)
    res = sesnn.train_prune(cfg, data)
    noisy, flipped, _ = noisy_labels(data.y_train, data.num_classes, 0.4, cfg.seed)
    fit, _ = sesnn._split(cfg, len(data.x_train))
    assert flipped.any() and not torch.equal(noisy[fit], data.y_train[fit])
    assert all(torch.equal(y, noisy[fit]) for y, _ in seen) and len(seen) >= 3  # training, then each round
    assert all(all(sampled) for _, sampled in seen)
    assert res.columns["label_noise_realised"] == pytest.approx(float(flipped.float().mean()))
    assert res.columns["stop_reason"] == "max_rounds" and res.columns["prune_rounds"] == 2
    rows = sesnn.evaluate_prune(res.model, data, [{"stage": s} for s in sesnn.PRUNE_STAGES], cfg, ecfg)
    assert rows[0]["architecture"] == "784-16-16-10"  # an MLP's string starts with its inputs, as 145-26-15-10
    assert rows[2]["architecture"] == sesnn.architecture(res.model.pruned.widths, 10, 784)
    hits = (res.model.trained.deployed()(data.x_test).argmax(1) == data.y_test).float().mean()
    assert rows[0]["accuracy"] == pytest.approx(float(hits))  # the clean test labels


def test_app_b2_baseline_never_samples_and_keeps_its_network_after_the_never_active_units(one_thread, monkeypatch):
    cfg, ecfg, data = _mlp_pipeline(label_noise=0.4, model="deterministic", omega=0.0)
    seen = _recording_training(monkeypatch)
    res = sesnn.train_prune(cfg, data)
    assert len(seen) == 1 and not any(seen[0][1])  # trained once, mu only; no fine-tuning rounds
    assert res.columns["stop_reason"] == "deterministic" and res.columns["prune_rounds"] == 0
    assert res.model.pruned.widths == res.model.batch_pruned.widths
    with pytest.raises(ConfigError, match=re.escape("omega=0.0001 is not allowed with model='deterministic'")):
        sesnn.prune_preset_configs("smoke", {"model": "deterministic"})


@pytest.mark.parametrize("aggregation", ["neuron", "sample", "both"])
def test_the_pruning_regulariser_is_eq_5_6_or_7_as_the_reference_computes_it(aggregation):
    """omega * sum over layers of Eq. 5/6/7 from the slow reference, at a margin inside the spread of
    log sigma so that the three aggregations differ (they are one loss where every term is active)."""
    cfg, _, data = _mlp_pipeline(aggregation=aggregation, omega=0.5)
    torch.manual_seed(0)
    net = sesnn.build_compression_net(cfg, data, (6, 5), "cpu")
    with torch.no_grad():
        for m in net.stochastic:
            m.log_scale.weight.mul_(20)  # a wide spread of sigma over samples and units
    net.set_noise(False, None)
    net(data.x_train[:7])
    log_sigmas = [torch.log(m.last[1]).detach().double() for m in net.stochastic]
    b = float(torch.cat([ls.flatten() for ls in log_sigmas]).median())
    got = sesnn.prune_regulariser(net, dataclasses.replace(cfg, margin=b))
    want = 0.5 * sum(ref.omega(ls, b, aggregation) for ls in log_sigmas)
    assert float(got) == pytest.approx(want, rel=1e-5)
    others = {a: 0.5 * sum(ref.omega(ls, b, a) for ls in log_sigmas) for a in ("neuron", "sample", "both")}
    assert len({round(v, 9) for v in others.values()}) == 3  # the setting changes the loss here


def test_the_app_b2_experiment_runs_the_baseline_and_the_label_noise_se_snn_on_the_mlp():
    from search_spaces import sesnn as spaces
    for preset in ("paper", "quick", "smoke"):
        space = spaces.prune_labelnoise_sesnn(preset)
        labels = [space.label(p) for p in space.train]
        assert labels[:2] == ["Baseline", "SE-SNN"] and len(set(labels)) == len(labels)
        cfg, _ = sesnn.prune_preset_configs(preset, space.fixed | space.train[1])
        assert (cfg.arch, cfg.label_noise, cfg.model, cfg.omega, cfg.aggregation, cfg.prune_per_step) == (
            "mlp", 0.4, "sesnn", 1e-2, "sample", 1)
        base, _ = sesnn.prune_preset_configs(preset, space.fixed | space.train[0])
        assert (base.model, base.omega) == ("deterministic", 0.0)
    assert sesnn.prune_preset_configs("quick", spaces.prune_labelnoise_sesnn("quick").fixed)[0].epochs == 60


# ---------------------------------------------------------------------------------------------
# Analysis on fabricated frames: each claim under the one verdict rule (analysis/stats.py)


def _rows(label: str, model: str, loss: str, setting: dict, accs: list[float], **common):
    """Rows of one fabricated arm: its accuracy per seed (seeds 0, 1, ...) at one setting."""
    import pandas as pd
    return pd.DataFrame([{"family": "sesnn", "method": "sesnn", "status": "ok", "label": label, "model": model,
                          "loss": loss, "label_noise": 0.0, "adv_train_eps": 0.0, "attack": "none", "eps": 0.0,
                          "hidden": "[128, 128]", "omega": 0.01, "margin": math.log(4), "test_mode": "sample",
                          "dataset": "digits", "image_size": 8, "channels": 1, "num_classes": 10, "seed": seed,
                          "accuracy": acc, "loss_tail_share": 0.005, "initial_loss": 2.3, "final_loss": 0.5,
                          "transition_error": 0.03 if loss == "forward" else float("nan"),
                          "log_sigma_flipped": -1.6, "log_sigma_kept": -1.6}
                         | common | setting | {"trial_key": f"{label}-{setting}-{seed}"}
                         for seed, acc in enumerate(accs)])


def _spread(mean: float, t: float) -> list[float]:
    """Three paired differences with this mean and t statistic (sd = mean * sqrt(3) / t)."""
    c = mean * math.sqrt(3) / t
    return [mean - c, mean, mean + c]


BASE = [0.60, 0.70, 0.80]  # seed effects shared by the arms: pairing removes them


def _label_noise_frame(forward_at_20: list[float]):
    import pandas as pd
    arms = {}
    for p, arm in ((0.2, {"SE-SNN": [0.0] * 3, "Forward": forward_at_20}),
                   (0.4, {"SE-SNN": [0.06, 0.065, 0.062], "Baseline": [0.0] * 3,
                          "SE-SNN+Forward": _spread(0.023, 2.0), "Forward": [0.0] * 3})):
        for label, diffs in arm.items():
            model = "sesnn" if "SE-SNN" in label else "deterministic"
            loss = "forward" if "Forward" in label else "ce"
            arms[(label, model, loss, p)] = [b + x for b, x in zip(BASE, diffs)]
    return pd.concat([_rows(*k[:3], {"label_noise": k[3]}, v) for k, v in arms.items()], ignore_index=True)


def _finding(found: list[str], words: str) -> str:
    hits = [f for f in found if words in f]
    assert len(hits) == 1, (words, found)
    return hits[0]


def test_label_noise_claims_follow_the_one_verdict_rule():
    from analysis import sesnn as analysis
    # At 20% Forward leads SE-SNN by 3.3 points at t = 3.3 (the committed quick run: +3.3 ± 1.0,
    # p = 0.08 against zero): the old rule called "SE-SNN matches Forward" decided (does not hold);
    # as non-inferiority within one point it is undecided (interval [-7.6, +1.0]).
    d = _label_noise_frame([-x for x in _spread(-0.033, 3.3)])
    found = analysis.label_noise_findings(d)
    beats = _finding(found, "SE-SNN beats Baseline under 40%")
    assert beats.endswith("holds (the interval excludes zero in the claimed direction).") and "95% CI" in beats
    assert "the paper" not in beats  # digits at 8 px: not the paper's protocol
    mnist = analysis.label_noise_findings(d.assign(dataset="mnist5k", image_size=28))
    beats = _finding(mnist, "SE-SNN beats Baseline under 40%")
    assert "the paper: 95.17% vs 81.04% on MNIST (ours on dataset=mnist5k: a 5,000-image subset" in beats
    table = analysis.label_noise_table(d.assign(dataset="mnist5k", image_size=28))
    assert "(paper 95.17)" in table.loc["SE-SNN", "40%"]
    # A 3-seed t = 2 effect (the old rule: holds at exactly 2 SEM) is undecided, with seeds to decide it.
    plus = _finding(found, "SE-SNN+Forward beats Forward under 40%")
    assert ": undecided (the interval includes zero; about" in plus
    at20 = _finding(found, "SE-SNN matches or beats Forward at 20%")
    assert "not worse by more than 1 point (non-inferiority)" in at20 and "p = 0.148" in at20  # against -1 point
    assert ": undecided (the interval reaches below -1 points" in at20
    # Non-inferiority: a tight loss of 0.3 points holds within one point...
    tight = analysis.label_noise_findings(_label_noise_frame([0.003, 0.0035, 0.0025]))
    assert ": holds (lower end" in _finding(tight, "SE-SNN matches or beats Forward at 20%")
    # ...a noisy difference near zero is not evidence of "matches" (the old rule said "holds (not
    # worse beyond 2 SEM)")...
    noisy = analysis.label_noise_findings(_label_noise_frame([0.03, -0.02, -0.005]))
    assert ": undecided" in _finding(noisy, "SE-SNN matches or beats Forward at 20%")
    # ...and the margin is a parameter, stated in the sentence.
    strict = analysis.label_noise_findings(_label_noise_frame([0.003, 0.0035, 0.0025]), margin=0.001)
    line = _finding(strict, "SE-SNN matches or beats Forward at 20%")
    assert "not worse by more than 0.1 points" in line and ": does not hold" in line
    assert "Forward beats SE-SNN at 40% (above 20%" in " ".join(found)


def test_the_entropy_claim_is_in_log_sigma_units_and_a_blocked_run_is_undecided():
    from analysis import sesnn as analysis
    d = _label_noise_frame([0.0] * 3)
    sesnn_40 = (d["label"] == "SE-SNN") & (d["label_noise"] == 0.4)
    d.loc[sesnn_40, "log_sigma_flipped"] = -1.6 + np.array([0.10, 0.11, 0.12])
    line = _finding(analysis.label_noise_findings(d), "SE-SNN gives flipped training samples higher entropy (Eq. 6) "
                                                      "at 40%")
    assert "= +0.11, 95% CI [+0.09, +0.13]" in line and "points" not in line
    assert line.endswith("holds (the interval excludes zero in the claimed direction).")
    d.loc[d["label"] == "Baseline", "loss_tail_share"] = 0.05  # the Baseline did not converge
    beats = _finding(analysis.label_noise_findings(d), "SE-SNN beats Baseline under 40%")
    assert ": undecided (not converged: the last 20% of epochs still gave up to 5.0%" in beats


def _defence_frame():
    """Normal training; SE-SNN against Baseline and Deep VIB at eps 0.1 ... 0.5: a clear paired lead
    at 0.1 and 0.2, t = 2 at 0.3, a clear loss at 0.4, both below chance at 0.5."""
    import pandas as pd
    lead = {0.1: [0.12, 0.13, 0.125], 0.2: [0.05, 0.06, 0.055], 0.3: _spread(0.04, 2.0), 0.4: [-0.05, -0.06, -0.055]}
    parts = []
    for label, model in (("Baseline", "deterministic"), ("Deep VIB", "vib"), ("SE-SNN", "sesnn")):
        for attack, eps in [("none", 0.0)] + [("fgsm", e) for e in (0.1, 0.2, 0.3, 0.4, 0.5)]:
            if eps == 0.5:
                accs = [0.02, 0.03, 0.04] if label == "SE-SNN" else [0.0, 0.01, 0.0]
            else:
                accs = [b * (0.5 if eps else 1.2) + (lead[eps][i] if label == "SE-SNN" and eps else 0.0)
                        for i, b in enumerate(BASE)]
            parts.append(_rows(label, model, "ce", {"attack": attack, "eps": eps}, accs,
                               hidden="[1024, 1024, 256]", omega=0.1, margin=math.log(16)))
    return pd.concat(parts, ignore_index=True)


def test_the_defence_is_tested_per_eps_never_on_a_band_average(tmp_path):
    from analysis import sesnn as analysis
    d = _defence_frame()
    found = analysis.defence_findings(d)
    assert not [f for f in found if "eps <" in f or "eps >=" in f or "mean over those eps" in f]
    vb = lambda eps: _finding(found, f"SE-SNN beats Baseline under FGS at eps {eps} (")
    assert vb(0.1).endswith("holds (the interval excludes zero in the claimed direction).")
    assert ": undecided (the interval includes zero" in vb(0.3)  # t = 2 over 3 seeds
    assert ": does not hold" in vb(0.4)
    assert ": undecided (both at or below chance (10%)" in vb(0.5)
    summary = _finding(found, "SE-SNN against Baseline over the FGS strengths")
    assert "holds at eps 0.1, 0.2" in summary and "does not hold at eps 0.4" in summary
    assert "undecided at eps 0.3, 0.5" in summary
    # The per-eps accuracy table: rows (training, method), columns clean then each eps.
    t = analysis.defence_table(d)
    assert list(t.columns) == ["training", "method", "clean", "eps 0.1", "eps 0.2", "eps 0.3", "eps 0.4", "eps 0.5"]
    assert list(t["method"]) == ["Baseline", "Deep VIB", "SE-SNN"] and set(t["training"]) == {"normal training"}
    assert t.set_index("method").loc["Baseline", "eps 0.5"] == "0.33 ± 0.33 (n=3) [at chance]"  # below 10%: flagged
    # The paired difference per eps, with its interval and verdict: 5 eps x 2 rivals.
    diff = analysis.defence_difference_table(d)
    assert len(diff) == 10 and {"95% CI", "p", "verdict"} <= set(diff.columns)
    row = diff[(diff["SE-SNN - rival"] == "SE-SNN - Baseline") & (diff["eps"] == "0.1")].iloc[0]
    assert row["difference (points)"] == "+12.50" and row["verdict"].startswith("holds")
    captions = [c for c, _ in analysis.section(d, tmp_path)["tables"]]
    assert any("per eps" in c for c in captions) and any("one verdict per eps" in c for c in captions)


def test_cw_l2_rows_get_their_table_and_a_verdict_per_training(tmp_path):
    import pandas as pd
    from analysis import sesnn as analysis
    parts = [_defence_frame()]
    for label, model, lead in (("Baseline", "deterministic", 0.0), ("Deep VIB", "vib", 0.02), ("SE-SNN", "sesnn", 0.1)):
        parts.append(_rows(label, model, "ce", {"attack": "cw_l2", "eps": 0.0},
                           [0.1 * b + lead + 0.001 * i for i, b in enumerate(BASE)], hidden="[1024, 1024, 256]",
                           omega=0.1, margin=math.log(16), test_images=100, attack_success_rate=0.9 - lead,
                           mean_l2=1.0 + 10 * lead))
    d = pd.concat(parts, ignore_index=True)
    t = analysis.cw_table(d).set_index("method")
    assert list(t.index) == ["Baseline", "Deep VIB", "SE-SNN"] and (t["images attacked"] == 100).all()
    assert t.loc["SE-SNN", "success rate %"] == "80.00 ± 0.00"
    assert t.loc["SE-SNN", "mean L2 of successes"] == "2.000 ± 0.000"
    assert "CW-L2" in analysis.defence_table(d).columns
    assert not [c for c in analysis.defence_comparisons(d) if c["eps"] == 0.0]  # FGS verdicts stay FGS'
    found = analysis.cw_findings(d)
    assert _finding(found, "SE-SNN beats Baseline under CW-L2?").endswith(
        "holds (the interval excludes zero in the claimed direction).")
    assert "Baseline accuracy under CW-L2" in _finding(found, "fails completely")
    captions = [c for c, _ in analysis.section(d, tmp_path)["tables"]]
    (cw,) = [c for c in captions if c.startswith("Untargeted CW-L2")]
    assert "drew fresh noise" in cw and "is the attack failing" in cw  # rows without eot_fixed_draws
    d.loc[d["attack"] == "cw_l2", "eot_fixed_draws"] = True
    (cw,) = [c for c, _ in analysis.cw_and_layer_tables(d) if c.startswith("Untargeted CW-L2")]
    assert "the same eot_draws draws" in cw and "fresh noise" not in cw
    d.loc[d.index[d["attack"] == "cw_l2"][0], "eot_fixed_draws"] = False  # one seed attacked on fresh draws
    (cw,) = [c for c, _ in analysis.cw_and_layer_tables(d) if c.startswith("Untargeted CW-L2")]
    assert "drew fresh noise" in cw


def _layers_frame():
    import pandas as pd
    parts = []
    for label, model, which, lead in (("0 SL (Baseline)", "deterministic", "[]", 0.0), ("1 SL", "sesnn", "[1]", 0.05),
                                      ("2 SL (SE-SNN)", "sesnn", "[0, 1]", 0.051)):
        for p in (0.0, 0.4):
            parts.append(_rows(label, model, "ce", {"label_noise": p},
                               [b + (lead if p else 0.0) + 0.002 * i * (lead > 0.0505) for i, b in enumerate(BASE)],
                               stochastic_layers=which))
    return pd.concat(parts, ignore_index=True)


def test_the_number_of_stochastic_layers_gets_a_table_curves_and_a_verdict_per_step(tmp_path):
    from analysis import sesnn as analysis
    d = _layers_frame()
    t = analysis.layers_table(d)
    assert list(t.index) == ["0 stochastic layers (Baseline)", "1 stochastic layer (layers [1])",
                             "2 stochastic layers (layers [0, 1])"] and list(t.columns) == ["0%", "40%"]
    found = analysis.layers_findings(d)
    assert len(found) == 2  # 0 -> 1 and 1 -> 2 at the one noisy strength
    assert _finding(found, "1 stochastic layer beat 0 at 40%").endswith(
        "holds (the interval excludes zero in the claimed direction).")
    assert ": undecided" in _finding(found, "2 stochastic layers beat 1 at 40%")
    fig = analysis.layers_curves(d, out=tmp_path / "layers")
    assert set(fig.plotted["stochastic_count"]) == {0, 1, 2}
    assert analysis.layers_rows(_label_noise_frame([0.0] * 3))[0].empty  # no stochastic_layers that differ


def test_the_loss_curves_average_each_methods_per_epoch_losses_over_seeds(tmp_path):
    import pandas as pd
    from analysis import load
    from analysis import sesnn as analysis
    d = _label_noise_frame([0.0] * 3)
    folder = tmp_path / "results"
    folder.mkdir()
    losses = {}
    for r in d.to_dict("records"):
        losses[r["trial_key"]] = np.array([2.0, 1.0, 0.5]) * (1 + r["seed"]) + (r["label"] == "Forward")
        pd.DataFrame([r]).to_parquet(folder / f"part-{r['trial_key']}.parquet")
        np.savez(folder / f"part-{r['trial_key']}.npz", epoch_loss=losses[r["trial_key"]])
    fig = analysis.loss_curves(load(tmp_path), out=tmp_path / "loss")
    s = fig.plotted.set_index(["label_noise", "label", "epoch"])
    assert s.loc[(0.4, "Forward", 1), "mean"] == pytest.approx(2.0 * 2 + 1)  # seeds 0, 1, 2: factors 1, 2, 3
    assert s.loc[(0.4, "SE-SNN", 3), "mean"] == pytest.approx(0.5 * 2) and s.loc[(0.4, "SE-SNN", 3), "count"] == 3
    with pytest.raises(ValueError, match="results folder"):
        analysis.loss_curves(d)


def test_a_larger_margin_is_tested_at_each_omega():
    import pandas as pd
    from analysis import sesnn as analysis
    parts = []
    for omega in (0.1, 0.01):
        for b in (math.log(1), math.log(16)):
            gain = 0.02 if (omega == 0.1 and b > 0) else 0.0
            accs = [x + gain + (0.001 * i if b > 0 else 0) for i, x in enumerate(BASE)]
            parts.append(_rows("SE-SNN", "sesnn", "ce", {"omega": omega, "margin": b, "label_noise": 0.4}, accs))
    found = analysis.margin_findings(pd.concat(parts, ignore_index=True))
    assert ": holds" in _finding(found, "A larger b helps under label noise at omega 0.1?")
    assert ": undecided" in _finding(found, "A larger b helps under label noise at omega 0.01?")
    assert "mean over omega" not in " ".join(found)


def test_eq_6_against_eq_5_and_7_is_tested_per_omega_and_b_and_identical_networks_are_named():
    import pandas as pd
    from analysis import sesnn as analysis
    parts = []
    for omega, gain, active in ((1.0, 0.02, 0.2), (0.01, 0.0, 1.0)):
        for agg in ("sample", "neuron", "both"):
            accs = [x + (gain + 0.001 * i if agg == "sample" and gain else 0.0) for i, x in enumerate(BASE)]
            rows = _rows("SE-SNN", "sesnn", "ce", {"omega": omega, "margin": math.log(4), "label_noise": 0.4,
                                                   "aggregation": agg}, accs,
                         hinge_active_neuron=active, hinge_active_sample=active, hinge_active_both=active)
            rows["params_digest"] = [f"{omega}-{agg if omega == 1.0 else 'same'}-{seed}" for seed in rows["seed"]]
            parts.append(rows)
    d = pd.concat(parts, ignore_index=True)
    found = analysis.aggregation_findings(d)
    binds = _finding(found, "Eq. 6 (per sample) beats Eq. 5 under label noise at omega 1,")
    assert ": holds" in binds and "bit-identical networks on 0 of 3 seeds" in binds
    one_loss = _finding(found, "Eq. 6 (per sample) beats Eq. 7 under label noise at omega 0.01,")
    assert "bit-identical networks on 3 of 3 seeds" in one_loss
    assert ": undecided (the two arms are equal on every seed: the setting changed nothing)" in one_loss
    text = analysis.hinge_text(d[d["omega"] == 0.01])
    assert "Eq. 6 100.0%" in text and "Eq. 5, 6 and 7 are one loss" in text
    assert "one loss" not in analysis.hinge_text(d[d["omega"] == 1.0])
    table = analysis.aggregation_table(d)
    assert set(table["trained with"]) == {"Eq. 5", "Eq. 6", "Eq. 7"} and set(table["b"]) == {"log 4"}


def test_rows_without_a_label_are_named_by_their_fields_and_the_section_says_so():
    from analysis import sesnn as analysis
    d = _label_noise_frame([0.0] * 3)
    old = d.drop(columns="label")
    t = analysis.label_noise_table(old)
    assert "sesnn+ce" in t.index and "SE-SNN" not in t.index
    found = analysis.findings(old)
    assert found[0].startswith("[labels] 18 of 18 rows carry no `label`")
    assert not [f for f in found if "beats Baseline" in f]  # the claims name methods: not tested
    blank = d.assign(label="")  # a trial of a space without label= writes ""
    assert analysis.findings(blank)[0].startswith("[labels] 18 of 18 rows")
    assert not [f for f in analysis.findings(d) if f.startswith("[labels]")]
    # The rows' label is the name shown, whatever it is; a label over two (model, loss) is split.
    renamed = d.assign(label=d["label"].replace({"Baseline": "Plain MLP"}))
    assert "Plain MLP" in analysis.label_noise_table(renamed).index
    mixed = d.copy()
    mixed.loc[(mixed["label"] == "Baseline") & (mixed["seed"] == 0), "loss"] = "bootstrap_soft"
    assert "Baseline (deterministic+bootstrap_soft)" in analysis.label_noise_table(mixed).index


def test_the_analysis_keeps_no_statistics_of_its_own():
    import ast
    tree = ast.parse((REPO / "analysis" / "sesnn.py").read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not {n for n in names if n.endswith(("sem", "msem", "verdict", "interval"))}, names
    assert not {"_cell", "_diff_text", "_paired"} & names
    text = (REPO / "analysis" / "sesnn.py").read_text()
    assert "scipy" not in text and "ddof" not in text and ".sem(" not in text


def _prune_frame(widths: str = "[]", dataset: str = "mnist", se_mflops=(0.06, 0.07, 0.065)):
    """Fabricated sesnn_prune rows: two arms x three stages x three seeds of LeNet-5."""
    import pandas as pd
    rows = []
    for label, omega, pruned in (("SE-SNN", 1e-4, se_mflops), ("Baseline (ω=0)", 0.0, (0.30, 0.28, 0.35))):
        for seed, mf in enumerate(pruned):
            for stage, mflops, arch in (("trained", 2.293, "20-50-500-10"), ("batch_pruned", 1.0, "9-30-400-10"),
                                        ("pruned", mf, "3-12-140-10")):
                rows.append({"family": "sesnn", "method": "sesnn_prune", "status": "ok", "label": label,
                             "arch": "lenet5", "dataset": dataset, "image_size": 28, "channels": 1, "widths": widths,
                             "omega": omega, "margin": math.log(4), "prune_per_step": 1, "seed": seed,
                             "stage": stage, "mflops": mflops, "size_pct": 100 * mflops / 2.293,
                             "memory_pct": 50.0, "error": 0.01 + 0.001 * seed, "architecture": arch,
                             "config_columns": json.dumps(["arch", "dataset", "image_size", "channels", "widths",
                                                           "omega", "margin", "prune_per_step"])})
    return pd.DataFrame(rows)


def _b2_frame(dataset: str = "mnist5k"):
    """Fabricated App. B.2 rows: Baseline and SE-SNN x three stages x three seeds on the MLP."""
    import pandas as pd
    acc = {("Baseline", "trained"): (0.55, 0.56, 0.57), ("SE-SNN", "trained"): (0.600, 0.610, 0.620),
           ("SE-SNN", "pruned"): (0.601, 0.612, 0.6215)}
    rows = []
    for (label, model, omega) in (("Baseline", "deterministic", 0.0), ("SE-SNN", "sesnn", 1e-2)):
        for seed in range(3):
            for stage in sesnn.PRUNE_STAGES:
                a = acc.get((label, stage), acc[(label, "trained")])[seed]
                rows.append({"family": "sesnn", "method": "sesnn_prune", "status": "ok", "label": label,
                             "arch": "mlp", "dataset": dataset, "image_size": 28, "channels": 1, "widths": "[]",
                             "model": model, "omega": omega, "aggregation": "sample", "margin": math.log(4),
                             "label_noise": 0.4, "prune_per_step": 1, "seed": seed, "stage": stage,
                             "accuracy": a, "error": 1 - a, "mflops": 0.1, "size_pct": 100.0 if stage == "trained"
                             else 20.0, "memory_pct": 50.0,
                             "architecture": "784-128-128-10" if stage == "trained" else "784-30-20-10",
                             "config_columns": json.dumps(["arch", "dataset", "image_size", "channels", "widths",
                                                           "model", "omega", "aggregation", "margin", "label_noise",
                                                           "prune_per_step"])})
    return pd.DataFrame(rows)


def test_app_b2_table_and_claims_read_the_stages_of_each_arm():
    from analysis import sesnn as analysis
    caption, t = analysis.b2_table(_b2_frame("digits"))
    assert list(t["method"]) == ["Baseline (unpruned)", "Baseline (never-active units removed)", "Baseline (pruned)",
                                 "SE-SNN (unpruned)", "SE-SNN (never-active units removed)", "SE-SNN (pruned)"]
    assert "no paper numbers: the protocol differs (dataset" in caption and set(t["Paper"]) == {""}
    assert t.set_index("method").loc["SE-SNN (pruned)", "Architecture"] == "784-30-20-10"
    found = analysis.b2_findings(_b2_frame())
    beats = next(f for f in found if "beats the unpruned Baseline" in f)
    assert "pruned SE-SNN - Baseline = +5.15 points" in beats and beats.endswith("holds (the interval excludes "
                                                                              "zero in the claimed direction).")
    keeps = next(f for f in found if "Pruning keeps SE-SNN's accuracy within 1 point" in f)
    assert "pruned - unpruned = +0.15 points" in keeps and ": holds (lower end" in keeps
    caption, paper = analysis.b2_table(_b2_frame("mnist5k"))  # the embedded subset: beside, with its caveat
    assert "the one remaining difference: dataset=mnist5k: a 5,000-image subset" in caption
    assert paper.set_index("method").loc["SE-SNN (pruned)", "Paper"] == "95.2% (145-26-15-10)"
    assert paper.set_index("method").loc["Baseline (unpruned)", "Paper"] == "81.04%"
    assert analysis.b2_table(_prune_frame()) is None  # Tables 1-3's rows are not App. B.2's


def test_the_pruning_progress_figure_draws_each_runs_rounds_from_its_arrays(tmp_path):
    import pandas as pd
    from analysis import load
    from analysis import sesnn as analysis
    d = _prune_frame().assign(trial_key=lambda f: f["label"].map({"SE-SNN": "s", "Baseline (ω=0)": "b"})
                              + f["seed"].astype(str), units_trained=570, units_batch_pruned=100,
                              budget_accuracy_start=0.97, error_budget=0.01, rejected_units=math.nan,
                              rejected_budget_accuracy=math.nan, stop_reason="max_rounds")
    d.loc[d["trial_key"] == "s0", ["rejected_units", "rejected_budget_accuracy", "stop_reason"]] = (450.0, 0.95,
                                                                                                  "budget")
    folder = tmp_path / "results"
    folder.mkdir()
    for key, g in d.groupby("trial_key"):
        g.to_parquet(folder / f"part-{key}.parquet")
        if key != "b2":  # a trial without the arrays is left out, not drawn as empty
            np.savez(folder / f"part-{key}.npz", prune_units=np.array([465.0, 460.0, 455.0]),
                     prune_budget_accuracy=np.array([0.97, 0.965, 0.962 + 0.001 * int(key[1])]))
    fig = analysis.prune_progress(load(tmp_path), out=tmp_path / "progress")
    p = fig.plotted
    assert len(p) == 5 * 4 and set(p.groupby(["label", "seed"]).size()) == {4}
    s0 = p[(p["label"] == "SE-SNN") & (p["seed"] == 0)]
    assert list(s0["units"]) == [470.0, 465.0, 460.0, 455.0] and list(s0["accuracy"]) == [0.97, 0.97, 0.965, 0.962]
    assert (tmp_path / "progress.png").exists()
    assert "cross" in fig.caption and "open circle" in fig.caption
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "SE-SNN, seed 0 (stop: budget)" in legend and "SE-SNN, seed 1 (stop: max_rounds)" in legend
    crosses = [line for ax in fig.axes for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [450.0]
    with pytest.raises(ValueError, match="results folder"):
        analysis.prune_progress(d)
    made, skipped, _ = analysis.draw({"prune_progress": analysis.prune_progress}, _prune_frame(), tmp_path)
    assert made == [] and skipped[0].startswith("prune_progress (no pruning rows with a results folder")


def test_the_compression_table_has_tables_1_3s_columns_and_the_paper_row_only_where_the_protocol_matches():
    from analysis import sesnn as analysis
    ((caption, t),) = analysis.compression_tables(_prune_frame())
    assert list(t.columns) == ["method", *analysis.COMPRESSION_COLUMNS]
    assert list(t["method"])[:3] == ["SE-SNN (pruned)", "SE-SNN (never-active units removed)", "SE-SNN (unpruned)"]
    paper = t[t["method"] == "SE-SNN (paper)"].iloc[0]
    assert (paper["Model size (%)"], paper["FLOPs (Mil)"], paper["Memory (%)"], paper["Error (%)"]) == \
        ("2.35", "0.061", "11.08", "0.9")
    ours = t[t["method"] == "SE-SNN (pruned)"].iloc[0]
    assert ours["FLOPs (Mil)"].startswith("0.065 ±") and ours["Architecture"] == "3-12-140-10"
    assert ours["Error (%)"].startswith("1.10 ±")  # error fractions shown in %
    assert "where the protocol matches" in caption
    ((caption, t),) = analysis.compression_tables(_prune_frame(widths="[4, 6, 12]"))
    assert "SE-SNN (paper)" not in set(t["method"]) and "widths=[4, 6, 12]" in caption
    ((caption, t),) = analysis.compression_tables(_prune_frame(dataset="mnist5k"))
    assert "SE-SNN (paper)" in set(t["method"]) and "5,000-image subset" in caption


def test_what_the_entropy_adds_is_one_verdict_on_flops_paired_over_seeds():
    from analysis import sesnn as analysis
    (found,) = analysis.compression_findings(_prune_frame())
    assert "fewer FLOPs than Baseline (ω=0)" in found and "holds" in found
    (found,) = analysis.compression_findings(_prune_frame(se_mflops=(0.4, 0.2, 0.33)))
    assert "undecided" in found
    assert analysis.compression_findings(_prune_frame().query("label == 'SE-SNN'")) == []


# ---------------------------------------------------------------------------------------------
# End to end: tuner.run, the report, the notebook


@pytest.fixture(scope="module")
def smoke_runs(shared_smoke):
    """Real labelnoise_sesnn (2 seeds: an SEM) and adversarial_sesnn (1 seed) smoke runs through
    the CLI, in one storage folder (tests/conftest.py)."""
    label, adv = shared_smoke("labelnoise_sesnn")[0], shared_smoke("adversarial_sesnn")[0]
    layers = shared_smoke("layers_sesnn")[0]
    assert label.parent == adv.parent == layers.parent
    return label.parent


@pytest.mark.slow
def test_report_of_real_runs_draws_the_curves_table_and_findings(smoke_runs, tmp_path):
    from analysis import load
    from analysis.report import build

    label = load(smoke_runs / "labelnoise_sesnn-smoke")
    assert set(label["loss"]) == {"forward", "ce"} and label["seed"].nunique() == 2
    for run, figures, words in (("labelnoise_sesnn-smoke", {"label_noise_curves", "entropy_of_flipped", "loss_curves"},
                                 "beats Baseline under 40% label noise?"),
                                ("adversarial_sesnn-smoke", {"fgs_curves", "cw_bars"}, "under CW-L2?"),
                                ("layers_sesnn-smoke", {"layers_curves", "loss_curves"}, "[stochastic layers")):
        info = build(smoke_runs / run, tmp_path / run)
        md = (tmp_path / run / "report.md").read_text()
        assert "Stochastic networks with max-entropy regularisation" in md and "Traceback" not in md
        assert figures <= set(info["figures"]), info["skipped"]
        assert words in md


@pytest.mark.slow
def test_notebook_executes_headless_on_a_real_run(smoke_runs):
    out = notebook_output("sesnn", smoke_runs / "labelnoise_sesnn-smoke")
    assert "label noise?" in out


@pytest.mark.slow
def test_notebook_executes_headless_on_the_committed_quick_rows():
    """The default RESULTS: every run under docs/sesnn-quick/rows, pruning and re-identification included."""
    out = notebook_output("sesnn", REPO / "docs" / "sesnn-quick" / "rows")
    assert "Compression of lenet5 on mnist5k" in out and "stop_reason" in out
    assert "Re-identification under similarity label noise" in out and "[re-id]" in out
    assert "stochastic layers" in out and "prune_progress: not drawn" not in out
    assert "App. B.2: pruning while training with label noise" in out and "[App. B.2]" in out
    assert "success rate %" in out and "[CW-L2, normal training" in out


@pytest.mark.slow
def test_report_of_a_real_pruning_run_draws_the_compression_table(shared_smoke, tmp_path):
    from analysis.report import build
    folder = shared_smoke("prune_sesnn")[0]
    build(folder, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Compression of lenet5 on mnist5k" in md and "Traceback" not in md
    assert "| SE-SNN (unpruned) | 100.00 (1 seed) |" in md and "4-6-12-10" in md
    assert "needs fewer FLOPs than Baseline (ω=0)'s" in md

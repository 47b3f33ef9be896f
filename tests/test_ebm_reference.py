"""The fused sampling inference against the slow reference written from the paper's equations
(tests/reference_ebm.py): exactly, when both are fed the same noise tensors; in distribution, for
every law and placement, when each draws its own noise; plus the independence of the noise streams
and a direct check of the n-draw statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tests import reference_ebm as ref
from trainables.data import Data
from trainables.ebm import (PLACEMENTS, Autoencoder, AutoencoderBank, EBMConfig, EvalConfig, NoiseSpec,
                            SamplingEvaluator, _noise_key, evaluate)
from trainables.noise import DISTRIBUTIONS, NoiseParams

pytestmark = pytest.mark.usefixtures("one_thread")
SIDE = 8


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """Each test's own data root: where EvalConfig(path="auto") caches its timed choice."""
    monkeypatch.setenv("NOISETUNE_DATA", str(tmp_path / "data"))


def autoencoders(classes=3, seed=0) -> list[Autoencoder]:
    """Separately built autoencoders, weights spread a little past PyTorch's default init so the
    reconstructions depend on the input (a fresh init is nearly constant)."""
    torch.manual_seed(seed)
    aes = [Autoencoder(1, (30, 73, 100)) for _ in range(classes)]
    with torch.no_grad():
        for p in (p for ae in aes for p in ae.parameters()):
            p.mul_(2.0)
    return aes


def images(count=4, seed=1) -> torch.Tensor:
    return torch.rand(count, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def recorded_noise(monkeypatch) -> list[torch.Tensor]:
    """Every z tensor the fast path draws, in order (class by class, noisy layer by layer)."""
    seen = []
    real = SamplingEvaluator._fill

    def fill(self, z, distribution, gens):
        real(self, z, distribution, gens)
        seen.append(z.detach().clone())

    monkeypatch.setattr(SamplingEvaluator, "_fill", fill)
    return seen


@pytest.mark.parametrize("placement", ["full", "odd", "even", "enc", "dec", "hidden"])
@pytest.mark.parametrize("sharing", ["independent", "common"])
@pytest.mark.parametrize("path", ["fused_bank", "plain_loop"])
def test_fast_energies_equal_the_reference_fed_the_same_noise(monkeypatch, placement, sharing, path):
    aes, x, draws = autoencoders(), images(), 6
    bank = AutoencoderBank.from_autoencoders(aes)
    spec = NoiseSpec("student_t", 0.4, placement, sharing)
    ev = SamplingEvaluator(bank, NoiseParams(), EvalConfig(block_draws=draws), SIDE, path=path)
    seen = recorded_noise(monkeypatch)
    with torch.no_grad():
        fast = ev.energies(x, ev.clean(x), spec, 0, 0, draws).double()
    layers = ref.REFERENCE_PLACEMENTS[placement]
    # One z per (class, noisy layer) when independent; common noise is drawn once for all classes.
    drawn_for = 1 if sharing == "common" else len(aes)
    assert len(seen) == drawn_for * len(layers)

    def shared(c, layer, b, d, shape):  # batch order of one draw block: (image, draw)
        z = seen[(c if drawn_for > 1 else 0) * len(layers) + layers.index(layer)]
        return z.view(len(x) * draws, *shape)[b * draws + d]

    slow = ref.energies(aes, x, placement, spec.alpha, draws, shared)
    torch.testing.assert_close(fast, slow, rtol=2e-5, atol=1e-4)
    if sharing == "independent":
        assert not torch.equal(seen[len(layers)], seen[0])


@pytest.mark.parametrize("distribution, placement", list(itertools.product(DISTRIBUTIONS, PLACEMENTS)))
def test_fast_energies_follow_the_reference_law_for_every_law_and_placement(distribution, placement):
    """Each path with its own noise: the per-draw energies of one (class, image) must come from one
    distribution (two-sample KS) with the same median; 300 draws each."""
    aes, x, draws, alpha = autoencoders(classes=1), images(count=1), 300, 0.3
    bank = AutoencoderBank.from_autoencoders(aes)
    ev = SamplingEvaluator(bank, NoiseParams(), EvalConfig(block_draws=50), SIDE, seed=7)
    with torch.no_grad():
        fast = ev.energies(x, ev.clean(x), NoiseSpec(distribution, alpha, placement), 0, 0, draws)[0, 0].double().numpy()
    slow = ref.energies(aes, x, placement, alpha, draws, ref.law_noise(distribution, seed=11))[0, 0].numpy()
    assert np.std(fast) > 0 and np.std(slow) > 0
    p = stats.ks_2samp(fast, slow).pvalue
    assert p > 1e-4, (distribution, placement, p, np.median(fast), np.median(slow))


def test_a_mis_scaled_alpha_is_caught_by_the_law_check():
    """The check above has power: alpha 10% too large is rejected (the mutation it must catch)."""
    aes, x, draws = autoencoders(classes=1), images(count=1), 300
    ev = SamplingEvaluator(AutoencoderBank.from_autoencoders(aes), NoiseParams(), EvalConfig(block_draws=50), SIDE, seed=7)
    with torch.no_grad():
        fast = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 0.33, "full"), 0, 0, draws)[0, 0].double().numpy()
    slow = ref.energies(aes, x, "full", 0.3, draws, ref.law_noise("gaussian", seed=11))[0, 0].numpy()
    assert stats.ks_2samp(fast, slow).pvalue < 1e-4


def test_every_noise_key_is_its_own_stream():
    """Distinct (setting, image block, draw block, stream) keys give distinct seeds and distinct
    draws: were any part of the key ignored, blocks would reuse noise and n-draw means would lie."""
    specs = [NoiseSpec("gaussian", 0.5), NoiseSpec("gaussian", 0.7), NoiseSpec("cauchy", 0.5, "odd")]
    keys = list(itertools.product(range(len(specs)), range(3), range(3), range(4)))
    seeds = {k: _noise_key(0, specs[k[0]], *k[1:]) for k in keys}
    assert len(set(seeds.values())) == len(keys)
    first = {k: torch.empty(16).normal_(generator=torch.Generator().manual_seed(s)) for k, s in seeds.items()}
    for a, b in itertools.combinations(keys, 2):
        assert not torch.equal(first[a], first[b]), (a, b)
    assert _noise_key(1, specs[0], 0, 0, 0) != _noise_key(0, specs[0], 0, 0, 0)  # the eval seed counts too


def test_blocks_draw_fresh_noise_for_the_same_image():
    """The same image in two image blocks, and two draw blocks of it, see different noise."""
    bank = AutoencoderBank.from_autoencoders(autoencoders())
    ev = SamplingEvaluator(bank, NoiseParams(), EvalConfig(block_draws=5), SIDE)
    x, spec = images(count=1), NoiseSpec("gaussian", 0.5)
    with torch.no_grad():
        e = ev.energies(x, ev.clean(x), spec, 0, 0, 10)  # draw blocks 0 and 1
        other_block = ev.energies(x, ev.clean(x), spec, 1, 0, 5)
    assert not torch.allclose(e[..., :5], e[..., 5:])
    assert not torch.allclose(e[..., :5], other_block)


def test_energy_var_is_the_mean_across_draw_variance_of_the_energies():
    aes, x = autoencoders(), images(count=6)
    bank = AutoencoderBank.from_autoencoders(aes)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    data = Data("reference", x, labels, x, labels, ["a", "b", "c"])
    ecfg = EvalConfig(n_checkpoints=(1, 20), block_images=100, block_draws=20, memory_mb=4096)
    row = next(r for r in evaluate(bank, data, [NoiseSpec("gaussian", 0.5)], EBMConfig(), ecfg) if r["n"] == 20)
    ev = SamplingEvaluator(bank, NoiseParams(), ecfg, SIDE)
    with torch.no_grad():
        e = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 0.5), 0, 0, 20).double()
    assert row["energy_var"] == pytest.approx(float(e.var(-1, unbiased=True).mean(0).mean()), rel=1e-9)
    assert row["energy_mean"] == pytest.approx(float(e.mean(-1).mean(0).mean()), rel=1e-9)
    assert row["accuracy"] == float((e.mean(-1).argmin(0) == data.y_test).double().mean())


def test_predictions_are_each_images_lowest_mean_energy_class_in_test_set_order():
    """Two image blocks (4 + 3 images), so the order of blocks shows; a block's noise is keyed by
    its index, so the reference energies come block by block."""
    aes, x = autoencoders(), images(count=7)
    bank = AutoencoderBank.from_autoencoders(aes)
    labels = torch.tensor([2, 1, 0, 0, 1, 2, 1])
    data = Data("reference", x, labels, x, labels, ["a", "b", "c"])
    spec = NoiseSpec("gaussian", 0.8)
    ecfg = EvalConfig(n_checkpoints=(1, 15), block_images=4, block_draws=5, memory_mb=4096)
    rows = {r["n"]: r for r in evaluate(bank, data, [spec], EBMConfig(), ecfg)}
    ev = SamplingEvaluator(bank, NoiseParams(), ecfg, SIDE)
    with torch.no_grad():
        e = torch.cat([ev.energies(x[lo:lo + 4], ev.clean(x[lo:lo + 4]), spec, block, 0, 15)
                       for block, lo in enumerate((0, 4))], dim=1).double()
    for n in (1, 15):
        want = [min(range(3), key=lambda c: float(e[c, i, :n].mean())) for i in range(7)]
        assert rows[n]["predictions"] == want
        assert rows[n]["labels"] == labels.tolist()
        assert rows[n]["accuracy"] == sum(p == y for p, y in zip(want, labels.tolist())) / 7
    assert rows[1]["predictions"] != rows[15]["predictions"]  # n matters here, so the test can tell n apart


def _gap_stds(e: torch.Tensor) -> list[float]:
    """Per image, written out: the two classes with the lowest mean energy over the n draws, the
    n differences of their energies, and the std of the mean of those differences."""
    stds = []
    for i in range(e.shape[1]):
        means = [float(e[c, i].mean()) for c in range(e.shape[0])]
        best, second = sorted(range(len(means)), key=lambda c: means[c])[:2]
        d = [float(e[best, i, k] - e[second, i, k]) for k in range(e.shape[2])]
        m = sum(d) / len(d)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d)))
    return stds


@pytest.mark.parametrize("sharing", ["independent", "common"])
def test_the_gap_std_is_the_std_of_the_two_best_classes_mean_difference(sharing):
    aes, x = autoencoders(), images(count=7)
    bank = AutoencoderBank.from_autoencoders(aes)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    data = Data("reference", x, labels, x, labels, ["a", "b", "c"])
    spec = NoiseSpec("gaussian", 0.5, "full", sharing)
    ecfg = EvalConfig(n_checkpoints=(1, 12, 30), block_images=100, block_draws=6, memory_mb=4096)
    rows = {r["n"]: r for r in evaluate(bank, data, [spec], EBMConfig(), ecfg)}
    ev = SamplingEvaluator(bank, NoiseParams(), ecfg, SIDE)
    with torch.no_grad():
        e = ev.energies(x, ev.clean(x), spec, 0, 0, 30).double()
    for n in (12, 30):  # 12 ends inside a draw block of 6 x k, 30 at a call's end: both paths of the sums
        assert rows[n]["energy_gap_std_median"] == pytest.approx(float(np.median(_gap_stds(e[..., :n]))), rel=1e-9)
    assert math.isnan(rows[1]["energy_gap_std_median"])


def test_common_noise_shrinks_the_gap_std_below_the_independent_one():
    """Common random numbers: the classes' energies covary, so their difference varies less than
    two independent draws' (whose gap std is about sqrt(2) x a class's mean std)."""
    aes, x = autoencoders(), images(count=40)
    bank = AutoencoderBank.from_autoencoders(aes)
    labels = torch.arange(40) % 3
    data = Data("reference", x, labels, x, labels, ["a", "b", "c"])
    ecfg = EvalConfig(n_checkpoints=(200,), block_images=100, block_draws=50, memory_mb=4096)
    out = {}
    for sharing in ("independent", "common"):
        (row,) = evaluate(bank, data, [NoiseSpec("gaussian", 0.5, "full", sharing)], EBMConfig(), ecfg)
        out[sharing] = row["energy_gap_std_median"] / row["energy_mean_std_median"]
    assert 1.2 < out["independent"] < 1.7, out  # sqrt(2) = 1.41
    assert out["common"] < 0.8 * out["independent"], out


# ---------------------------------------------------------------------------------------------
# Training noise and dropout against closed forms
#
# With the output layer's weights zeroed, its output is act(b) whatever reaches it, so the noise
# or dropout put on layers 1-5 cannot matter and the per-pixel training loss has a closed form:
#   noise at alpha on layer 6:    E[(b + alpha z - x)^2] = (b - x)^2 + alpha^2 E[z^2]
#   dropout at rate c on layer 6: E[(b k / (1 - c) - x)^2] = (b - x)^2 + b^2 c / (1 - c)
#   nothing on layer 6 (hidden):  exactly (b - x)^2


def _constant_output_bank(b: float, channels: int = 1):
    from trainables.ebm import NUM_LAYERS, AutoencoderBank

    bank = AutoencoderBank.initialised(2, channels, (4, 5, 6), seed=0, hidden_activation="relu",
                                       output_activation="identity")
    with torch.no_grad():
        bank.weights[NUM_LAYERS - 1].zero_()
        bank.biases[NUM_LAYERS - 1].fill_(b)
    return bank


def _training_loss(cfg_over: dict, b: float, draws: int) -> tuple[float, float]:
    """(mean over draws of the training forward's per-pixel MSE, the clean (b - x)^2 term)."""
    from trainables.ebm import _to_nhwc, _train_noise, preset_configs
    from trainables.noise import make_generator

    cfg, _ = preset_configs("smoke", cfg_over | {"output_activation": "identity"})
    bank = _constant_output_bank(b)
    x = torch.stack([_to_nhwc(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3 + g)))
                     for g in range(2)])  # (classes, N, H, W, C): the bank's channels-last layout
    perturb = _train_noise(cfg, make_generator(11, "cpu"))
    with torch.no_grad():
        losses = [float(((bank(x, perturb) - x) ** 2).mean()) for _ in range(draws)]
    return float(np.mean(losses)), float(((b - x) ** 2).mean())


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_training_noise_adds_the_analytical_floor_to_the_loss(alpha):
    draws = 200
    loss, residual = _training_loss({"alpha_train": alpha, "placement_train": "full"}, 0.3, draws)
    # the per-draw loss has std about alpha^2 sqrt(2 / pixels); its mean over draws much less
    pixels = 2 * 16 * 64
    tol = 6 * alpha ** 2 * np.sqrt(2 / pixels) / np.sqrt(draws) + 6 * alpha * 0.5 / np.sqrt(pixels * draws)
    assert loss == pytest.approx(residual + alpha ** 2, abs=tol)
    hidden, residual_h = _training_loss({"alpha_train": alpha, "placement_train": "hidden"}, 0.3, 3)
    assert hidden == pytest.approx(residual_h, rel=1e-6)  # no noise reaches the reconstruction


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_keeps_the_expected_activation_on_the_layers_it_covers(rate):
    b, draws = 0.6, 200
    loss, residual = _training_loss({"dropout_rate": rate, "placement_train": "full"}, b, draws)
    # inverted scaling: E[b k / (1 - c)] = b, so only the variance b^2 c / (1 - c) is added
    extra = b ** 2 * rate / (1 - rate)
    pixels = 2 * 16 * 64
    assert loss == pytest.approx(residual + extra, abs=6 * extra * np.sqrt(2 / (pixels * draws)) + 1e-3)
    assert abs(loss - residual) > 0.5 * extra  # the term is measurable at this tolerance
    hidden, residual_h = _training_loss({"dropout_rate": rate, "placement_train": "hidden"}, b, 3)
    assert hidden == pytest.approx(residual_h, rel=1e-6)


@pytest.mark.parametrize("placement", ["full", "odd", "even", "enc", "dec", "hidden"])
def test_training_perturbation_touches_exactly_its_placement(placement):
    from trainables.ebm import NUM_LAYERS, PLACEMENTS, _train_noise, preset_configs
    from trainables.noise import make_generator

    for over in ({"alpha_train": 0.7}, {"dropout_rate": 0.3}):
        cfg, _ = preset_configs("smoke", over | {"placement_train": placement})
        perturb = _train_noise(cfg, make_generator(5, "cpu"))
        for layer in range(1, NUM_LAYERS + 1):
            h = torch.full((2, 4000), 0.5)
            out = perturb(layer, h)
            if layer not in PLACEMENTS[placement]:
                assert torch.equal(out, h), (placement, layer)
                continue
            if "alpha_train" in over:  # h + alpha z: mean h, std alpha
                assert float((out - h).mean()) == pytest.approx(0, abs=0.05)
                assert float((out - h).std()) == pytest.approx(0.7, rel=0.05)
            else:  # inverted dropout: a share c zeroed, the rest scaled by 1/(1-c), mean kept
                assert float((out == 0).float().mean()) == pytest.approx(0.3, abs=0.03)
                assert torch.allclose(out[out != 0], torch.tensor(0.5 / 0.7))
                assert float(out.mean()) == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------------------------------------
# The convergence columns of every row (fairness check (a')): the fixed-noise residual before
# training, at the epoch that starts the last 20% and at the end, written out per class with
# separate modules: the per-pixel MSE of class c's autoencoder on class c's first m training
# images (m = the smallest class), averaged over classes.


def _modules_of(bank) -> list[Autoencoder]:
    aes = []
    for c in range(bank.num_classes):
        ae = Autoencoder(bank.in_channels, bank.hidden)
        with torch.no_grad():
            for layer, (w, b) in zip([*ae.encoder, *ae.decoder], bank.nchw_layers(c)):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        aes.append(ae)
    return aes


def _residual_by_hand(aes, data: Data) -> float:
    m = min(int((data.y_train == c).sum()) for c in range(len(aes)))
    per_class = []
    for c, ae in enumerate(aes):
        x = data.x_train[data.y_train == c][:m]
        with torch.no_grad():
            per_class.append(float(((ae(x) - x) ** 2).mean()))
    return sum(per_class) / len(per_class)


def test_the_convergence_residuals_are_each_class_mse_at_init_at_80_percent_and_at_the_end():
    from trainables.data import DataConfig
    from trainables.ebm import train_bank

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 20 + [1] * 14 + [2] * 17)  # unequal classes: m = 14
    x = (0.2 * torch.rand(len(y), 1, SIDE, SIDE, generator=g) + 0.3 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    data = Data("blobs", x, y, x[:6], y[:6], ["a", "b", "c"])
    cfg = EBMConfig(data=DataConfig(image_size=SIDE), epochs=10, batch_size=8, hidden_channels=(4, 5, 6),
                    device="cpu")
    snapshots = {}

    def keep(progress):
        if progress.epoch == 8:  # round(0.8 * 10): the epoch that starts the last 20%
            bank = AutoencoderBank(3, 1, (4, 5, 6))
            bank.load_state_dict(progress.state()["model"])
            snapshots["at_80"] = _modules_of(bank)

    res = train_bank(cfg, data, keep)
    info = res.columns
    first = _residual_by_hand(_modules_of(AutoencoderBank.initialised(3, 1, (4, 5, 6), seed=0)), data)
    at_80 = _residual_by_hand(snapshots["at_80"], data)
    end = _residual_by_hand(_modules_of(res.model), data)
    assert info["residual_initial"] == pytest.approx(first, rel=1e-5)
    assert info["residual_at_80"] == pytest.approx(at_80, rel=1e-5)
    assert info["residual_final"] == pytest.approx(end, rel=1e-5)
    assert first > at_80 > end  # it trained, so the three readings differ and the check can fail
    assert info["residual_fall_last20"] == pytest.approx((at_80 - end) / end, rel=1e-4)
    assert info["residual_share_last20"] == pytest.approx((at_80 - end) / (first - end), rel=1e-4)
    # They are the run's columns: the trial writes them on every row of the run.

"""The fused autoencoder bank, its training and its sampling inference."""

import dataclasses
import math

import pytest
import torch

from trainables.common import STATUS_DIVERGED, STATUS_OK, config_row
from trainables.data import Data, DataConfig
from trainables.ebm import (Autoencoder, AutoencoderBank, EBMConfig, EvalConfig, evaluate,
                            preset_configs, train_bank)
from trainables.checks import ConfigError
from trainables.ebm import SETTING_COLUMNS, NoiseSpec
from trainables.noise import NoiseParams, fill_, make_generator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    """Each test's own data root: where EvalConfig(path="auto") caches its timed choice."""
    monkeypatch.setenv("NOISETUNE_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def _blobs(classes=3, per_class=24, side=8, seed=0) -> Data:
    """Small separable data: each class is a bright square at its own place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(classes * per_class * 2, 1, side, side, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class * 2)
    for c in range(classes):
        r = (c * side) // classes
        x[y == c, :, r:r + side // 3, r:r + side // 3] += 0.8
    x = x.clamp(0, 1)
    train = torch.arange(len(y)) % 2 == 0
    return Data("blobs", x[train], y[train], x[~train], y[~train], [f"c{c}" for c in range(classes)])


def _cfg(**kw) -> EBMConfig:
    base = dict(data=DataConfig(image_size=8), steps=6, batch_size=8, device="cpu")
    return EBMConfig(**(base | kw))


# ---------------------------------------------------------------------------------------------
# fused bank == separate autoencoders


@pytest.mark.parametrize("path", ["bmm", "per_class", "grouped"])
def test_fused_bank_equals_separate_autoencoders_outputs_and_gradients(path):
    torch.manual_seed(0)
    aes = [Autoencoder(3, (5, 7, 9)) for _ in range(4)]
    bank = AutoencoderBank.from_autoencoders(aes)
    x = torch.rand(4, 6, 3, 16, 16)  # each class its own images
    noise = torch.Generator().manual_seed(1)
    zs = {}

    def shared_noise(i, h):  # the same z for the bank and for the modules
        if i not in zs:
            zs[i] = torch.randn(h.shape, generator=noise)
        return h + 0.3 * zs[i]

    xb = x.permute(0, 1, 3, 4, 2)
    # the bmm path hands after_layer channels-last tensors, the per-class path NCHW ones
    out = {"bmm": bank, "per_class": bank.forward_per_class, "grouped": bank.forward_grouped}[path](xb, shared_noise)
    as_nchw = (lambda z: z.permute(0, 3, 1, 2)) if path == "bmm" else (lambda z: z)
    ref = torch.stack([ae(x[c], lambda i, h, c=c: h + 0.3 * as_nchw(zs[i][c]))
                       for c, ae in enumerate(aes)])
    assert torch.allclose(out.permute(0, 1, 4, 2, 3), ref, atol=1e-5)

    sum(((ref[c] - x[c]) ** 2).mean() for c in range(4)).backward()
    ((out - xb) ** 2).flatten(1).mean(1).sum().backward()
    for i in range(3):
        enc = torch.stack([a.encoder[i].weight.grad.flatten(1).T for a in aes])
        dec = torch.stack([a.decoder[i].weight.grad.permute(0, 2, 3, 1).flatten(1) for a in aes])
        assert torch.allclose(bank.weights[i].grad, enc, atol=1e-5)
        assert torch.allclose(bank.weights[3 + i].grad, dec, atol=1e-5)
        assert torch.allclose(bank.biases[i].grad, torch.stack([a.encoder[i].bias.grad for a in aes]), atol=1e-5)
        assert torch.allclose(bank.biases[3 + i].grad, torch.stack([a.decoder[i].bias.grad for a in aes]), atol=1e-5)


def test_shared_input_gives_every_class_its_reconstruction():
    torch.manual_seed(0)
    aes = [Autoencoder(1) for _ in range(3)]
    bank = AutoencoderBank.from_autoencoders(aes)
    x = torch.rand(5, 1, 16, 16)
    out = bank(x.permute(0, 2, 3, 1).unsqueeze(0))  # (1, N, ...) broadcast to all classes
    ref = torch.stack([ae(x) for ae in aes]).permute(0, 1, 3, 4, 2)
    assert torch.allclose(out, ref, atol=1e-5)


def test_each_autoencoder_only_learns_from_its_own_class():
    """Training on data whose class 0 is all zeros must not change how class 1's bank behaves
    compared with training where class 0 holds other images."""
    data = _blobs()
    other = dataclasses.replace(data, x_train=torch.where((data.y_train == 0).view(-1, 1, 1, 1),
                                                          torch.zeros_like(data.x_train), data.x_train))
    a = train_bank(_cfg(alpha_train=0.3), data).model
    b = train_bank(_cfg(alpha_train=0.3), other).model
    for w_a, w_b in zip(a.weights, b.weights):
        assert torch.equal(w_a[1:], w_b[1:])
        assert not torch.equal(w_a[0], w_b[0])


# ---------------------------------------------------------------------------------------------
# training


def test_both_training_paths_learn_the_same_weights(monkeypatch):
    """From 16 px train_bank runs class by class (faster there); without noise it is the same math."""
    import trainables.ebm as ebm
    data = _blobs(side=16)
    cfg = _cfg(data=DataConfig(image_size=16), steps=4)
    calls = []
    real = AutoencoderBank.forward_per_class
    monkeypatch.setattr(AutoencoderBank, "forward_per_class", lambda *a: calls.append(1) or real(*a))
    per_class = train_bank(cfg, data).model
    assert len(calls) >= 4  # one per step (and the convergence probes): 16 px took the per-class path
    taken = len(calls)
    monkeypatch.setattr(ebm, "PER_CLASS_TRAINING_FROM", 10**9)
    bmm = train_bank(cfg, data).model
    assert len(calls) == taken
    for a, b in zip(per_class.parameters(), bmm.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_is_deterministic_and_resume_matches_uninterrupted():
    data = _blobs()
    cfg = _cfg(alpha_train=0.5, dropout_rate=0.1, epochs=4, steps=0)
    saved = {}

    def keep_epoch_2(p):
        if p.epoch == 2:
            saved["state"] = p.state()

    full = train_bank(cfg, data, callback=keep_epoch_2)
    again = train_bank(cfg, data)
    resumed = train_bank(cfg, data, state=saved["state"])
    assert full.epochs_done == resumed.epochs_done == 4
    for a, b, c in zip(full.model.parameters(), again.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert full.history == resumed.history
    for key in ("residual_initial", "residual_at_80", "residual_final"):  # carried through the saved state
        assert full.columns[key] == resumed.columns[key]
    other = train_bank(dataclasses.replace(cfg, seed=1), data)
    assert not torch.equal(full.model.weights[0], other.model.weights[0])


def test_checkpoint_loads_with_weights_only(tmp_path):
    from trainables.common import load_checkpoint, save_checkpoint
    data = _blobs()
    states = []
    train_bank(_cfg(epochs=1, steps=0, alpha_train=0.2), data, callback=lambda p: states.append(p.state()))
    save_checkpoint(states[-1], tmp_path / "ck.pt")
    loaded = load_checkpoint(tmp_path / "ck.pt")
    assert loaded["epoch"] == 1 and set(loaded) >= {"model", "optimizer", "generator", "history"}


def test_training_reduces_the_loss_and_callback_sees_every_epoch():
    data = _blobs()
    seen = []
    res = train_bank(_cfg(steps=0, epochs=30, batch_size=12), data, callback=lambda p: seen.append(p.epoch))
    assert res.status == STATUS_OK and seen == list(range(1, 31))
    assert res.history[-1] < 0.5 * res.history[0]


def test_callback_returning_true_stops_early():
    res = train_bank(_cfg(steps=0, epochs=10), _blobs(), callback=lambda p: p.epoch == 3)
    assert res.epochs_done == 3 and len(res.history) == 3


def test_non_finite_loss_ends_as_diverged_not_an_exception():
    res = train_bank(_cfg(lr=1e30, steps=0, epochs=20, distribution_train="cauchy", alpha_train=50.0), _blobs())
    assert res.status == STATUS_DIVERGED
    assert not math.isfinite(res.history[-1]) and "non-finite" in res.message


# ---------------------------------------------------------------------------------------------
# sampling inference


@pytest.fixture(scope="module")
def trained():
    data = _blobs()
    cfg = _cfg(alpha_train=0.5, steps=40)
    return train_bank(cfg, data).model, data, cfg


SETTINGS = [NoiseSpec("gaussian", 0.0), NoiseSpec("gaussian", 0.5), NoiseSpec("gaussian", 1.0, "odd"),
            NoiseSpec("student_t", 0.3, "dec")]


def _by_key(rows):
    return {(r["alpha_test"], r["distribution_test"], r["placement_test"], r["n"]): r for r in rows}


def test_cumulative_n_equals_recomputing_from_scratch_at_each_n(trained):
    bank, data, cfg = trained
    checkpoints = (1, 3, 10, 25)
    ecfg = EvalConfig(n_checkpoints=checkpoints, block_images=10, block_draws=4)
    stream = _by_key(evaluate(bank, data, SETTINGS, cfg, ecfg))
    for n in checkpoints:
        alone = _by_key(evaluate(bank, data, SETTINGS, cfg, dataclasses.replace(ecfg, n_checkpoints=(n,))))
        for key, row in alone.items():
            assert stream[key]["accuracy"] == row["accuracy"]
            assert stream[key]["energy_mean"] == pytest.approx(row["energy_mean"], rel=1e-9)
            if n > 1:
                assert stream[key]["energy_var"] == pytest.approx(row["energy_var"], rel=1e-9, nan_ok=True)


def test_accuracy_at_n_matches_a_direct_energy_average(trained):
    """Recompute the argmin of the n-draw mean energy straight from per-draw energies."""
    from trainables.ebm import SamplingEvaluator
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 7, 20), block_images=1000, block_draws=5, memory_mb=4096, path="fused_bank")
    spec = NoiseSpec("gaussian", 0.7)
    rows = _by_key(evaluate(bank, data, [spec], cfg, ecfg))
    ev = SamplingEvaluator(bank, cfg.noise_params, ecfg, 8)
    x = data.x_test
    with torch.no_grad():
        e = ev.energies(x, ev.clean(x), spec, 0, 0, 20).double()
    for n in (1, 7, 20):
        acc = float((e[:, :, :n].mean(-1).argmin(0) == data.y_test).double().mean())
        assert rows[(0.7, "gaussian", "full", n)]["accuracy"] == acc
        assert rows[(0.7, "gaussian", "full", n)]["energy_mean"] == pytest.approx(float(e[:, :, :n].mean()), rel=1e-6)


@pytest.mark.parametrize("path", ["fused_bank", "plain_loop"])
def test_memory_chunking_gives_the_same_answer_as_one_big_batch(trained, path):
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 10, 30), block_images=8, block_draws=3, path=path)
    small = evaluate(bank, data, SETTINGS, cfg, dataclasses.replace(ecfg, memory_mb=1))
    big = evaluate(bank, data, SETTINGS, cfg, dataclasses.replace(ecfg, memory_mb=100_000))
    for a, b in zip(small, big):
        assert a["accuracy"] == b["accuracy"]
        assert a["energy_mean"] == pytest.approx(b["energy_mean"], rel=1e-9)


def test_a_setting_does_not_depend_on_the_others_requested(trained):
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 5))
    together = _by_key(evaluate(bank, data, SETTINGS, cfg, ecfg))
    alone = _by_key(evaluate(bank, data, SETTINGS[2:3], cfg, ecfg))
    for key, row in alone.items():
        assert together[key]["accuracy"] == row["accuracy"]


def test_clean_energy_equals_the_reference_autoencoders(trained):
    """alpha_test = 0: one deterministic pass per class, energy = sum of squared errors."""
    bank, data, cfg = trained
    rows = evaluate(bank, data, [NoiseSpec("gaussian", 0.0)], cfg, EvalConfig(n_checkpoints=(1, 10)))
    aes = _unstack(bank)
    with torch.no_grad():
        energy = torch.stack([((ae(data.x_test) - data.x_test) ** 2).flatten(1).sum(1) for ae in aes])
    acc = float((energy.argmin(0) == data.y_test).float().mean())
    assert [r["n_effective"] for r in rows] == [1, 1]
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == pytest.approx(acc)
    assert rows[0]["energy_mean"] == pytest.approx(float(energy.mean()), rel=1e-5)
    assert math.isnan(rows[0]["energy_var"])


def _unstack(bank):
    aes = []
    for c in range(bank.num_classes):
        ae = Autoencoder(bank.in_channels, bank.hidden)
        with torch.no_grad():
            for i in range(3):
                conv = ae.encoder[i]
                conv.weight.copy_(bank.weights[i][c].T.reshape(conv.weight.shape))
                conv.bias.copy_(bank.biases[i][c])
                up = ae.decoder[i]
                cin, cout = up.weight.shape[:2]
                up.weight.copy_(bank.weights[3 + i][c].view(cin, 4, 4, cout).permute(0, 3, 1, 2))
                up.bias.copy_(bank.biases[3 + i][c])
        aes.append(ae)
    return aes


def test_noise_in_evaluation_has_the_requested_law():
    """The draws that reach a layer are the configured law scaled by alpha."""
    from scipy import stats
    z = torch.empty(5000)
    fill_(z, "exponential", NoiseParams(exponential_rate=2.0), make_generator(0, "cpu"))
    assert stats.kstest(z.numpy(), stats.expon(scale=0.5).cdf).pvalue > 1e-3


def test_noisy_inference_is_not_degenerate(trained):
    bank, data, cfg = trained
    rows = _by_key(evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 20))))
    clean, noisy = rows[(0.0, "gaussian", "full", 1)], rows[(0.5, "gaussian", "full", 20)]
    assert clean["accuracy"] > 0.9  # separable blobs: the trained bank classifies them
    assert noisy["energy_mean"] > clean["energy_mean"]  # noise raises reconstruction error
    assert noisy["energy_var"] > 0


def test_bf16_inference_matches_fp32_within_tolerance(trained, monkeypatch):
    """bf16 draws the same noise onto the same elements as fp32: only the layer arithmetic differs,
    so accuracy moves by at most 2 of 72 images and mean energy by under 1%. (Run as if the
    hardware had native bf16, so an AVX2 CPU tests the bf16 arithmetic too.)"""
    import trainables.ebm as ebm
    monkeypatch.setattr(ebm, "fast_bf16", lambda device: (True, "test: native"))
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 20), path="fused_bank")  # auto could pick fp32 over emulated bf16
    fp32 = _by_key(evaluate(bank, data, SETTINGS, cfg, ecfg))
    bf16 = _by_key(evaluate(bank, data, SETTINGS, cfg, dataclasses.replace(ecfg, precision="bf16")))
    for key, row in fp32.items():
        assert abs(bf16[key]["accuracy"] - row["accuracy"]) <= 2 / len(data.y_test) + 1e-9
        assert bf16[key]["energy_mean"] == pytest.approx(row["energy_mean"], rel=1e-2)
        assert (bf16[key]["eval_precision"], row["eval_precision"]) == ("bf16", "fp32")
        assert bf16[key]["eval_path"] == row["eval_path"] == "fused_bank"


def test_bf16_without_native_hardware_warns_once_and_runs_and_records_fp32(trained, monkeypatch):
    import warnings

    import trainables.ebm as ebm
    monkeypatch.setattr(ebm, "fast_bf16", lambda device: (False, "test: emulated"))
    monkeypatch.setattr(ebm, "_BF16_WARNED", set())
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 6))
    fp32 = evaluate(bank, data, SETTINGS[:2], cfg, ecfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asked = [evaluate(bank, data, SETTINGS[:2], cfg, dataclasses.replace(ecfg, precision="bf16")) for _ in range(2)]
    (warning,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "precision=bf16 runs as fp32" in str(warning.message) and "test: emulated" in str(warning.message)
    for rows in asked:
        assert {r["eval_precision"] for r in rows} == {"fp32"}
        for a, b in zip(rows, fp32):  # the very fp32 computation
            assert a["predictions"] == b["predictions"] and a["energy_mean"] == b["energy_mean"]


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from trainables.common import cpu_flags, fast_bf16
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "fma"} and cpu_flags(str(tmp_path / "none")) == set()
    cpu = torch.device("cpu")
    assert fast_bf16(cpu, {"avx2", "fma"})[0] is False and "emulated" in fast_bf16(cpu, {"avx2"})[1]
    assert fast_bf16(cpu, {"avx512f", "avx512_bf16"})[0] is True
    assert fast_bf16(cpu, {"amx_bf16", "amx_tile"})[0] is True


def test_rows_hold_the_setting_and_its_metrics_and_no_config_field(trained):
    """Config fields, run columns and provenance are the trial's to add (tests/test_methods.py)."""
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1,))
    row = evaluate(bank, data, SETTINGS[:1], cfg, ecfg)[0]
    expected = {"distribution_test", "alpha_test", "placement_test", "noise_sharing", "n", "n_effective",
                "accuracy", "energy_mean", "energy_var", "test_images", "eval_seconds", "eval_seconds_at_n"}
    assert expected <= set(row)
    # noise_sharing is both: the eval config's default and the setting's column (what ran)
    assert set(row) & set(config_row(cfg, ecfg)) == {"noise_sharing"} == set(SETTING_COLUMNS.values()) & set(config_row(ecfg))


# ---------------------------------------------------------------------------------------------
# presets and bad input


def test_presets_build_valid_configs():
    for name in ("paper", "fair", "quick", "smoke"):
        cfg, ecfg = preset_configs(name)
        assert isinstance(cfg, EBMConfig) and isinstance(ecfg, EvalConfig)
    paper, paper_eval = preset_configs("paper")
    assert (paper.data.dataset, paper.data.image_size, paper.epochs, paper.batch_size, paper.lr) == \
        ("cifar10", 32, 100, 256, 1e-3)
    cfg, _ = preset_configs("quick", {"alpha_train": 0.9, "dataset": "textures"})
    assert cfg.alpha_train == 0.9 and cfg.data.dataset == "textures"


@pytest.mark.parametrize("make,message", [
    (lambda: preset_configs("fast"), r"preset='fast'.*allowed: paper, quick, fair, smoke"),
    (lambda: preset_configs("smoke", {"alpha_tr": 1}), r"unknown config field 'alpha_tr'.*alpha_train"),
    (lambda: _cfg(alpha_train=-1.0), r"alpha=-1.0 is out of range"),
    (lambda: _cfg(placement_train="all"), r"placement='all'.*allowed: full, odd, even, enc, dec"),
    (lambda: _cfg(distribution_train="normal"), r"distribution='normal'.*allowed: gaussian"),
    (lambda: _cfg(dropout_rate=1.0), r"dropout_rate=1.0 is out of range"),
    (lambda: _cfg(batch_size=0), r"batch_size=0 is out of range; allowed: integers >= 1"),
    (lambda: _cfg(hidden_activation="swish"), r"hidden_activation='swish'.*allowed: relu"),
    (lambda: EBMConfig(data=DataConfig(image_size=12)), r"image_size=12.*multiples of 8"),
    (lambda: EvalConfig(n_checkpoints=(0, 10)), r"n_checkpoints=.*integers >= 1"),
    (lambda: EvalConfig(n_checkpoints=()), r"n_checkpoints=.*non-empty"),
    (lambda: EvalConfig(block_draws=0), r"block_draws=0 is out of range"),
    (lambda: EvalConfig(precision="fp16"), r"precision='fp16'.*allowed: fp32, bf16"),
    (lambda: EvalConfig(path="fast"), r"path='fast'.*allowed: auto, fused_bank, plain_loop"),
])
def test_bad_input_names_the_field_and_allowed_values(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_empty_settings_are_refused(trained):
    bank, data, cfg = trained
    with pytest.raises(ConfigError, match="settings"):
        evaluate(bank, data, [], cfg)


# ---------------------------------------------------------------------------------------------
# Choices the paper leaves open: noise shared across classes, no noise on the output layer


def _twin_bank(seed=0) -> AutoencoderBank:
    """Two classes with the very same autoencoder: their energies can differ only by their noise."""
    torch.manual_seed(seed)
    ae = Autoencoder(1, (30, 73, 100))
    return AutoencoderBank.from_autoencoders([ae, ae])


def test_common_noise_gives_identical_autoencoders_equal_energies_draw_by_draw():
    from trainables.ebm import SamplingEvaluator
    bank, x = _twin_bank(), torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    per_class = {}
    for sharing in ("common", "independent"):
        ev = SamplingEvaluator(bank, NoiseParams(), EvalConfig(block_draws=5), 8)
        with torch.no_grad():
            per_class[sharing] = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 0.5, sharing=sharing), 0, 0, 10)
    assert torch.equal(per_class["common"][0], per_class["common"][1])
    assert not torch.allclose(per_class["independent"][0], per_class["independent"][1])
    # Class 0 draws from the same keys either way; only the other classes' draws change.
    assert torch.equal(per_class["common"][0], per_class["independent"][0])


def test_common_and_independent_noise_agree_in_mean_energy_within_sampling_error(trained):
    from trainables.ebm import SamplingEvaluator
    bank, data, cfg = trained
    x, n = data.x_test[:20], 400
    draws = {}
    for sharing in ("common", "independent"):
        ev = SamplingEvaluator(bank, cfg.noise_params, EvalConfig(block_draws=20), 8, seed=3)
        with torch.no_grad():
            draws[sharing] = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 0.7, sharing=sharing), 0, 0, n).double()
    a, b = draws["common"], draws["independent"]
    z = (a.mean(-1) - b.mean(-1)) / ((a.var(-1) + b.var(-1)) / n).sqrt()  # per (class, image)
    assert z.abs().max() < 5 and abs(float(z.mean())) < 0.5, z
    # ...while the differences the argmin reads vary less with common noise.
    assert float((a[1] - a[0]).var(-1).mean()) < float((b[1] - b[0]).var(-1).mean())


def _counting_fill(monkeypatch) -> list[int]:
    """Patch the sampler sampling inference draws through; the list holds how many numbers it drew."""
    import threading

    import trainables.ebm as ebm
    drawn, lock = [0], threading.Lock()

    def counting(out, *args, **kwargs):
        with lock:
            drawn[0] += out.numel()
        return fill_(out, *args, **kwargs)

    monkeypatch.setattr(ebm, "fill_", counting)
    return drawn


@pytest.mark.parametrize("path", ["fused_bank", "plain_loop"])
def test_common_noise_draws_one_number_per_image_draw_and_neuron_a_cth_of_independent(trained, monkeypatch, path):
    bank, data, cfg = trained
    drawn = _counting_fill(monkeypatch)
    ecfg = EvalConfig(n_checkpoints=(1, 10), block_images=16, block_draws=5, path=path)  # auto's timing draws too
    counts = {}
    for sharing in ("common", "independent"):
        drawn[0] = 0
        evaluate(bank, data, [NoiseSpec("gaussian", 0.5, sharing=sharing)], cfg, ecfg)
        counts[sharing] = drawn[0]
    # 8 px, widths (30, 73, 100), full placement: 30*4*4 + 73*2*2 + 100*1*1 + 73*2*2 + 30*4*4 + 1*8*8
    per_pass = 480 + 292 + 100 + 292 + 480 + 64
    assert counts["common"] == len(data.y_test) * 10 * per_pass
    assert counts["independent"] == bank.num_classes * counts["common"]


@pytest.mark.parametrize("path", ["fused_bank", "plain_loop"])
@pytest.mark.parametrize("sharing", ["common", "independent"])
def test_noise_does_not_depend_on_how_many_draw_blocks_a_call_takes(trained, sharing, path):
    """The keyed streams: energies are bit-identical whether draws 0..19 come in one call or two,
    and a whole evaluation under a 1 MB budget (one draw block a call) equals one with all in a call."""
    from trainables.ebm import SamplingEvaluator
    bank, data, cfg = trained
    spec = NoiseSpec("student_t", 0.6, "odd", sharing)
    ev = SamplingEvaluator(bank, cfg.noise_params, EvalConfig(block_draws=5, memory_mb=1), 8, seed=2, path=path)
    x = data.x_test[:16]
    with torch.no_grad():
        clean = ev.clean(x)
        whole = ev.energies(x, clean, spec, 3, 0, 20)
        parts = torch.cat([ev.energies(x, clean, spec, 3, 0, 10), ev.energies(x, clean, spec, 3, 10, 15),
                           ev.energies(x, clean, spec, 3, 15, 20)], -1)
    assert torch.equal(whole, parts)
    ecfg = EvalConfig(n_checkpoints=(1, 10, 30), block_images=16, block_draws=10, path=path)
    small, big = (dataclasses.replace(ecfg, memory_mb=m) for m in (1, 100_000))
    assert SamplingEvaluator(bank, cfg.noise_params, small, 8, path=path).draw_blocks_per_call(16, spec) == 1
    assert SamplingEvaluator(bank, cfg.noise_params, big, 8, path=path).draw_blocks_per_call(16, spec) >= 3
    for a, b in zip(evaluate(bank, data, [spec], cfg, small), evaluate(bank, data, [spec], cfg, big)):
        assert a["predictions"] == b["predictions"] and a["accuracy"] == b["accuracy"]
        assert a["energy_mean"] == pytest.approx(b["energy_mean"], rel=1e-12)


def test_noise_sharing_is_the_default_of_settings_that_name_none(trained):
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 5), noise_sharing="common")
    settings = [NoiseSpec("gaussian", 0.5), NoiseSpec("gaussian", 0.5, sharing="independent")]
    rows = evaluate(bank, data, settings, cfg, ecfg)
    assert [r["noise_sharing"] for r in rows] == ["common", "common", "independent", "independent"]
    as_named = evaluate(bank, data, [NoiseSpec("gaussian", 0.5, sharing="common")], cfg, EvalConfig(n_checkpoints=(1, 5)))
    assert [r["predictions"] for r in as_named] == [r["predictions"] for r in rows[:2]]
    with pytest.raises(ConfigError, match="noise_sharing.*independent, common"):
        EvalConfig(noise_sharing="shared")


@pytest.mark.parametrize("name", ["grid_ebm", "dist_ebm", "layers_ebm", "dropout_ebm", "ablate_ebm", "tune_ebm"])
def test_every_ebm_experiment_takes_noise_sharing_with_set(name):
    from tuner import registry
    exp = registry.EXPERIMENTS[name]
    space = exp.space("smoke")
    point = space.train[0] if space.train else {"alpha_train": 0.5, "alpha_test": 0.5, "distribution_train": "gaussian"}
    _, ecfg, _ = registry.trial_configs(exp, "smoke", point | {"seed": 0}, {"noise_sharing": "common"})
    assert ecfg.noise_sharing == "common"
    _, ecfg, _ = registry.trial_configs(exp, "smoke", point | {"seed": 0}, {})
    assert ecfg.noise_sharing == "independent"  # the paper's separate autoencoders
    with pytest.raises(ConfigError, match="noise_sharing"):
        registry.trial_configs(exp, "smoke", point | {"seed": 0}, {"noise_sharing": "both"})


def test_a_trial_with_set_noise_sharing_records_it_in_every_row(tmp_path):
    import pandas as pd

    from tuner import trial
    from tuner.registry import EXPERIMENTS
    from tuner.store import ResultStore
    point = EXPERIMENTS["grid_ebm"].space("smoke").train[1]  # alpha_train 0.5; tests at 0 and 0.5
    config = {"experiment": "grid_ebm", "preset": "smoke", "seed": 0, "point": point,
              "overrides": {"noise_sharing": "common"}, "storage": str(tmp_path), "name": "common",
              "meta": {}, "threads": 1}
    trial.run_trial(config, local=True)
    (part,) = ResultStore(str(tmp_path), "common").parts()
    rows = pd.read_parquet(part)
    assert set(rows["status"]) == {"ok"} and set(rows["noise_sharing"]) == {"common"}
    assert "noise_sharing" in rows["config_columns"].iloc[0]


def test_the_clock_at_n_counts_no_draw_past_n():
    """DrawTally's seconds[n] on a hand case: a fake clock that advances one second per draw made.
    Calls of up to 1000 draws stop at each checkpoint, rounded up to `align` draws (the draws made
    together), so seconds[n] is n draws' worth, or n rounded up to a whole draw block; the counts
    are those of one uninterrupted stream."""
    from trainables.sampling import DrawTally
    labels = torch.tensor([0, 1])
    for align, want in ((1, {1: 1, 10: 10, 25: 25, 60: 60}), (10, {1: 10, 10: 10, 25: 30, 60: 60})):
        made, calls = [0], []

        def per_draw(d0, d1):  # (classes, images, draws); the lowest summed score wins
            made[0] += -(-d1 // align) * align - d0 // align * align  # whole blocks, as ebm draws them
            calls.append((d0, d1))
            d = torch.arange(d0, d1, dtype=torch.float64)
            class0 = torch.stack([3.0 * (d >= 20), torch.ones_like(d)])  # image 0: 0 for 20 draws, then 3
            class1 = torch.stack([torch.ones_like(d), torch.zeros_like(d)])
            return torch.stack([class0, class1])

        tally = DrawTally((1, 10, 25, 60))
        tally.add_block(per_draw, labels, 60, 1000, clock=lambda: float(made[0]), align=align)
        assert tally.seconds == want, (align, calls)
        # image 0 (label 0): class 0 sums 3 (n - 20) against n, lost only at 60; image 1 always right
        assert tally.correct == {1: 2, 10: 2, 25: 2, 60: 1}


def test_rows_carry_the_seconds_spent_up_to_their_n(trained):
    """Accuracy per second: eval_seconds_at_n grows with n within a noisy setting (each n costs its
    draws, even when one call could make all of them: the default memory budget), is flat for a
    noise-free one (one pass), and never exceeds the setting's eval_seconds."""
    bank, data, cfg = trained
    ecfg = EvalConfig(n_checkpoints=(1, 10, 60), block_images=24, block_draws=1)
    rows = evaluate(bank, data, [NoiseSpec("gaussian", 0.0), NoiseSpec("gaussian", 0.5), NoiseSpec("cauchy", 0.3)], cfg, ecfg)
    for setting in range(3):
        at = [r["eval_seconds_at_n"] for r in rows[3 * setting:3 * setting + 3]]
        total = rows[3 * setting]["eval_seconds"]
        assert 0 < at[0] and at[-1] <= total + 1e-9
        if setting == 0:
            assert at[0] == at[1] == at[2]
        else:
            assert at[0] < at[1] < at[2] and at[2] > 2 * at[0], at  # 60 draws cost well over 1


def test_hidden_placement_puts_no_noise_on_the_output_layer(trained):
    """With a huge alpha, noise after the sigmoid would push energies past D = 64 (pixels and
    reconstructions in [0, 1]); `hidden` stops at layer 5, so no draw can."""
    from trainables.ebm import SamplingEvaluator
    bank, data, cfg = trained
    ev = SamplingEvaluator(bank, cfg.noise_params, EvalConfig(block_draws=10), 8)
    x = data.x_test[:10]
    assert NoiseSpec("gaussian", 1.0, "hidden").layers == (1, 2, 3, 4, 5)
    with torch.no_grad():
        hidden = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 20.0, "hidden"), 0, 0, 10)
        full = ev.energies(x, ev.clean(x), NoiseSpec("gaussian", 20.0, "full"), 0, 0, 10)
    assert float(hidden.max()) <= 64 and float(full.max()) > 64
    assert float(hidden.std()) > 0  # the hidden layers' noise still reaches the output


def test_rows_carry_the_evidence_that_n_is_large_enough(trained):
    bank, data, cfg = trained
    rows = _by_key(evaluate(bank, data, [NoiseSpec("gaussian", 0.5)], cfg, EvalConfig(n_checkpoints=(1, 4, 64))))
    r1, r4, r64 = (rows[(0.5, "gaussian", "full", n)] for n in (1, 4, 64))
    assert math.isnan(r1["energy_mean_std_median"]) and r1["energy_gap_median"] > 0
    # The std of an n-draw mean shrinks like 1/sqrt(n): 4 -> 64 draws is a factor of about 4.
    assert 2.5 < r4["energy_mean_std_median"] / r64["energy_mean_std_median"] < 6
    assert r64["energy_gap_median"] > 0 and r64["noise_sharing"] == "independent"


def test_dist_ebm_sweeps_three_settings_of_each_laws_parameter():
    from search_spaces.ebm import LAW_PARAMETERS, dist_ebm
    quick = dist_ebm("quick")
    for law, (name, values) in LAW_PARAMETERS.items():
        table3 = getattr(NoiseParams(), name)
        points = [p for p in quick.train if p["distribution_train"] == law]
        assert sorted({p.get(name, table3) for p in points}) == sorted(values) and table3 in values
        assert all(name not in p for p in points if p.get(name, table3) == table3)  # Table 3 trials keep their keys
        for p in points:  # Fig. 8's 7 x 7 only at Table 3's parameters
            assert len(quick.tests(p)) == (7 if p["alpha_train"] == 1.0 and name not in p else 1)
    assert dist_ebm("smoke").train == [{"distribution_train": "gaussian", "alpha_train": 1.0},
                                       {"distribution_train": "cauchy", "alpha_train": 1.0}]


def test_a_last_image_block_of_one_image_is_evaluated(trained):
    """33 test images in blocks of 32: the last block holds one image (it once crashed the
    in-place noise add, on a zero-stride view)."""
    bank, data, cfg = trained
    one_more = Data(data.name, data.x_train, data.y_train, data.x_test[:33], data.y_test[:33], data.class_names)
    rows = evaluate(bank, one_more, [NoiseSpec("gaussian", 0.5)], cfg, EvalConfig(n_checkpoints=(1, 4), block_images=32))
    assert {r["test_images"] for r in rows} == {33} and all(0 <= r["accuracy"] <= 1 for r in rows)


# ---------------------------------------------------------------------------------------------
# Which path runs: plain loop or fused bank, forced or timed once per machine and shapes


@pytest.mark.parametrize("sharing", ["common", "independent"])
def test_every_path_gives_the_same_results_on_the_same_keyed_noise(trained, sharing):
    """fp32: the plain loop and the fused bank add the same draws to the same elements, whatever
    the memory budget (draw blocks per call); energies agree to float rounding, predictions exactly."""
    from trainables.ebm import SamplingEvaluator
    bank, data, cfg = trained
    settings = [NoiseSpec("gaussian", 0.0), NoiseSpec("gaussian", 0.7, sharing=sharing),
                NoiseSpec("cauchy", 0.3, "dec", sharing)]
    runs = {(path, mb): evaluate(bank, data, settings, cfg, EvalConfig(n_checkpoints=(1, 7, 20), block_images=16,
                                                                      block_draws=5, memory_mb=mb, path=path))
            for path in ("fused_bank", "plain_loop") for mb in (1, 100_000)}
    first = runs["fused_bank", 1]
    for (path, mb), rows in runs.items():
        assert {r["eval_path"] for r in rows} == {path} and {r["eval_precision"] for r in rows} == {"fp32"}
        for a, b in zip(rows, first):
            assert a["predictions"] == b["predictions"] and a["accuracy"] == b["accuracy"]
            assert a["energy_mean"] == pytest.approx(b["energy_mean"], rel=1e-6)
            assert a["energy_var"] == pytest.approx(b["energy_var"], rel=1e-4, nan_ok=True)
    x, spec = data.x_test[:16], settings[1]
    e = {}
    for path in ("fused_bank", "plain_loop"):
        ev = SamplingEvaluator(bank, cfg.noise_params, EvalConfig(block_draws=5), 8, seed=4, path=path)
        with torch.no_grad():
            e[path] = ev.energies(x, ev.clean(x), spec, 2, 0, 15)
    torch.testing.assert_close(e["plain_loop"], e["fused_bank"], rtol=1e-5, atol=1e-5)
    assert float(e["fused_bank"].std(-1).min()) > 0  # the draws differ draw by draw on both paths


def _fake_timer(monkeypatch, seconds: dict[tuple[str, str], float]) -> list[set]:
    """Replace the timing with fabricated seconds per (path, precision); the list records the
    candidates of each timing."""
    import trainables.ebm as ebm
    calls = []

    def timed(evaluators, x, spec, draws):
        calls.append(set(evaluators))
        assert all(ev.bank.num_classes == min(ebm.PATH_TIMING_CLASSES, 3) for ev in evaluators.values())
        return {key: seconds[key] for key in evaluators}

    monkeypatch.setattr(ebm, "time_paths", timed)
    return calls


def test_auto_times_the_paths_once_caches_the_winner_and_reuses_it(trained, monkeypatch, data_root):
    import json
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {("fused_bank", "fp32"): 2.0, ("plain_loop", "fp32"): 1.0})
    ecfg = EvalConfig(n_checkpoints=(1, 5))
    assert ecfg.path == "auto"
    first = evaluate(bank, data, SETTINGS[:2], cfg, ecfg)
    assert calls == [{("fused_bank", "fp32"), ("plain_loop", "fp32")}]  # fp32 only: bf16 was not asked for
    assert {r["eval_path"] for r in first} == {"plain_loop"}  # the faster one ran
    (entry,) = json.loads((data_root / "eval_paths.json").read_text()).values()
    assert (entry["path"], entry["precision"]) == ("plain_loop", "fp32") and entry["seconds"]["fused_bank fp32"] == 2.0
    again = evaluate(bank, data, SETTINGS[:2], cfg, ecfg)
    assert len(calls) == 1  # read from the file, not timed again
    assert [r["predictions"] for r in again] == [r["predictions"] for r in first]
    assert {r["eval_path"] for r in again} == {"plain_loop"}
    evaluate(bank, data, SETTINGS[:2], cfg, dataclasses.replace(ecfg, block_images=8))  # another shape
    evaluate(bank, data, [NoiseSpec("gaussian", 0.5, sharing="common")], cfg, ecfg)  # another sharing
    assert len(calls) == 3 and len(json.loads((data_root / "eval_paths.json").read_text())) == 3


@pytest.mark.parametrize("path", ["fused_bank", "plain_loop"])
def test_a_forced_path_runs_without_timing(trained, monkeypatch, path):
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {})
    rows = evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 5), path=path))
    assert calls == [] and {r["eval_path"] for r in rows} == {path}


def test_auto_times_bf16_only_where_native_and_records_what_ran(trained, monkeypatch):
    import trainables.ebm as ebm
    monkeypatch.setattr(ebm, "fast_bf16", lambda device: (True, "test: native"))
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {("fused_bank", "fp32"): 3.0, ("plain_loop", "fp32"): 4.0,
                                      ("fused_bank", "bf16"): 1.0, ("plain_loop", "bf16"): 2.0})
    rows = evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 5), precision="bf16"))
    assert calls == [{(p, q) for p in ("fused_bank", "plain_loop") for q in ("fp32", "bf16")}]
    assert {(r["eval_path"], r["eval_precision"]) for r in rows} == {("fused_bank", "bf16")}
    monkeypatch.setattr(ebm, "fast_bf16", lambda device: (False, "test: emulated"))
    with pytest.warns(RuntimeWarning, match="runs as fp32"):
        rows = evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 6), precision="bf16"))
    assert calls[-1] == {("fused_bank", "fp32"), ("plain_loop", "fp32")}
    assert {(r["eval_path"], r["eval_precision"]) for r in rows} == {("fused_bank", "fp32")}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": 1}', ""])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(trained, monkeypatch, data_root, content):
    import json
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {("fused_bank", "fp32"): 1.0, ("plain_loop", "fp32"): 2.0})
    data_root.mkdir(parents=True)
    (data_root / "eval_paths.json").write_text(content)
    rows = evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 5)))
    assert len(calls) == 1 and {r["eval_path"] for r in rows} == {"fused_bank"}
    cache = json.loads((data_root / "eval_paths.json").read_text())
    assert [v["path"] for k, v in cache.items() if k != "x"] == ["fused_bank"]
    # An entry naming a path that does not exist is timed again, not trusted.
    key = next(k for k in cache if k != "x")
    (data_root / "eval_paths.json").write_text(json.dumps({key: {"path": "gpu_magic", "precision": "fp32"}}))
    evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 5)))
    assert len(calls) == 2


def test_an_unwritable_cache_warns_and_the_evaluation_runs(trained, monkeypatch, tmp_path):
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {("fused_bank", "fp32"): 1.0, ("plain_loop", "fp32"): 2.0})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NOISETUNE_DATA", str(blocker / "data"))
    with pytest.warns(RuntimeWarning, match="eval path cache .* not written"):
        rows = evaluate(bank, data, SETTINGS[:2], cfg, EvalConfig(n_checkpoints=(1, 5)))
    assert len(calls) == 1 and {r["eval_path"] for r in rows} == {"fused_bank"}


def test_the_real_timing_is_short_and_runs_its_winner(trained, monkeypatch, data_root):
    """No fake: the timing is a warm-up and PATH_TIMING_ROUNDS calls per candidate, each one draw
    block on PATH_TIMING_CLASSES classes (a fraction of a second at these shapes on an idle core),
    and the row's path is the one with the fewer seconds in the cache."""
    import json

    import trainables.ebm as ebm
    bank, data, cfg = trained
    calls, real = [], ebm.SamplingEvaluator.energies

    def counted(ev, x, clean, spec, image_block, d0, d1):
        calls.append((ev.path, ev.bank.num_classes, len(x), d1 - d0))
        return real(ev, x, clean, spec, image_block, d0, d1)

    monkeypatch.setattr(ebm.SamplingEvaluator, "energies", counted)
    rows = evaluate(bank, data, SETTINGS[1:2], cfg, EvalConfig(n_checkpoints=(1, 30), block_draws=5))
    timing = [c for c in calls if c[1] == ebm.PATH_TIMING_CLASSES]  # the trained bank has 3 classes
    per_candidate = 1 + ebm.PATH_TIMING_ROUNDS
    assert sorted(timing) == sorted([(p, 2, 32, 5) for p in ("fused_bank", "plain_loop")] * per_candidate)
    (entry,) = json.loads((data_root / "eval_paths.json").read_text()).values()
    assert set(entry["seconds"]) == {"fused_bank fp32", "plain_loop fp32"} and min(entry["seconds"].values()) > 0
    assert 0 < entry["timing_seconds"] < 10  # about 0.2 s on an idle core; generous for a loaded machine
    assert {r["eval_path"] for r in rows} == {min(entry["seconds"], key=entry["seconds"].get).split()[0]}


def test_noise_free_evaluations_are_not_timed(trained, monkeypatch):
    bank, data, cfg = trained
    calls = _fake_timer(monkeypatch, {})
    rows = evaluate(bank, data, SETTINGS[:1], cfg, EvalConfig(n_checkpoints=(1, 5)))
    assert calls == [] and {r["eval_path"] for r in rows} == {"fused_bank"}

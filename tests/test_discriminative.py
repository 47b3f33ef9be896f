"""Appendix E classifiers: noise hooks, determinism and resume, cumulative n, failure modes.

Self-contained: the data are sklearn digits or random tensors in a Data-like namespace, so these
tests do not depend on trainables/data.py.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainables import injection
from trainables.common import STATUS_DIVERGED, STATUS_OK, config_row, load_checkpoint, save_checkpoint
from trainables.data import DataConfig
from trainables.discriminative import (ClassifierConfig, build_classifier, evaluate_classifier,
                                       train_classifier)
from trainables.checks import ConfigError
from trainables.ebm import NoiseSpec
from trainables.noise import make_generator


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(x, y, num_classes, n_train):
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
                           y_test=y[n_train:], num_classes=num_classes)


@pytest.fixture(scope="module")
def digits():
    """sklearn digits (1797 images, 8x8) scaled to [0, 1] and resized to 16x16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    return _data(x, torch.tensor(d.target, dtype=torch.int64), 10, 1500)


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=g)
    return _data(x, torch.randint(0, 3, (96,), generator=g), 3, 64)


def _noisy(model, alpha, distribution="gaussian", seed=0):
    model.activation_noise.set(distribution, alpha, make_generator(seed, "cpu"))
    return model


# --- noise hooks -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_alpha_zero_equals_clean_model_and_alpha_positive_is_random(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, 1, 4, 8).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        quiet = _noisy(model, 0.0)(x)
        a, b = _noisy(model, 0.5)(x), model(x)  # eval mode: the noise stays on
        model.activation_noise.remove()
        clean = model(x)
    assert torch.equal(quiet, clean)
    assert not torch.allclose(a, b) and not torch.allclose(a, clean)


@pytest.mark.parametrize("arch,blocks", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_one_hook_call_per_activation_call(arch, blocks):
    """torchvision blocks call their one `relu` module 2 (Basic) or 3 (Bottleneck) times."""
    model = _noisy(build_classifier(arch, 1, 4, 8), 0.3).eval()
    per_block = 2 if blocks is BasicBlock else 3
    expected = 1 + per_block * sum(isinstance(m, blocks) for m in model.modules())  # stem + blocks
    assert expected == {"resnet18": 17, "resnet50": 49}[arch]
    model.activation_noise.calls = 0
    with torch.no_grad():
        model(torch.rand(2, 1, 8, 8))
    assert model.activation_noise.calls == expected


def test_vgg16_hooks_every_relu_and_refuses_small_images():
    model = _noisy(build_classifier("vgg16", 1, 4, 32), 0.3).eval()
    model.activation_noise.calls = 0
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 4)
    assert model.activation_noise.calls == 13 + 2  # 13 conv layers, 2 hidden linear layers
    with pytest.raises(ConfigError, match="image_size=16 is too small for arch='vgg16'.*allowed: a larger image_size"):
        build_classifier("vgg16", 3, 10, 16)


@pytest.mark.parametrize("distribution,law", [("gaussian", stats.norm()),
                                              ("exponential", stats.expon()),
                                              ("uniform", stats.uniform(-2, 4))])
def test_added_noise_has_the_right_law(distribution, law):
    alpha = 0.7
    model = _noisy(build_classifier("small_cnn", 1, 4, 16), alpha, distribution, seed=123).eval()
    relu = next(m for m in model.modules() if isinstance(m, torch.nn.ReLU))
    seen = {}
    relu.register_forward_hook(lambda m, i, o: seen.__setitem__("raw", o.clone()), prepend=True)
    relu.register_forward_hook(lambda m, i, o: seen.__setitem__("noisy", o.clone()))
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    z = ((seen["noisy"] - seen["raw"]) / alpha).flatten().double().numpy()
    assert z.size == 2 * 32 * 16 * 16
    assert stats.kstest(z, law.cdf).pvalue > 1e-3


# --- training ----------------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights(tiny):
    cfg = ClassifierConfig(epochs=2, batch_size=16, alpha_train=0.5, device="cpu")
    a, b = train_classifier(cfg, tiny), train_classifier(cfg, tiny)
    c = train_classifier(ClassifierConfig(epochs=2, batch_size=16, alpha_train=0.5, device="cpu", seed=1), tiny)
    assert a.status == STATUS_OK and a.epochs_done == 2 and len(a.history) == 2
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_resume_from_saved_state_gives_identical_weights(arch, tiny, tmp_path):
    """BatchNorm buffers, Adam moments, cosine schedule and both generators all round-trip."""
    cfg = ClassifierConfig(arch=arch, epochs=3, batch_size=16, alpha_train=0.3, device="cpu")
    seen = []

    def save_after_first(progress):
        seen.append(progress.epoch)
        if progress.epoch == 1:
            save_checkpoint(progress.state(), tmp_path / "ckpt.pt")

    full = train_classifier(cfg, tiny, callback=save_after_first)
    assert seen == [1, 2, 3]
    state = load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True
    assert state["epoch"] == 1 and state["step"] == 4
    resumed = train_classifier(cfg, tiny, state=state)
    assert resumed.epochs_done == 3 and resumed.history == full.history
    sf, sr = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sf[k], sr[k]) for k in sf)


def test_callback_true_stops_and_steps_override_epochs(tiny):
    stopped = train_classifier(ClassifierConfig(epochs=5, batch_size=16, device="cpu"), tiny,
                               callback=lambda p: p.epoch == 2)
    assert stopped.status == STATUS_OK and stopped.epochs_done == 2
    by_steps = train_classifier(ClassifierConfig(epochs=99, steps=6, batch_size=16, device="cpu"), tiny)
    assert by_steps.epochs_done == 2  # 4 steps per epoch: one full epoch and a partial one


def test_absurd_lr_diverges_without_raising(tiny):
    result = train_classifier(ClassifierConfig(lr=1e20, epochs=3, batch_size=16, device="cpu"), tiny)
    assert result.status == STATUS_DIVERGED and "non-finite" in result.message


def test_nan_loss_diverges_keeping_finite_weights(tiny, monkeypatch):
    calls = {"n": 0}
    real = F.cross_entropy

    def flaky(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(F, "cross_entropy", flaky)
    result = train_classifier(ClassifierConfig(epochs=3, batch_size=16, device="cpu"), tiny)
    assert result.status == STATUS_DIVERGED and result.epochs_done == 1 and len(result.history) == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_small_cnn_learns_digits(digits):
    cfg = ClassifierConfig(steps=200, batch_size=64, device="cpu")
    result = train_classifier(cfg, digits)
    assert result.status == STATUS_OK and result.history[-1] < result.history[0]
    rows = evaluate_classifier(result.model, digits, [("gaussian", 0.0)], n_checkpoints=(1,), cfg=cfg)
    assert rows[0]["accuracy"] > 0.5  # chance is 0.1; measured about 0.87


# --- evaluation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny):
    cfg = ClassifierConfig(epochs=3, batch_size=16, alpha_train=0.5, device="cpu")
    return cfg, train_classifier(cfg, tiny).model


def test_rows_schema_and_deterministic_setting(trained, tiny):
    cfg, model = trained
    rows = evaluate_classifier(model, tiny, [NoiseSpec(alpha=0.0), {"distribution_test": "cauchy", "alpha_test": 0.5}],
                               n_checkpoints=(1, 4), cfg=cfg, batch_size=10)
    assert [(r["distribution_test"], r["alpha_test"], r["n"], r["n_effective"]) for r in rows] == [
        ("gaussian", 0.0, 1, 1), ("gaussian", 0.0, 4, 1), ("cauchy", 0.5, 1, 1), ("cauchy", 0.5, 4, 4)]
    for r in rows:
        assert not set(config_row(cfg)) & set(r)  # config fields are the trial's to add
        assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_seconds"] >= 0 and r["test_images"] == 32
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    assert model.activation_noise.alpha == 0.5  # training noise restored after evaluation


def test_accuracy_at_n_equals_fresh_run_with_n_max_n(trained, tiny):
    cfg, model = trained
    settings = [("gaussian", 1.0), ("student_t", 0.8)]
    stream = evaluate_classifier(model, tiny, settings, n_checkpoints=(1, 3, 7), cfg=cfg, batch_size=10)
    for n in (1, 3, 7):
        fresh = evaluate_classifier(model, tiny, settings, n_checkpoints=(n,), cfg=cfg, batch_size=10)
        assert [r["accuracy"] for r in stream if r["n"] == n] == [r["accuracy"] for r in fresh]
    # ... and the noise is live: other seeds give other single-pass accuracies.
    singles = {evaluate_classifier(model, tiny, settings[:1], (1,), cfg=cfg, seed=s)[0]["accuracy"]
               for s in range(6)}
    assert len(singles) > 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(arch="resnet1001"), r"arch='resnet1001'.*did you mean.*allowed: small_cnn, softmax_regression, dnn3, vit_small, mlp, alexnet, .*resnet18, .*vgg16"),
    (dict(stem="tiny"), r"stem='tiny'.*allowed: imagenet, cifar, auto"),
    (dict(placement_train="odd"), r"placement_train='odd'.*allowed: full"),
    (dict(alpha_train=-0.1), r"alpha_train=-0.1.*allowed: \[0.0"),
    (dict(distribution_train="normal"), r"distribution_train='normal'.*allowed: gaussian"),
    (dict(scheduler="step"), r"scheduler='step'.*allowed: cosine, none"),
    (dict(steps=-1), r"steps=-1.*integers >= 0"),
    (dict(epochs=1.5), r"epochs=1.5.*integers >= 1"),
    (dict(lr=0.0), r"lr=0.0.*allowed: \(0.0"),
    (dict(device="gpu0"), r"device='gpu0'.*allowed: auto, cpu"),
])
def test_bad_config_names_field_and_allowed_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ClassifierConfig(**kwargs)


@pytest.mark.parametrize("settings,n_checkpoints,message", [
    ([("gaussian", -0.5)], (1,), r"alpha_test=-0.5.*allowed: \[0.0"),
    ([("laplace", 0.5)], (1,), r"distribution_test='laplace'.*allowed: gaussian"),
    ([NoiseSpec(alpha=0.5, placement="enc")], (1,), r"placement_test='enc'.*allowed: full"),
    ([("gaussian", 0.5)], (0, 10), r"n_checkpoints=.*integers >= 1"),
])
def test_bad_evaluation_inputs(trained, tiny, settings, n_checkpoints, message):
    cfg, model = trained
    with pytest.raises(ConfigError, match=message):
        evaluate_classifier(model, tiny, settings, n_checkpoints=n_checkpoints, cfg=cfg)


def test_training_noise_uses_its_own_law_and_scale(monkeypatch, tiny):
    """The train spec reaches the hooks: each hook call adds exactly alpha_train * z, with z drawn
    from distribution_train."""
    draws, added = [], []
    real_fill, real_hook = injection.fill_, injection.ActivationNoise._hook

    def fill_spy(out, distribution, params, generator):
        z = real_fill(out, distribution, params, generator)
        draws.append((distribution, z.clone()))
        return z

    def hook_spy(self, module, inputs, output):
        raw = output.detach().clone()
        result = real_hook(self, module, inputs, output)
        added.append((self.alpha, result.detach() - raw))
        return result

    monkeypatch.setattr(injection, "fill_", fill_spy)
    monkeypatch.setattr(injection.ActivationNoise, "_hook", hook_spy)
    train_classifier(ClassifierConfig(steps=1, batch_size=16, distribution_train="lognormal",
                                      alpha_train=0.2, device="cpu"), tiny)
    assert [d for d, _ in draws] == ["lognormal", "lognormal"]  # small_cnn: two ReLUs, one step
    for (alpha, delta), (_, z) in zip(added, draws):
        assert alpha == 0.2 and torch.allclose(delta, 0.2 * z, atol=1e-6)
    assert all(float(z.min()) > 0 for _, z in draws)  # lognormal draws are positive


def _reference_small_cnn(model, x, alpha, noises):
    """small_cnn written out layer by layer from the paper's t = f(.) + alpha z after every
    activation, taking the noise tensors as given."""
    conv1, _, pool1, conv2, _, pool2, _, linear = model
    h = torch.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=1)) + alpha * noises[0]
    h = F.max_pool2d(h, 2)
    h = torch.relu(F.conv2d(h, conv2.weight, conv2.bias, padding=1)) + alpha * noises[1]
    h = F.max_pool2d(h, 2)
    return F.linear(h.flatten(1), linear.weight, linear.bias)


def test_sampled_prediction_equals_a_slow_reference_fed_the_same_noise(monkeypatch, digits):
    """Accuracy at each n from evaluate_classifier equals a reference that averages the softmax
    of n noisy passes image by image in Python loops, with the same noise tensors."""
    data = _data(digits.x_train[:1500], digits.y_train[:1500], 10, 1460)  # 40 test images
    model = train_classifier(ClassifierConfig(steps=80, batch_size=64, device="cpu"), data).model.eval()
    draws = []
    real_fill = injection.fill_
    monkeypatch.setattr(injection, "fill_", lambda out, d, p, g: draws.append(real_fill(out, d, p, g).clone()) or draws[-1])
    alpha, n_max = 0.8, 6
    rows = evaluate_classifier(model, data, [("gaussian", alpha)], (1, 3, 6), seed=5, batch_size=16)
    assert len(draws) == 2 * n_max * 3  # 2 activations x 6 passes x 3 batches of 16, 16, 8
    x, y = data.x_test, data.y_test
    probs_sum = torch.zeros(len(x), 10)
    want = {}
    with torch.no_grad():
        for k in range(n_max):
            batches = [draws[2 * (3 * k + b):2 * (3 * k + b) + 2] for b in range(3)]
            for j in range(len(x)):
                b, r = divmod(j, 16)
                noises = [batches[b][0][r:r + 1], batches[b][1][r:r + 1]]
                probs_sum[j] += torch.softmax(_reference_small_cnn(model, x[j:j + 1], alpha, noises), 1)[0]
            if k + 1 in (1, 3, 6):
                want[k + 1] = int((probs_sum.argmax(1) == y).sum()) / len(x)
    got = {r["n"]: r["accuracy"] for r in rows}
    assert got == want
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum()) / len(x)
    assert want[6] > 0.5 and want[1] != clean  # a trained model, and the noise is felt


def test_cifar_stem_keeps_resolution_where_the_imagenet_stem_quarters_it():
    """stem="cifar": a 3x3 stride-1 first convolution and no max-pool, so 8 px inputs reach layer1 at 8 px."""
    seen = {}
    for stem in ("imagenet", "cifar"):
        torch.manual_seed(0)
        model = build_classifier("resnet18", 1, 4, 8, stem=stem).eval()
        model.layer1.register_forward_hook(lambda m, i, o, stem=stem: seen.__setitem__(stem, o.shape[-1]))
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    assert seen == {"imagenet": 2, "cifar": 8}
    assert build_classifier("resnet18", 1, 4, 8, stem="cifar").conv1.kernel_size == (3, 3)


def test_the_stem_defaults_to_cifar_up_to_64_px():
    assert ClassifierConfig().stem == "cifar"  # the default data are 32 px
    assert ClassifierConfig(data=DataConfig(image_size=96)).stem == "imagenet"
    assert ClassifierConfig(stem="imagenet").stem == "imagenet"
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, 10, 32, stem=ClassifierConfig().stem)
    seen = []
    model.layer1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    model.eval()(torch.rand(1, 3, 32, 32))
    assert seen == [(32, 32)]  # a cifar-stem ResNet18 keeps 32x32 after its stem


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "densenet121", "efficientnet_b0", "vit_b_32"])
def test_any_torchvision_classifier_by_name_takes_grayscale_digits_with_noise_hooks(arch):
    """The zoo is torchvision's: other families build, take 1-channel 32 px input, and get hooks."""
    torch.manual_seed(0)
    model = _noisy(build_classifier(arch, 1, 4, 32), 0.3).eval()
    model.activation_noise.calls = 0
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)
    assert model.activation_noise.calls > 0


def test_a_model_that_cannot_take_the_image_size_is_refused_when_built():
    with pytest.raises(ConfigError, match="arch='alexnet'"):
        build_classifier("alexnet", 1, 4, 8)

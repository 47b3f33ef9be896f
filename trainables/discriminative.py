"""Activation noise in discriminative classifiers (activation-noise-ebm, Appendix E).

Standard classifiers from the model zoo (torchvision ResNet18/50, VGG16, or a small CNN for local
runs) get the EBM paper's noise t = f(.) + alpha*z after EVERY activation, through forward hooks
(trainables/injection.py), and train with the shared supervised loop (trainables/supervised.py).
Training noise (distribution_train, alpha_train) and test noise (distribution_test, alpha_test)
are set separately; a test prediction averages the softmax over n noisy passes. Paper: 30 epochs,
Adam 1e-3, cosine annealing; noise *hurts* here (Fig. 10/11). Part of the EBM family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from trainables.checks import (ConfigError, check_choice, check_int, check_keys, check_optional_int,
                               check_range)
from trainables.common import (Method, Progress, TrainResult, check_device, configs_from_preset, device_name,
                               resolve_device)
from trainables.cost import (Estimate, measured_per_class, no_projection, price_training, rate_for,
                             supervised_steps, synthetic_data, threads_on, time_steps)
from trainables.data import DataConfig, load_dataset, planned_sizes
from trainables.injection import ActivationNoise, stream_seed
from trainables.models import STEMS, build_model, check_arch, check_widths
from trainables.noise import DISTRIBUTIONS, NoiseParams, make_generator
from trainables.sampling import DrawTally, check_checkpoints, rows_at_checkpoints, rows_at_largest_n
from trainables.supervised import SCHEDULERS, train_supervised

@dataclass(frozen=True)
class ClassifierConfig:
    """One training run of a noisy discriminative classifier (Appendix E)."""

    data: DataConfig = DataConfig()
    arch: str = "small_cnn"  # models.archs(): small_cnn, or any torchvision classifier by name (weights=None)
    hidden: tuple[int, ...] = (128, 128)  # arch mlp: its hidden widths (other archs ignore it)
    # ResNet stem: cifar (3x3 stride 1, no max-pool: the CIFAR-style networks of the paper's ~93.6%
    # baselines) | imagenet (torchvision's 7x7 stride 2 + max-pool) | auto (cifar up to 64 px).
    stem: str = "auto"
    epochs: int = 30  # paper: 30
    batch_size: int = 128  # paper silent; the last incomplete batch of an epoch is dropped
    lr: float = 1e-3  # Adam, default betas (paper)
    scheduler: str = "cosine"  # cosine (annealed per step over the whole run, paper) | none
    distribution_train: str = "gaussian"  # law of z during training (noise.DISTRIBUTIONS)
    alpha_train: float = 0.0  # noise scale during training; 0 = clean training
    placement_train: str = "full"  # classifiers: after every activation, so only "full"
    noise_params: NoiseParams = NoiseParams()  # parameters of the laws, shared by train and test
    seed: int = 0  # initial weights, shuffling and training noise
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    steps: int = 0  # > 0: train exactly this many optimiser steps instead of `epochs`

    def __post_init__(self):
        check_arch(self.arch)
        check_widths("hidden", self.hidden)
        check_choice("stem", self.stem, (*STEMS, "auto"))
        if self.stem == "auto":  # resolved here, so rows record the stem that was built
            object.__setattr__(self, "stem", "cifar" if self.data.image_size <= 64 else "imagenet")
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("distribution_train", self.distribution_train, DISTRIBUTIONS)
        check_range("alpha_train", self.alpha_train, 0.0)
        check_choice("placement_train", self.placement_train, ("full",))
        if not isinstance(self.noise_params, NoiseParams):
            raise ConfigError(f"noise_params={self.noise_params!r} is not allowed; allowed: a NoiseParams")
        check_int("seed", self.seed, 0)
        check_int("steps", self.steps, 0)
        check_device(self.device)


def build_classifier(arch: str, channels: int, num_classes: int, image_size: int,
                     noise_params: NoiseParams = NoiseParams(), stem: str = "imagenet",
                     hidden: tuple[int, ...] = (128, 128)) -> nn.Module:
    """The model with its ActivationNoise attached as `model.activation_noise` (alpha 0 until set)."""
    model = build_model(arch, channels, num_classes, image_size, stem, hidden=hidden)
    model.activation_noise = ActivationNoise(model, noise_params)  # plain attribute, not a submodule
    return model


def train_classifier(cfg: ClassifierConfig, data, callback: Callable[[Progress], object] | None = None,
                     state: dict | None = None) -> TrainResult:
    """Cross-entropy with training noise on (supervised.train_supervised, which documents resume
    and divergence); data stays on the device as tensors."""
    device = resolve_device(cfg.device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    torch.manual_seed(cfg.seed)  # initial weights (and VGG dropout) from the global RNG
    model = build_classifier(cfg.arch, x.shape[1], data.num_classes, x.shape[-1], cfg.noise_params,
                             cfg.stem, cfg.hidden).to(device)
    noise_gen = make_generator(stream_seed(cfg.seed, "train_noise"), device)
    model.activation_noise.set(cfg.distribution_train, cfg.alpha_train, noise_gen)
    res = train_supervised(model, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size,
                           epochs=cfg.epochs, steps=cfg.steps, scheduler=cfg.scheduler,
                           generators={"noise_rng": noise_gen}, callback=callback, state=state)
    res.columns["device_name"] = device_name(device)
    return res


# The row column each test-setting key is written to (placement: after every activation, "full").
SETTING_COLUMNS = {"distribution": "distribution_test", "alpha": "alpha_test", "placement": "placement_test"}


def check_setting(setting) -> tuple[str, float]:
    """(distribution_test, alpha_test) of a test setting: a dict with keys of SETTING_COLUMNS, an
    object with .distribution/.alpha/.placement (the EBM's NoiseSpec), a (distribution, alpha)
    pair, or a dict of distribution_test and alpha_test."""
    if isinstance(setting, dict) and not {"distribution_test", "alpha_test"} & set(setting):
        check_keys("test setting", setting, tuple(SETTING_COLUMNS))
        setting = (setting.get("distribution", "gaussian"), setting.get("alpha", 0.0), setting.get("placement", "full"))
    elif hasattr(setting, "distribution"):
        setting = (setting.distribution, setting.alpha, setting.placement)
    elif isinstance(setting, dict):
        setting = (setting["distribution_test"], setting["alpha_test"], "full")
    if not isinstance(setting, tuple) or len(setting) not in (2, 3):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with keys from "
                          f"{', '.join(SETTING_COLUMNS)}")
    dist, alpha, placement = setting if len(setting) == 3 else (*setting, "full")
    check_choice("placement_test", placement, ("full",))
    check_choice("distribution_test", dist, DISTRIBUTIONS)
    check_range("alpha_test", alpha, 0.0)
    return dist, float(alpha)


def softmax_pass(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(images, classes): the softmax of one forward pass over x, batch by batch (each batch draws
    the model's activation noise as it is set)."""
    return torch.cat([model(x[i:i + batch_size]).softmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, distribution: str, alpha: float, n: int,
                  generator: torch.Generator | None, batch_size: int = 500) -> torch.Tensor:
    """The sampling inference of Appendix E on x: the softmax averaged over `n` passes with test
    noise (distribution, alpha) from `generator` (one deterministic pass when alpha is 0). The
    model's noise setting is restored afterwards."""
    noise = model.activation_noise
    saved, was_training = (noise.distribution, noise.alpha, noise.generator), model.training
    model.eval()
    try:
        noise.set(distribution, alpha, generator)
        k = n if alpha > 0 else 1
        return sum(softmax_pass(model, x, batch_size) for _ in range(k)) / k
    finally:
        noise.set(*saved)
        model.train(was_training)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data, settings, n_checkpoints=(1, 10, 100),
                        cfg: ClassifierConfig | None = None, seed: int | None = None,
                        batch_size: int = 500) -> list[dict]:
    """Accuracy of the softmax averaged over n noisy passes, at every n checkpoint of one stream.

    Passes are the outer loop and each adds its softmax to running sums (sampling.DrawTally), so
    memory is flat in n and the draws of pass k do not depend on n_max: accuracy at n equals a
    fresh run with n_max = n. Each setting's generator is seeded from (seed, setting), seed
    defaulting to cfg.seed. alpha_test = 0 is one deterministic pass, reported at every n with
    n_effective = 1. eval_seconds is the time of the passes up to n. Which draw lands on which
    image depends on batch_size (chunks draw in turn): the eval config's eval_batch_size.
    """
    points = check_checkpoints(n_checkpoints)
    specs = [check_setting(s) for s in settings]
    check_int("batch_size", batch_size, 1)
    seed = (cfg.seed if cfg is not None else 0) if seed is None else seed
    noise = model.activation_noise
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    saved = (noise.distribution, noise.alpha, noise.generator)
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics; activation noise stays on
    rows = []

    def one_pass(d0, d1):  # (classes, images, 1): one noisy pass over the test set, batch by batch
        return softmax_pass(model, x, batch_size).T.unsqueeze(-1)

    try:
        for dist, alpha in specs:
            noise.set(dist, alpha, make_generator(stream_seed(seed, "test", dist, alpha), device))
            tally = DrawTally(points if alpha > 0 else (1,), pick="argmax", moments=False)
            tally.add_block(one_pass, y, points[-1] if alpha > 0 else 1, 1, clock=time.perf_counter)
            setting = {"distribution_test": dist, "alpha_test": alpha, "placement_test": "full"}
            rows += [setting | r for r in rows_at_checkpoints(points, alpha > 0, lambda m, t=tally: {
                "accuracy": t.correct[m] / len(x), "test_images": len(x), "eval_seconds": t.seconds[m]})]
    finally:
        noise.set(*saved)
        model.train(was_training)
    return rows


@dataclass(frozen=True)
class ClassifierEvalConfig:
    """Test-time settings shared by every test setting of one evaluation."""

    n_checkpoints: tuple[int, ...] = (1, 10, 100, 1000)  # accuracy at each number of noisy passes
    eval_seed: int | None = None  # seeds the test-noise generators; None: the trial's seed
    eval_batch_size: int = 500  # test images per forward pass (part of which draw meets which image)

    def __post_init__(self):
        object.__setattr__(self, "n_checkpoints", check_checkpoints(self.n_checkpoints))
        check_optional_int("eval_seed", self.eval_seed, 0)
        check_int("eval_batch_size", self.eval_batch_size, 1)


PRESETS: dict[str, dict] = {
    # Appendix E: CIFAR-10 at 32 px, 30 epochs, Adam 1e-3 with cosine annealing, n = 1000.
    "paper": {"dataset": "cifar10", "arch": "resnet18", "channels": 3},
    # A small CNN on the embedded digits at 16 px, a few minutes on a laptop.
    "quick": {"dataset": "digits", "image_size": 16, "arch": "small_cnn", "steps": 300, "batch_size": 64,
              "n_checkpoints": (1, 10, 100)},
    # Seconds; two epochs of two steps, so a resumed run has a mid-training checkpoint to start from.
    "smoke": {"dataset": "digits", "image_size": 8, "arch": "small_cnn", "steps": 4, "batch_size": 100,
              "train_limit": 20, "test_limit": 30, "n_checkpoints": (1, 4)},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[ClassifierConfig, ClassifierEvalConfig]:
    """Training and evaluation configs of a preset, with `overrides` (any field name) applied."""
    return configs_from_preset(PRESETS, ClassifierConfig(), ClassifierEvalConfig, preset, overrides)


def evaluate(model, data, settings, cfg: ClassifierConfig, ecfg: ClassifierEvalConfig,
             eval_seed: int = 0) -> list[dict]:
    """The Method's evaluate: evaluate_classifier with the eval config, test noise seeded by `eval_seed`."""
    return evaluate_classifier(model, data, settings, ecfg.n_checkpoints, cfg, eval_seed, ecfg.eval_batch_size)


def describe(cfg: ClassifierConfig, ecfg: ClassifierEvalConfig, settings) -> str:
    return (f"{len(settings)} test settings, up to n = {ecfg.n_checkpoints[-1]} noisy passes each "
            f"({cfg.arch} on {cfg.data.dataset}, {cfg.data.image_size} px)")


def cost(cfg: ClassifierConfig, ecfg: ClassifierEvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's projected seconds on `device`: its training steps at the measured rate of this
    network with (or without) training noise, and each test setting's noisy passes (test images x
    n_max; one pass at alpha 0) at the measured rate of one noisy softmax pass of this network."""
    sizes = planned_sizes(cfg.data)
    if sizes is None:
        return no_projection(f"data set {cfg.data.dataset}: its size is known only once loaded")
    side, channels = cfg.data.image_size, cfg.data.channels
    width = f" {'-'.join(map(str, cfg.hidden))}" if cfg.arch == "mlp" else ""
    model = f"{cfg.arch}{width}, {cfg.stem} stem, {sizes.classes} classes, {channels} ch"
    noisy = "noisy" if cfg.alpha_train > 0 else "clean"
    est = Estimate()
    per_class = measured_per_class(cfg.batch_size, sizes.classes)
    price_training(est, "ebm", f"{model}, {noisy} training", side, cfg, supervised_steps(cfg, sizes.train), device,
                   train_classifier, lambda: synthetic_data(sizes.classes, channels, side, per_class, 1))
    passes = sum(sizes.test * (ecfg.n_checkpoints[-1] if alpha > 0 else 1) for _, alpha in map(check_setting, settings))
    if not passes:
        return est

    def measure():  # noisy passes over one batch of random images, on a freshly built network
        net = build_classifier(cfg.arch, channels, sizes.classes, side, cfg.noise_params, cfg.stem,
                               cfg.hidden).to(device)
        x = torch.rand(min(ecfg.eval_batch_size, sizes.test), channels, side, side, device=device)
        run = lambda k: predict_probs(net, x, "gaussian", 0.1, k, make_generator(0, device),  # noqa: E731
                                      ecfg.eval_batch_size).sum().item()
        return time_steps(run) * len(x), threads_on(device)

    key = {"kind": "eval", "family": "ebm", "model": model, "image_size": side,
           "batch_size": min(ecfg.eval_batch_size, sizes.test), "path": "softmax_passes"}
    est.add("evaluation, noisy softmax passes", passes, rate_for(key, device, measure))
    return est


METHOD = Method(
    "discriminative", "ebm", preset_configs, lambda cfg: load_dataset(cfg.data), train_classifier, evaluate,
    check_setting, setting_columns=SETTING_COLUMNS,
    summary_columns=("arch", "distribution_train", "alpha_train", "distribution_test", "alpha_test"),
    final_rows=rows_at_largest_n, describe=describe, cost=cost, diverging={"lr": 1e30})

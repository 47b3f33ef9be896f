"""Activation noise in discriminative classifiers (activation-noise-ebm, Appendix E).

Standard classifiers (torchvision ResNet18/50, VGG16, or a small CNN for local runs) get the EBM
paper's noise t = f(.) + alpha*z after EVERY activation, through forward hooks, so torchvision's
models stay unmodified. Training noise (distribution_train, alpha_train) and test noise
(distribution_test, alpha_test) are set separately; a test prediction averages the softmax over
n noisy passes. Paper: 30 epochs, Adam 1e-3, cosine annealing; noise *hurts* here (Fig. 10/11).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from trainables.common import (STATUS_DIVERGED, STATUS_OK, Method, Progress, TrainResult, check_checkpoints,
                               configs_from_preset,
                               config_row, device_name, resolve_device)
from trainables.data import DataConfig, load_dataset
from trainables.noise import (DISTRIBUTIONS, ConfigError, NoiseParams, NoiseSpec, check_choice,
                              check_int, check_range, fill_, make_generator)

ARCHS = ("small_cnn", "resnet18", "resnet50", "vgg16")
MIN_IMAGE_SIZE = {"small_cnn": 4, "resnet18": 1, "resnet50": 1, "vgg16": 32}  # vgg16: 5 max-pools
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                    nn.Mish, nn.Sigmoid, nn.Tanh)



@dataclass(frozen=True)
class ClassifierConfig:
    """One training run of a noisy discriminative classifier (Appendix E)."""

    data: DataConfig = DataConfig()
    arch: str = "small_cnn"  # small_cnn | resnet18 | resnet50 | vgg16 (torchvision, weights=None)
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
        check_choice("arch", self.arch, ARCHS)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_choice("scheduler", self.scheduler, ("cosine", "none"))
        check_choice("distribution_train", self.distribution_train, DISTRIBUTIONS)
        check_range("alpha_train", self.alpha_train, 0.0)
        check_choice("placement_train", self.placement_train, ("full",))
        if not isinstance(self.noise_params, NoiseParams):
            raise ConfigError(f"noise_params={self.noise_params!r} is not allowed; allowed: a NoiseParams")
        check_int("seed", self.seed, 0)
        check_int("steps", self.steps, 0)
        if self.device != "auto":  # availability is checked where training runs, not here
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"device={self.device!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from exc

    @property
    def noise_train(self) -> NoiseSpec:
        return NoiseSpec(self.distribution_train, self.alpha_train, self.placement_train)


def _seed(*parts) -> int:
    """A 63-bit seed per named stream, so shuffling, training noise and each test setting are independent."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class ActivationNoise:
    """Forward hooks adding alpha*z after every activation module; a module called twice (ResNet's
    shared `relu`) gets fresh noise on each call. Active in eval mode too: test noise is the point."""

    def __init__(self, model: nn.Module, params: NoiseParams = NoiseParams()):
        self.params, self.distribution, self.alpha, self.generator, self.calls = params, "gaussian", 0.0, None, 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, ACTIVATION_TYPES)]

    def set(self, distribution: str, alpha: float, generator: torch.Generator | None) -> None:
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_range("alpha", alpha, 0.0)
        self.distribution, self.alpha, self.generator = distribution, float(alpha), generator

    def _hook(self, module, inputs, output):
        self.calls += 1
        if self.alpha == 0:
            return None
        z = fill_(torch.empty_like(output), self.distribution, self.params, self.generator)
        return output + self.alpha * z  # a new tensor, so inplace ReLUs are fine

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _small_cnn(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Two conv-ReLU-pool blocks and a linear layer: seconds per epoch on CPU for local runs."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, num_classes))


def build_classifier(arch: str, channels: int, num_classes: int, image_size: int,
                     noise_params: NoiseParams = NoiseParams()) -> nn.Module:
    """The model with its ActivationNoise attached as `model.activation_noise` (alpha 0 until set)."""
    check_choice("arch", arch, ARCHS)
    if image_size < MIN_IMAGE_SIZE[arch]:
        raise ConfigError(f"image_size={image_size} is too small for arch={arch!r}; "
                          f"allowed: image_size >= {MIN_IMAGE_SIZE[arch]}")
    if arch == "small_cnn":
        model = _small_cnn(channels, num_classes, image_size)
    elif arch == "vgg16":
        model = torchvision.models.vgg16(weights=None, num_classes=num_classes)
        if channels != 3:
            model.features[0] = nn.Conv2d(channels, 64, 3, padding=1)
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if channels != 3:
            model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    model.activation_noise = ActivationNoise(model, noise_params)  # plain attribute, not a submodule
    return model


def train_classifier(cfg: ClassifierConfig, data, callback: Callable[[Progress], object] | None = None,
                     state: dict | None = None) -> TrainResult:
    """Adam + cross-entropy with training noise on; data stays on the device as tensors.

    `callback(Progress)` runs after every epoch (returning True stops early); Progress.state()
    is a checkpoint dict for `torch.load(weights_only=True)`, and passing it back as `state`
    resumes to the same final weights as an uninterrupted run. A non-finite loss ends training
    with status "diverged" (the model keeps its last finite weights) instead of raising.
    Bit-identical per seed on CPU (for a fixed thread count); on CUDA only with
    torch.backends.cudnn.deterministic = True, left to the caller since it costs speed.
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    torch.manual_seed(cfg.seed)  # initial weights (and VGG dropout) from the global RNG
    model = build_classifier(cfg.arch, x.shape[1], data.num_classes, x.shape[-1], cfg.noise_params).to(device)
    noise_gen = make_generator(_seed(cfg.seed, "train_noise"), device)
    model.activation_noise.set(cfg.distribution_train, cfg.alpha_train, noise_gen)
    shuffle_gen = make_generator(_seed(cfg.seed, "shuffle"), "cpu")  # same order on every device
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bs = min(cfg.batch_size, len(x))
    per_epoch = len(x) // bs  # drop the ragged tail: no size-1 batches for BatchNorm
    total_steps = cfg.steps or cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if cfg.scheduler == "cosine" else None
    epoch, step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        noise_gen.set_state(state["noise_rng"].cpu())
        shuffle_gen.set_state(state["shuffle_rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])

    def state_fn() -> dict:  # deep copy: the live tensors keep changing after the callback
        snap = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else {},
                "epoch": epoch, "step": step, "history": list(history),
                "noise_rng": noise_gen.get_state(), "shuffle_rng": shuffle_gen.get_state(),
                "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":
            snap["cuda_rng"] = torch.cuda.get_rng_state(device)
        return copy.deepcopy(snap)

    model.train()
    while step < total_steps:
        perm = torch.randperm(len(x), generator=shuffle_gen).to(device)
        loss_sum, count = 0.0, 0
        for i in range(min(per_epoch, total_steps - step)):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            value = loss.item()
            if not math.isfinite(value):
                model.eval()
                return TrainResult(model, STATUS_DIVERGED, epoch, history, time.perf_counter() - start,
                                   f"non-finite loss {value} at epoch {epoch + 1}, step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step, loss_sum, count = step + 1, loss_sum + value, count + 1
        epoch += 1
        history.append(loss_sum / count)
        if callback is not None and callback(Progress(epoch, history[-1], state_fn)) is True:
            break
    model.eval()
    return TrainResult(model, STATUS_OK, epoch, history, time.perf_counter() - start)


def _test_setting(setting) -> tuple[str, float]:
    """(distribution_test, alpha_test) from a NoiseSpec or its keyword dict, a (distribution, alpha)
    pair, or a dict of distribution_test and alpha_test."""
    if isinstance(setting, dict) and "distribution" in setting:
        setting = NoiseSpec(**setting)
    if isinstance(setting, NoiseSpec):
        check_choice("placement_test", setting.placement, ("full",))
        dist, alpha = setting.distribution, setting.alpha
    elif isinstance(setting, dict):
        dist, alpha = setting["distribution_test"], setting["alpha_test"]
    else:
        dist, alpha = setting
    check_choice("distribution_test", dist, DISTRIBUTIONS)
    check_range("alpha_test", alpha, 0.0)
    return dist, float(alpha)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data, settings, n_checkpoints=(1, 10, 100),
                        cfg: ClassifierConfig | None = None, seed: int | None = None,
                        batch_size: int = 500) -> list[dict]:
    """Accuracy of the softmax averaged over n noisy passes, at every n checkpoint of one stream.

    Passes are the outer loop and each adds its softmax to running sums (N, C), so memory is
    flat in n and the draws of pass k do not depend on n_max: accuracy at n equals a fresh run
    with n_max = n. Each setting's generator is seeded from (seed, setting), seed defaulting to
    cfg.seed. alpha_test = 0 is one deterministic pass, reported at every n with n_effective = 1.
    eval_seconds is the time of the passes up to n. Which draw lands on which image depends on
    batch_size (chunks draw in turn), so it is recorded as eval_batch_size.
    """
    points = check_checkpoints(n_checkpoints)
    specs = [_test_setting(s) for s in settings]
    check_int("batch_size", batch_size, 1)
    seed = (cfg.seed if cfg is not None else 0) if seed is None else seed
    noise = model.activation_noise
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    base = (config_row(cfg) if cfg is not None else {}) | {"device_name": device_name(device)}
    saved = (noise.distribution, noise.alpha, noise.generator)
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics; activation noise stays on
    rows = []
    try:
        for dist, alpha in specs:
            noise.set(dist, alpha, make_generator(_seed(seed, "test", dist, alpha), device))
            passes = points[-1] if alpha > 0 else 1
            sums = torch.zeros(len(x), data.num_classes, dtype=torch.float64, device=device)
            found, t0 = {}, time.perf_counter()
            for k in range(1, passes + 1):
                for i in range(0, len(x), batch_size):
                    sums[i:i + batch_size] += model(x[i:i + batch_size]).softmax(1)
                if k in points or k == passes:
                    acc = (sums.argmax(1) == y).double().mean().item()
                    found[k] = (acc, time.perf_counter() - t0)
            for n in points:
                m = n if alpha > 0 else 1
                rows.append(base | {"distribution_test": dist, "alpha_test": alpha, "placement_test": "full",
                                    "n": n, "n_effective": m, "accuracy": found[m][0],
                                    "test_images": len(x), "eval_batch_size": batch_size,
                                    "eval_seconds": found[m][1]})
    finally:
        noise.set(*saved)
        model.train(was_training)
    return rows


@dataclass(frozen=True)
class ClassifierEvalConfig:
    """Test-time settings shared by every test setting of one evaluation."""

    n_checkpoints: tuple[int, ...] = (1, 10, 100, 1000)  # accuracy at each number of noisy passes
    eval_seed: int = 0  # seeds the test-noise generators
    eval_batch_size: int = 500  # test images per forward pass (part of which draw meets which image)

    def __post_init__(self):
        object.__setattr__(self, "n_checkpoints", check_checkpoints(self.n_checkpoints))
        check_int("eval_seed", self.eval_seed, 0)
        check_int("eval_batch_size", self.eval_batch_size, 1)


PRESETS: dict[str, dict] = {
    # Appendix E: CIFAR-10 at 32 px, 30 epochs, Adam 1e-3 with cosine annealing, n = 1000.
    "paper": {"dataset": "cifar10", "arch": "resnet18", "channels": 3},
    # A small CNN on the embedded digits at 16 px, a few minutes on a laptop.
    "quick": {"dataset": "digits", "image_size": 16, "arch": "small_cnn", "steps": 300, "batch_size": 64,
              "n_checkpoints": (1, 10, 100)},
    "smoke": {"dataset": "digits", "image_size": 8, "arch": "small_cnn", "steps": 3, "batch_size": 16,
              "train_limit": 20, "test_limit": 30, "n_checkpoints": (1, 4)},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[ClassifierConfig, ClassifierEvalConfig]:
    """Training and evaluation configs of a preset, with `overrides` (any field name) applied."""
    return configs_from_preset(PRESETS, ClassifierConfig(), ClassifierEvalConfig, preset, overrides)


def _evaluate(model, data, settings, cfg: ClassifierConfig, ecfg: ClassifierEvalConfig) -> list[dict]:
    rows = evaluate_classifier(model, data, settings, ecfg.n_checkpoints, cfg, ecfg.eval_seed, ecfg.eval_batch_size)
    return [r | config_row(ecfg) for r in rows]


METHOD = Method("discriminative", preset_configs, lambda cfg: load_dataset(cfg.data), train_classifier, _evaluate)

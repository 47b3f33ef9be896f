"""Variational positive-incentive noise, VPN (papers/variational-pi-noise.txt, PROTOCOLS sec. 2).

A generator g(x, y) outputs a per-pixel std sigma(x, y) >= 0; the noise is eps = sigma * z with
z ~ N(0, I) (zero mean, diagonal: the paper's Eq. 16), drawn by reparameterisation so gradients
reach g. The label enters as x + label_coeff * y / (C - 1) on every pixel (Sec. 3.3).

- Training (Algorithm 1): cross-entropy of f(x + eps) over `noise_draws` (m) draws per example,
  plus `clean_loss_weight` * cross-entropy of f(x) (0, as the authors' code). `joint` trains f and
  g with one optimiser; `frozen` (Table IV) first trains f alone, exactly as the matching baseline
  trial does (same seed, schedule and shuffling: the same weights on the same machine), then
  trains g against it with f's weights and BatchNorm statistics left untouched.
- Inference (Algorithm 2): every class hypothesis c gets its own noise eps_c ~ g(x, c), and the
  prediction is argmax_c softmax(f(x + eps_c))[c], averaged over `n_draws` draws; the C
  hypotheses run as one batched forward pass per draw. "clean" inference is f(x) (the paper's
  "No Noise" rows).
- Baselines: the same base model and schedule with no generator and a training augmentation
  (trainables/augment.py).

Every row carries the two diagnostics without which a VPN verdict means nothing: `std_ratio`,
the mean generated std over the test images' std (is there any noise at all?), and
`label_leak_rate`, the share of (image, hypothesis c) pairs for which f(x + eps_c) alone predicts
c (has the generator learnt to write the hypothesis into the noise? chance is 1/C).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import AugmentConfig, augment
from trainables.checks import ConfigError, check_choice, check_int, check_keys, check_optional_int, check_range
from trainables.common import (STATUS_OK, Method, Progress, TrainResult, check_device, configs_from_preset,
                               device_name, resolve_device)
from trainables.cost import (Estimate, measured_per_class, no_projection, price_training, supervised_steps,
                             synthetic_data)
from trainables.data import DataConfig, load_dataset, planned_sizes
from trainables.injection import stream_seed
from trainables.models import STEMS, build_model, check_arch, check_widths
from trainables.noise import make_generator
from trainables.supervised import SCHEDULERS, train_supervised

GENERATORS = ("none", "dnn3", "resnet18")
MODES = ("joint", "frozen")
STD_ACTIVATIONS = {"abs": torch.abs, "softplus": F.softplus, "exp": torch.exp}
INFERENCES = ("vpn", "clean")


@dataclass(frozen=True)
class VPNConfig:
    """One training run: a base model f with a generator g, or with a baseline augmentation."""

    data: DataConfig = DataConfig()
    base: str = "dnn3"  # models.archs(): softmax_regression, dnn3, mlp, resnet18/34/50, vit_small, ...
    hidden: tuple[int, ...] = (128, 128)  # base mlp: its hidden widths (other bases ignore it)
    stem: str = "auto"  # ResNet stem: cifar (3x3, no max-pool) | imagenet | auto (cifar up to 64 px)
    patch_size: int = 4  # vit_small's patch side; must divide image_size
    generator: str = "none"  # none (a baseline) | dnn3 (d-1024-1024-d MLP) | resnet18 (its fc outputs d)
    mode: str = "joint"  # joint (f and g together, Table I/II) | frozen (g on a trained, frozen f, Table IV)
    std_activation: str = "abs"  # makes sigma >= 0: abs (authors' code) | softplus | exp
    std_cap: float = 0.0  # > 0: sigma = min(sigma, cap) (the paper's optional restriction); 0 = none
    label_coeff: float = 0.01  # label input: x + coeff * y / (C - 1) (authors' code)
    generator_init_std: float = 0.002  # generator Linear weights ~ N(0, this), zero bias: sigma starts near 0
    noise_draws: int = 1  # m: reparameterised draws per training example (paper: 1; Fig. 4 sweeps it)
    clean_loss_weight: float = 0.0  # weight of CE(f(x), y) added to the VPN loss (authors' code: 0)
    epoch_test_accuracy: bool = True  # after each epoch, f's clean test accuracy (Fig. 3 and 4's curves)
    augment: AugmentConfig = AugmentConfig()  # the baseline's augmentation (generator none only)
    epochs: int = 40  # paper: 40 for shallow models, 100 for ResNets
    batch_size: int = 256  # paper: 256 (128 on Tiny ImageNet)
    lr: float = 1e-3  # Adam, default betas (paper's lr; the authors' code uses SGD 0.1)
    scheduler: str = "none"  # none (the paper names none) | cosine
    seed: int = 0  # initial weights, shuffling, augmentation and training noise
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    steps: int = 0  # > 0: exactly this many optimiser steps per phase instead of `epochs`

    def __post_init__(self):
        check_arch(self.base, "base")
        check_widths("hidden", self.hidden)
        check_choice("stem", self.stem, (*STEMS, "auto"))
        if self.stem == "auto":  # resolved here, so rows record the stem that was built
            object.__setattr__(self, "stem", "cifar" if self.data.image_size <= 64 else "imagenet")
        check_int("patch_size", self.patch_size, 1)
        if self.base == "vit_small" and self.data.image_size % self.patch_size:
            raise ConfigError(f"patch_size={self.patch_size} does not divide image_size={self.data.image_size}; "
                              f"allowed: a divisor of {self.data.image_size}")
        check_choice("generator", self.generator, GENERATORS)
        check_choice("mode", self.mode, MODES)
        if self.mode == "frozen" and self.generator == "none":
            raise ConfigError("mode='frozen' needs a generator to train on the frozen base model; "
                              f"allowed: generator in {', '.join(GENERATORS[1:])}, or mode='joint'")
        if self.generator != "none" and self.augment.augmentation != "none":
            raise ConfigError(f"augmentation={self.augment.augmentation!r} is a baseline, not used with a generator; "
                              "allowed: augmentation='none' when generator is set")
        check_choice("std_activation", self.std_activation, tuple(STD_ACTIVATIONS))
        check_range("std_cap", self.std_cap, 0.0)
        check_range("label_coeff", self.label_coeff, 0.0)
        check_range("generator_init_std", self.generator_init_std, 0.0)
        check_int("noise_draws", self.noise_draws, 1)
        check_range("clean_loss_weight", self.clean_loss_weight, 0.0)
        if not isinstance(self.epoch_test_accuracy, bool):
            raise ConfigError(f"epoch_test_accuracy={self.epoch_test_accuracy!r} is not allowed; allowed: True, False")
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_int("seed", self.seed, 0)
        check_int("steps", self.steps, 0)
        check_device(self.device)


@dataclass(frozen=True)
class VPNEvalConfig:
    """Test-time settings of Algorithm 2."""

    n_draws: int = 1  # noises per class hypothesis; their scores are averaged (authors' code: 1)
    eval_seed: int | None = None  # seeds the test noise; None: the trial's seed
    eval_batch_size: int = 64  # test images per batch (x C hypotheses); which draw meets which image
    std_map_images: int = 8  # test images whose learned std map (at their true label) is saved
    inert_std_ratio: float = 0.01  # learned std below this share of the input's std: the generator is inert

    def __post_init__(self):
        check_int("n_draws", self.n_draws, 1)
        check_range("inert_std_ratio", self.inert_std_ratio, 0.0)
        check_optional_int("eval_seed", self.eval_seed, 0)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_int("std_map_images", self.std_map_images, 0)


class Generator(nn.Module):
    """sigma(x, y): a network from x + coeff * y / (C - 1) to one non-negative std per pixel."""

    def __init__(self, arch: str, shape: tuple[int, int, int], num_classes: int, label_coeff: float,
                 std_activation: str, std_cap: float, init_std: float, stem: str):
        super().__init__()
        channels, size, _ = shape
        d = channels * size * size
        self.shape, self.num_classes, self.label_coeff = shape, num_classes, label_coeff
        self.std_activation, self.std_cap = std_activation, std_cap
        self.net = build_model(arch, channels, d, size, stem)
        for m in self.net.modules():  # the authors' init: sigma starts near 0
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = self.label_coeff * y.to(x.dtype) / max(1, self.num_classes - 1)
        sigma = STD_ACTIVATIONS[self.std_activation](self.net(x + label.view(-1, 1, 1, 1)))
        if self.std_cap > 0:
            sigma = sigma.clamp(max=self.std_cap)
        return sigma.view(x.shape)


class VPNModel(nn.Module):
    """f with an optional generator g. forward(x) is f(x); noisy(x, y, z) is f(x + sigma(x, y) z)."""

    def __init__(self, base: nn.Module, generator: Generator | None, frozen_base: bool = False):
        super().__init__()
        self.base, self.generator, self.frozen_base = base, generator, frozen_base
        if frozen_base:
            self.base.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_base:  # BatchNorm statistics of a frozen f must not move
            self.base.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)

    def noisy(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
              sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of f(x + sigma z), sigma) for standard normal z of x's shape; `sigma`, the
        generator's output for (x, y) if already computed (it does not depend on z)."""
        sigma = self.generator(x, y) if sigma is None else sigma
        return self.base(x + sigma * z), sigma


def _base(cfg: VPNConfig, shape, num_classes) -> nn.Module:
    return build_model(cfg.base, shape[0], num_classes, shape[1], cfg.stem, cfg.patch_size, cfg.hidden)


def _generator(cfg: VPNConfig, shape, num_classes) -> Generator:
    return Generator(cfg.generator, shape, num_classes, cfg.label_coeff, cfg.std_activation, cfg.std_cap,
                     cfg.generator_init_std, cfg.stem)


def train_vpn(cfg: VPNConfig, data, callback: Callable[[Progress], object] | None = None,
              state: dict | None = None) -> TrainResult:
    """Train per cfg.mode on the shared supervised loop; artefacts hold the mean generated std
    per epoch (`std_history`), so a collapse of sigma to 0 can be seen. Frozen mode's epochs
    count on from the base phase's, and its checkpoints say which phase they are in."""
    device = resolve_device(cfg.device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    shape, classes = tuple(x.shape[1:]), data.num_classes
    torch.manual_seed(cfg.seed)  # initial weights of f, then of g, from the global RNG
    base = _base(cfg, shape, classes).to(device)
    common = dict(seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs, steps=cfg.steps,
                  scheduler=cfg.scheduler)
    start = time.perf_counter()
    curves = EpochCurves(cfg, data, device, state)

    if cfg.generator == "none":
        def baseline_loss(model, xb, yb):
            logits = model(augment(cfg.augment, xb))
            curves.count(logits, yb)
            return F.cross_entropy(logits, yb)
        res = train_supervised(base, x, y, batch_loss=baseline_loss,
                               callback=curves.wrap(base, _phased(callback, "base", 0)), state=state, **common)
        return _result(cfg, VPNModel(base, None), res, start, [], [], curves=curves)

    resumed = state if state is not None and state.get("phase") == "vpn" else None
    base_epochs, base_history = 0, []
    if resumed is not None:
        base_epochs, base_history = int(resumed["base_epochs"]), list(resumed["base_history"])
    elif cfg.mode == "frozen":  # phase 1: f alone, as the baseline trial trains it
        def base_loss(model, xb, yb):
            logits = model(xb)
            curves.count(logits, yb)
            return F.cross_entropy(logits, yb)
        res = train_supervised(base, x, y, batch_loss=base_loss,
                               callback=curves.wrap(base, _phased(callback, "base", 0, phases=2)), state=state,
                               **common)
        if res.status != STATUS_OK or res.epochs_done < _epochs(cfg, len(x)):
            return _result(cfg, VPNModel(base, None), res, start, [], [], curves=curves)  # diverged or stopped
        base_epochs, base_history = res.epochs_done, list(res.history)
    model = VPNModel(base, _generator(cfg, shape, classes).to(device), frozen_base=cfg.mode == "frozen")
    noise_gen = make_generator(stream_seed(cfg.seed, "vpn_train_noise"), device)
    stds: list[float] = list(resumed["std_history"]) if resumed is not None else []
    epoch_std = [0.0, 0]

    def vpn_loss(m, xb, yb):
        xs, ys = xb.repeat(cfg.noise_draws, 1, 1, 1), yb.repeat(cfg.noise_draws)
        logits, sigma = m.noisy(xs, ys, torch.randn(xs.shape, generator=noise_gen, device=device))
        curves.count(logits, ys)
        epoch_std[0] += float(sigma.detach().mean())
        epoch_std[1] += 1
        loss = F.cross_entropy(logits, ys)
        return loss + cfg.clean_loss_weight * F.cross_entropy(m(xb), yb) if cfg.clean_loss_weight else loss

    def on_epoch(p: Progress):
        stds.append(epoch_std[0] / max(1, epoch_std[1]))
        epoch_std[:] = [0.0, 0]
        extra = {"std_history": list(stds), "base_epochs": base_epochs, "base_history": base_history,
                 "curves": curves.state()}
        return _phased(callback, "vpn", base_epochs, extra, 2 if cfg.mode == "frozen" else 1)(p) \
            if callback is not None else None

    res = train_supervised(model, x, y, batch_loss=vpn_loss, generators={"vpn_noise_rng": noise_gen},
                           callback=curves.wrap(model, on_epoch), state=resumed,
                           **common)
    return _result(cfg, model, res, start, stds, base_history, base_epochs, curves)


def _epochs(cfg: VPNConfig, n: int) -> int:
    per_epoch = n // min(cfg.batch_size, n)
    return -(-cfg.steps // per_epoch) if cfg.steps else cfg.epochs


def _phased(callback, phase: str, offset: int, extra: dict | None = None, phases: int = 1):
    """The trial's callback with epochs counted across phases, the phase in the checkpoint, and
    the share done of the whole training (`phases`: 2 when a base phase precedes the generator's)."""
    if callback is None:
        return None
    before = 1 if phase == "vpn" and phases == 2 else 0
    return lambda p: callback(Progress(p.epoch + offset, p.loss, lambda: p.state() | {"phase": phase} | (extra or {}),
                                       (p.done + before) / phases))


class EpochCurves:
    """Per epoch (the paper's Fig. 3): the training loss, the training accuracy of the forward
    passes the loss saw (noisy ones under a generator), and, with `epoch_test_accuracy`, f's clean
    test accuracy after the epoch. Kept in checkpoints, so a resumed trial's curves are whole."""

    def __init__(self, cfg: VPNConfig, data, device, state: dict | None):
        self.test = cfg.epoch_test_accuracy
        self.x_test, self.y_test = (data.x_test.to(device), data.y_test.to(device)) if self.test else (None, None)
        saved = (state or {}).get("curves") or {}
        self.loss, self.train_acc, self.test_acc = (list(saved.get(k, [])) for k in ("loss", "train", "test"))
        self.right, self.seen = 0, 0

    def count(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.right += int((logits.detach().argmax(1) == y).sum())
        self.seen += len(y)

    def wrap(self, f_of, callback):
        """The epoch callback, closing the epoch's curves first (f_of: the model whose f is tested)."""
        def on_epoch(p: Progress):
            self.loss.append(float(p.loss))
            self.train_acc.append(self.right / max(1, self.seen))
            self.right, self.seen = 0, 0
            if self.test:
                f = f_of.base if isinstance(f_of, VPNModel) else f_of
                was = f.training
                f.eval()
                with torch.no_grad():
                    right = sum(int((f(self.x_test[i:i + 1024]).argmax(1) == self.y_test[i:i + 1024]).sum())
                                for i in range(0, len(self.x_test), 1024))
                f.train(was)
                self.test_acc.append(right / len(self.x_test))
            if callback is None:
                return None
            return callback(Progress(p.epoch, p.loss, lambda: p.state() | {"curves": self.state()}, p.done))
        return on_epoch

    def state(self) -> dict:
        return {"loss": list(self.loss), "train": list(self.train_acc), "test": list(self.test_acc)}

    def arrays(self) -> dict:
        out = {"epoch_loss": np.asarray(self.loss, float), "epoch_train_accuracy": np.asarray(self.train_acc, float)}
        if self.test:
            out["epoch_test_accuracy"] = np.asarray(self.test_acc, float)
        return out if self.loss else {}


def _result(cfg: VPNConfig, model: VPNModel, res: TrainResult, start: float, stds, base_history,
            base_epochs: int = 0, curves: EpochCurves | None = None) -> TrainResult:
    model.eval()
    artefacts = {"std_history": torch.tensor(stds, dtype=torch.float64).numpy()} if stds else {}
    artefacts |= curves.arrays() if curves is not None else {}
    columns = {"device_name": device_name(next(model.parameters()).device),
               "frozen_base": "trained_in_trial" if cfg.mode == "frozen" else ""}
    return TrainResult(model, res.status, res.epochs_done + base_epochs, [*base_history, *res.history],
                       time.perf_counter() - start, res.message, artefacts, columns)


# ---------------------------------------------------------------------------------------------
# Inference


def check_setting(setting) -> str:
    """A test setting is {"inference": "vpn" | "clean"} (or the checked name itself)."""
    if isinstance(setting, str):
        return check_choice("inference", setting, INFERENCES) or setting
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with key inference")
    check_keys("test setting", setting, ("inference",))
    check_choice("inference", setting.get("inference", "clean"), INFERENCES)
    return setting.get("inference", "clean")


def vpn_scores(model: VPNModel, x: torch.Tensor, num_classes: int, n_draws: int, gen: torch.Generator,
               batch_images: int = 64, grad: bool = False, shared: bool = False) -> dict[str, torch.Tensor]:
    """Algorithm 2 on x (N, C, H, W): `score` (N, classes), softmax(f(x + eps_c))[c] averaged over
    draws; `leak` (N,), the share of hypotheses c (over classes and draws) for which f(x + eps_c)
    predicts c; `sigma_mean` (N,), the mean generated std over hypotheses, draws and pixels.
    Per batch of images and per draw, all C hypotheses go through f as one batch of N*C.
    `grad`: keep the graph, so an attack can take the gradient of the scores with respect to x.
    `shared`: the n_draws standard normals z are drawn once per (draw, hypothesis) and shared by
    every image (each still scaled by its own generated std), so an image's scores do not depend on
    which images share its call: what an attack with fixed draws needs (corruptions.DrawMean)."""
    common = [torch.randn((num_classes, 1, *x.shape[1:]), generator=gen, device=x.device) for _ in range(n_draws)] \
        if shared else None
    with torch.set_grad_enabled(grad):
        return _vpn_scores(model, x, num_classes, n_draws, gen, batch_images, common)


def _vpn_scores(model, x, num_classes, n_draws, gen, batch_images, common=None) -> dict[str, torch.Tensor]:
    scores, leaks, sigmas = [], [], []
    for i in range(0, len(x), batch_images):
        xb = x[i:i + batch_images]
        b = len(xb)
        xs = xb.repeat(num_classes, 1, 1, 1)  # hypothesis-major: row c*b + j is image j under class c
        ys = torch.arange(num_classes, device=x.device).repeat_interleave(b)
        score = torch.zeros(num_classes, b, device=x.device)
        leak = torch.zeros(b, device=x.device)
        sigma_sum = torch.zeros(b, device=x.device)
        sigma = model.generator(xs, ys)  # once for every draw: the generator does not see z
        for d in range(n_draws):
            z = (common[d].expand(num_classes, b, *xs.shape[1:]).reshape(xs.shape) if common is not None
                 else torch.randn(xs.shape, generator=gen, device=x.device))
            logits, _ = model.noisy(xs, ys, z, sigma)
            probs = logits.float().softmax(1).view(num_classes, b, num_classes)
            score = score + torch.diagonal(probs, dim1=0, dim2=2).T  # [c, j] = probs[c, j, c]
            leak += (probs.argmax(2) == torch.arange(num_classes, device=x.device)[:, None]).float().sum(0)
            sigma_sum += sigma.detach().view(num_classes, b, -1).mean(2).sum(0)
        scores.append((score / n_draws).T)
        leaks.append(leak / (n_draws * num_classes))
        sigmas.append(sigma_sum / (n_draws * num_classes))
    return {"score": torch.cat(scores), "leak": torch.cat(leaks), "sigma_mean": torch.cat(sigmas)}


def evaluate(model: VPNModel, data, settings, cfg: VPNConfig, ecfg: VPNEvalConfig, eval_seed: int = 0):
    """One row per inference; VPN rows carry std_mean, std_ratio and label_leak_rate. Arrays:
    the learned std maps of the first test images at their true labels, with the images."""
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    base = {"test_images": len(x), "input_std": float(x.std())}
    model.eval()
    rows, arrays = [], {}
    for inference in (check_setting(s) for s in settings):
        t0 = time.perf_counter()
        extra = {"std_mean": float("nan"), "std_ratio": float("nan"), "label_leak_rate": float("nan")}
        if inference == "clean":
            with torch.no_grad():
                pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        else:
            if model.generator is None:
                raise ConfigError("inference='vpn' needs a generator; allowed: inference='clean' when generator='none'")
            gen = make_generator(stream_seed(eval_seed, "vpn_test"), device)
            out = vpn_scores(model, x, data.num_classes, ecfg.n_draws, gen, ecfg.eval_batch_size)
            pred = out["score"].argmax(1)
            std_mean = float(out["sigma_mean"].mean())
            extra = {"std_mean": std_mean, "std_ratio": std_mean / max(float(x.std()), 1e-12),
                     "label_leak_rate": float(out["leak"].mean())}
            if ecfg.std_map_images and "std_map" not in arrays:
                k = min(ecfg.std_map_images, len(x))
                with torch.no_grad():
                    arrays["std_map"] = model.generator(x[:k], y[:k]).cpu().numpy()
                arrays["std_map_images"] = x[:k].cpu().numpy()
                arrays["std_map_labels"] = y[:k].cpu().numpy()
        rows.append(base | extra | {"inference": inference, "accuracy": float((pred == y).float().mean()),
                                    "eval_seconds": time.perf_counter() - t0})
    return rows, arrays


PRESETS: dict[str, dict] = {
    # The paper: Fashion-MNIST (28 px) and CIFAR-10 (32 px; experiments set dataset, channels and
    # epochs per base model), Adam 1e-3, batch 256, 40 epochs (100 for ResNets).
    "paper": {"dataset": "fashion_mnist", "image_size": 28, "channels": 1},
    # The embedded digits at their native 8 px: SR and DNN3 trials take seconds on a laptop CPU.
    "quick": {"dataset": "digits", "image_size": 8, "epochs": 40, "batch_size": 64},
    # Seconds: for tests and for checking that a pipeline runs end to end.
    "smoke": {"dataset": "digits", "image_size": 8, "steps": 4, "batch_size": 100, "train_limit": 20,
              "test_limit": 30, "std_map_images": 2},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[VPNConfig, VPNEvalConfig]:
    """Training and evaluation configs of a preset, with `overrides` (any field name) applied."""
    return configs_from_preset(PRESETS, VPNConfig(), VPNEvalConfig, preset, overrides)


def describe(cfg: VPNConfig, ecfg: VPNEvalConfig, settings) -> str:
    what = f"generator {cfg.generator} ({cfg.mode})" if cfg.generator != "none" else f"augmentation {cfg.augment.augmentation}"
    return f"{cfg.base} with {what} on {cfg.data.dataset}; inference {', '.join(check_setting(s) for s in settings)}"


def cost(cfg: VPNConfig, ecfg: VPNEvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's training seconds on `device` (steps per phase at the measured rate of this base,
    generator and mode; a frozen run's rate counts a base step and a generator step together). Not
    priced: the per-epoch test accuracy (epoch_test_accuracy) and the inference rows."""
    sizes = planned_sizes(cfg.data)
    if sizes is None:
        return no_projection(f"data set {cfg.data.dataset}: its size is known only once loaded")
    est, n = Estimate(), sizes.train
    model = (f"{cfg.base}, generator {cfg.generator} ({cfg.mode}), m {cfg.noise_draws}, augmentation "
             f"{cfg.augment.augmentation}, {sizes.classes} classes, {cfg.data.channels} ch")
    per_class = measured_per_class(cfg.batch_size, sizes.classes)
    price_training(est, "vpn", model, cfg.data.image_size, cfg, supervised_steps(cfg, n), device, train_vpn,
                   lambda: synthetic_data(sizes.classes, cfg.data.channels, cfg.data.image_size, per_class, 64),
                   what="training" if cfg.mode == "joint" else "training, per phase (base, then generator)")
    return est


def final_rows(rows: list[dict]) -> list[dict]:
    """The headline is the method's own inference: VPN rows where there are any, else clean."""
    vpn = [r for r in rows if r.get("inference") == "vpn"]
    return vpn or rows


METHOD = Method(
    "vpn", "vpn", preset_configs, lambda cfg: load_dataset(cfg.data), train_vpn, evaluate, check_setting,
    setting_columns={"inference": "inference"},
    summary_columns=("base", "generator", "mode", "augmentation", "noise_draws", "inference"),
    final_rows=final_rows, describe=describe, cost=cost, diverging={"lr": 1e30})

METHODS = [METHOD]

"""Noise injection node regularisation, NINR (papers/noise-injection-nodes.txt, PROTOCOLS sec. 3).

A noise injection node (NIN) is an extra input unit carrying eps ~ N(0, sigma_eps^2), fresh per
example, wired into a layer's pre-activations by learnable noise injection weights (NIWs): for a
Linear layer h += w * eps (w one weight per unit, eps one scalar per example); for a Conv2d
layer h[:, c] += w[c] * eps (eps one value per example and pixel: a noise image, w a weight per
channel). `in` wires a NIN into the first layer only, `full` into every Linear/Conv2d layer
(the output layer included). NINs are forward hooks, so any model of the zoo can carry them;
at test time they are off unless `test_noise` is set.

Phases (the authors' companion paper names four): for plain SGD the NIWs follow
w <- (1 - eta * lambda) w + random walk, lambda the curvature of the loss along the NIWs (which
carries sigma_eps^2). Each run logs the NIW norm at every step and is classified by `phase_of`:

- divergent: a non-finite loss or norm, or a final norm of at least `phase_divergence` x the
  initial one;
- failed: the network learned nothing: its final training loss (mean of the last 10% of steps)
  is at least `phase_failed_share` x the chance loss (the loss of the best constant prediction:
  the entropy of the training labels, or the targets' variance for the toy), or its training
  accuracy is within `phase_chance_margin` of the largest class share; also a final loss above
  the first. Never a learning phase;
- catapult: the norm rose to at least `phase_growth` x its lowest value so far (the initial norm,
  or a trough after a decay: a rise after a trough is a catapult) and to at least the initial
  norm (a random walk around a decayed norm is not one);
- decay: the norm's trough is at most `phase_shrink` x the initial one, or so is the exponential
  factor fitted to log norm over the first `phase_fit_share` of steps, carried over the whole run
  (the poster: "for small noise the NIWs decay"; a random walk can hold the end above the trough);
- decoupled: otherwise (the noise is too small to move the NIWs).

The top eigenvalue lambda of the Hessian of the loss with respect to the NIWs is estimated at
`hessian_points` steps by power iteration on torch.func Hessian-vector products (one batch, its
noise held fixed). The predicted phase reads lambda at step 0: catapult (or worse) where
|1 - eta * lambda| >= 1, i.e. eta * lambda >= 2; decoupled where the decay factor over the run,
(1 - eta * lambda)^T, stays above 1/2 (T * eta * lambda < ln 2); decay between. Only plain SGD
has this theory: with Adam the prediction is "n/a".

Baselines of the poster's comparison: none, L2 (the optimiser's weight decay), dropout (after
every hidden activation), and corrupted-data training CDT(s): Gaussian noise of std s added to
the training inputs, clipped to [0, 1] (PROTOCOLS' reading of "training with corrupted inputs").
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.checks import ConfigError, check_choice, check_int, check_keys, check_optional_int, check_range
from trainables.common import (STATUS_OK, STATUS_SKIPPED, Method, Progress, TrainResult, check_device,
                               configs_from_preset, device_name, replace_fields, resolve_device)
from trainables.corruptions import check_corruption, corrupt
from trainables.cost import (Estimate, measured_per_class, no_projection, price_training, supervised_steps,
                             synthetic_data)
from trainables.data import Data, DataConfig, load_dataset, planned_sizes
from trainables.injection import stream_seed
from trainables.models import build_model as zoo_model, mlp, small_cnn
from trainables.noise import make_generator
from trainables.supervised import OPTIMIZERS, SCHEDULERS, train_supervised

ARCHS = ("fc", "cnn", "mlp3", "linear_toy", "small_cnn", "resnet18")
REGULARIZERS = ("none", "l2", "dropout", "ninr", "cdt")
PLACEMENTS = ("in", "full")
PHASES = ("decoupled", "decay", "catapult", "divergent", "failed")
PHASE_TARGETS = ("none", "decay", "catapult")
TOY_DATASET = "synthetic_linear"  # the name of linear_toy's data (its rows' `data_name`; `dataset` is unused)


@dataclass(frozen=True)
class NINRConfig:
    """One training run: a model, one regulariser, and the phase measurement of its NIWs."""

    data: DataConfig = DataConfig()
    # fc | cnn (the comparison's) | mlp3 (phase study) | linear_toy (two-layer linear regression) |
    # small_cnn | resnet18 (the model zoo's; resnet18 with its CIFAR stem: so other families' runs can
    # share them: noise_bench)
    arch: str = "fc"
    fc_widths: tuple[int, ...] = (256, 256)  # hidden widths of fc (the poster gives none)
    cnn_channels: tuple[int, ...] = (32, 64)  # conv 3x3 + ReLU + 2x2 max-pool per entry
    cnn_hidden: int = 128  # the CNN's dense hidden layer
    mlp3_width: int = 64  # mlp3: d-w-w-C, three Linear layers
    toy_dim: int = 16  # linear_toy: inputs x ~ N(0, I_d), targets a.x + noise, model W2 (W1 x)
    toy_hidden: int = 1  # one hidden unit fits a linear target, and its single NIW follows the 1-D theory
    toy_samples: int = 512  # training samples (the test set is as large, drawn apart)
    toy_label_noise: float = 0.1
    regularizer: str = "none"  # none | l2 | dropout | ninr | cdt
    placement: str = "in"  # ninr: in (first layer) | full (every layer)
    sigma_eps: float = 0.0  # ninr: std of the noise injection nodes (ignored when phase_target is set)
    phase_target: str = "none"  # ninr: decay | catapult: sigma_eps is the smallest probe sigma whose run has that phase
    probe_sigmas: tuple[float, ...] = (1.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 300.0)  # ascending
    probe_steps: int = 400  # phase_target: SGD steps of each probe run (same arch, placement, lr, data)
    probe_seed: int = 0  # phase_target: the probes' seed, one for every trial, so all seeds train at one sigma
    niw_init_scale: float = 1.0  # NIWs ~ U(-b, b), b = scale / sqrt(fan_in of the layer): the layer's own init law
    l2: float = 5e-4  # l2: weight decay of the optimiser
    dropout_rate: float = 0.2  # dropout: after every hidden activation
    cdt_std: float = 0.2  # cdt: std of the Gaussian noise on training inputs
    optimizer: str = "sgd"  # sgd (the theory's) | adam
    lr: float = 0.05
    momentum: float = 0.0
    batch_size: int = 64
    epochs: int = 20
    steps: int = 0  # > 0: exactly this many optimiser steps instead of `epochs`
    scheduler: str = "none"  # none | cosine (the phase prediction assumes a constant lr)
    trajectory_points: int = 200  # NIW-norm points kept in the artefacts (evenly spaced steps, peak included)
    hessian_points: int = 3  # evenly spaced steps, first and last included, at which lambda is estimated (0 = none)
    hessian_iters: int = 20  # power iterations per estimate
    hessian_batch: int = 256  # training examples of the batch the Hessian is taken on
    phase_growth: float = 2.0  # catapult: the norm rises to this x its running minimum
    phase_shrink: float = 0.5  # decay: trough, or early exponential fit carried over the run, at most this x initial
    phase_divergence: float = 100.0  # divergent: the final norm at least this x initial
    phase_fit_share: float = 0.2  # decay: the share of steps (from the start) the exponential factor is fitted on
    phase_failed_share: float = 0.95  # failed: final training loss at least this x the chance loss
    phase_chance_margin: float = 0.02  # failed: training accuracy within this of the largest class share
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_choice("arch", self.arch, ARCHS)
        for name in ("fc_widths", "cnn_channels"):
            widths = getattr(self, name)
            if not isinstance(widths, tuple) or not widths or not all(isinstance(w, int) and not isinstance(w, bool)
                                                                      and w >= 1 for w in widths):
                raise ConfigError(f"{name}={widths!r} is not allowed; allowed: a non-empty tuple of integers >= 1")
        for name in ("cnn_hidden", "mlp3_width", "toy_dim", "toy_hidden", "toy_samples", "batch_size", "epochs",
                     "trajectory_points", "hessian_iters", "hessian_batch"):
            check_int(name, getattr(self, name), 1)
        for name in ("steps", "hessian_points", "seed"):
            check_int(name, getattr(self, name), 0)
        check_range("toy_label_noise", self.toy_label_noise, 0.0)
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        check_choice("placement", self.placement, PLACEMENTS)
        check_range("sigma_eps", self.sigma_eps, 0.0)
        check_choice("phase_target", self.phase_target, PHASE_TARGETS)
        if self.phase_target != "none" and self.regularizer != "ninr":
            raise ConfigError(f"phase_target={self.phase_target!r} needs regularizer='ninr'; allowed with "
                              f"regularizer={self.regularizer!r}: none")
        if not isinstance(self.probe_sigmas, tuple) or not self.probe_sigmas or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.probe_sigmas):
            raise ConfigError(f"probe_sigmas={self.probe_sigmas!r} is not allowed; allowed: a non-empty tuple of "
                              "numbers > 0")
        check_int("probe_steps", self.probe_steps, 1)
        check_int("probe_seed", self.probe_seed, 0)
        if self.regularizer == "ninr" and self.sigma_eps == 0 and self.phase_target == "none":
            raise ConfigError("sigma_eps=0 with regularizer='ninr' injects nothing; allowed: sigma_eps > 0 "
                              "(or phase_target decay / catapult)")
        check_range("niw_init_scale", self.niw_init_scale, 0.0, low_open=True)
        check_range("l2", self.l2, 0.0)
        check_range("dropout_rate", self.dropout_rate, 0.0, 1.0)
        if self.dropout_rate == 1.0:
            raise ConfigError("dropout_rate=1.0 drops everything; allowed: [0, 1)")
        check_range("cdt_std", self.cdt_std, 0.0)
        if self.arch == "resnet18" and self.regularizer == "dropout":
            raise ConfigError("regularizer='dropout' is not defined for arch='resnet18' (dropout after every hidden "
                              "activation: torchvision's ResNet18 has none, its blocks reuse one in-place ReLU); "
                              "allowed: none, l2, ninr, cdt")
        if self.arch == "linear_toy" and self.regularizer in ("dropout", "cdt"):
            raise ConfigError(f"regularizer={self.regularizer!r} is not defined for arch='linear_toy'; "
                              "allowed: none, l2, ninr")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_range("phase_growth", self.phase_growth, 1.0, low_open=True)
        check_range("phase_shrink", self.phase_shrink, 0.0, 1.0, low_open=True)
        check_range("phase_divergence", self.phase_divergence, self.phase_growth)
        check_range("phase_fit_share", self.phase_fit_share, 0.0, 1.0, low_open=True)
        check_range("phase_failed_share", self.phase_failed_share, 0.0, 1.0, low_open=True)
        check_range("phase_chance_margin", self.phase_chance_margin, 0.0, 1.0)
        check_device(self.device)


@dataclass(frozen=True)
class NINREvalConfig:
    """Test-time settings: NINs on or off, and the corruption noise's seed."""

    test_noise: bool = False  # NINs on at test time (at the training sigma_eps)
    eval_seed: int | None = None  # seeds corruptions and test-time NINs; None: the trial's seed
    eval_batch_size: int = 500

    def __post_init__(self):
        if not isinstance(self.test_noise, bool):
            raise ConfigError(f"test_noise={self.test_noise!r} is not allowed; allowed: True, False")
        check_optional_int("eval_seed", self.eval_seed, 0)
        check_int("eval_batch_size", self.eval_batch_size, 1)


# ---------------------------------------------------------------------------------------------
# Noise injection nodes


class NoiseNodes(nn.Module):
    """NIWs on `layers` (Linear or Conv2d modules of some model), added through forward hooks.

    `enabled` switches injection; `generator` draws eps. Inside `held()` the first forward pass
    records its eps and later passes reuse them, so a loss is a deterministic function of the
    weights (for Hessian-vector products)."""

    def __init__(self, layers: list[nn.Module], sigma: float, init_scale: float, generator: torch.Generator | None):
        super().__init__()
        for layer in layers:
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise ConfigError(f"NINs attach to Linear or Conv2d layers; got {type(layer).__name__}")
        self.sigma, self.generator, self.enabled = float(sigma), generator, True
        self.weights = nn.ParameterList()
        for layer in layers:
            fan_in = layer.weight[0].numel()
            bound = init_scale / math.sqrt(fan_in)
            width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            w = torch.empty(width, device=layer.weight.device)
            w.uniform_(-bound, bound)  # from the global RNG, like the layer's own weights
            self.weights.append(nn.Parameter(w))
        self._held: list[torch.Tensor] | None = None
        self._calls = 0
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if not self.enabled or self.sigma == 0:
                return None
            shape = (output.shape[0], 1) if output.dim() == 2 else (output.shape[0], 1, *output.shape[2:])
            if self._held is not None and self._calls < len(self._held):
                eps = self._held[self._calls]
            else:
                eps = self.sigma * torch.randn(shape, generator=self.generator, device=output.device, dtype=output.dtype)
                if self._held is not None:
                    self._held.append(eps)
            self._calls += 1
            w = self.weights[i]
            return output + eps * (w.view(1, -1) if output.dim() == 2 else w.view(1, -1, 1, 1))
        return hook

    @contextlib.contextmanager
    def held(self):
        """Reuse the first pass's noise in every later pass of this block; yields the list the
        first pass fills with its eps, one tensor per hooked layer call, in call order."""
        self._held, self._calls = [], 0
        try:
            yield self._held
        finally:
            self._held = None

    def rewind(self) -> None:
        """Start the held noise again from the first layer (call before each held pass)."""
        self._calls = 0

    def norm(self) -> float:
        return float(torch.sqrt(sum((w.detach().float() ** 2).sum() for w in self.weights)))


class NINModel(nn.Module):
    """A network with optional noise injection nodes; forward(x) is the network's."""

    def __init__(self, net: nn.Module, nodes: NoiseNodes | None):
        super().__init__()
        self.net, self.nodes = net, nodes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nodes is not None:
            self.nodes.rewind()
        return self.net(x)


def nin_layers(net: nn.Module, placement: str) -> list[nn.Module]:
    """The layers NINs feed: the first Linear/Conv2d (`in`) or every one of them (`full`)."""
    check_choice("placement", placement, PLACEMENTS)
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ConfigError("regularizer='ninr' needs a model with Linear or Conv2d layers; allowed archs: "
                          + ", ".join(ARCHS))
    return layers[:1] if placement == "in" else layers


def build_net(cfg: NINRConfig, shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The comparison's FC and CNN, the phase study's 3-layer MLP, the zoo's small_cnn, or the linear toy
    (no biases)."""
    dropout = cfg.dropout_rate if cfg.regularizer == "dropout" else 0.0
    if cfg.arch == "linear_toy":
        return nn.Sequential(nn.Linear(shape[0], cfg.toy_hidden, bias=False), nn.Linear(cfg.toy_hidden, 1, bias=False))
    d = int(np.prod(shape))
    if cfg.arch == "resnet18":
        return zoo_model("resnet18", shape[0], outputs, shape[1], stem="cifar")
    if cfg.arch in ("fc", "mlp3", "small_cnn"):
        if cfg.arch == "small_cnn":
            net = small_cnn(shape[0], outputs, shape[1])
        else:
            net = mlp(d, outputs, cfg.fc_widths if cfg.arch == "fc" else (cfg.mlp3_width, cfg.mlp3_width))
        if dropout:  # after every hidden activation
            net = nn.Sequential(*[m for layer in net for m in ([layer, nn.Dropout(dropout)]
                                                               if isinstance(layer, nn.ReLU) else [layer])])
        return net
    channels, size = shape[0], shape[1]
    layers: list[nn.Module] = []
    for c in cfg.cnn_channels:
        if size < 2:
            raise ConfigError(f"cnn_channels={cfg.cnn_channels!r} pools the image below 1 px at image_size="
                              f"{shape[1]}; allowed: at most {int(math.log2(shape[1]))} entries")
        layers += [nn.Conv2d(channels, c, 3, padding=1), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else []),
                   nn.MaxPool2d(2)]
        channels, size = c, size // 2
    layers += [nn.Flatten(), nn.Linear(channels * size * size, cfg.cnn_hidden), nn.ReLU(),
               *([nn.Dropout(dropout)] if dropout else []), nn.Linear(cfg.cnn_hidden, outputs)]
    return nn.Sequential(*layers)


def toy_data(cfg: NINRConfig) -> Data:
    """Two-layer linear regression data: x ~ N(0, I), y = a.x + noise, a ~ N(0, I/d), seeded apart
    from the training seed so every seed of a sweep fits the same teacher."""
    gen = torch.Generator().manual_seed(stream_seed("linear_toy", cfg.toy_dim))
    a = torch.randn(cfg.toy_dim, generator=gen) / math.sqrt(cfg.toy_dim)

    def split(n):
        x = torch.randn(n, cfg.toy_dim, generator=gen)
        return x, x @ a + cfg.toy_label_noise * torch.randn(n, generator=gen)
    (xtr, ytr), (xte, yte) = split(cfg.toy_samples), split(cfg.toy_samples)
    return Data(TOY_DATASET, xtr, ytr, xte, yte, ["target"])


def load_data(cfg: NINRConfig) -> Data:
    return toy_data(cfg) if cfg.arch == "linear_toy" else load_dataset(cfg.data)


def _loss_fn(cfg: NINRConfig) -> Callable:
    if cfg.arch == "linear_toy":
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)
    return F.cross_entropy


def build_model(cfg: NINRConfig, data: Data, device, generator: torch.Generator | None) -> NINModel:
    """The network (global RNG, seeded by the caller) and, for ninr, its NIWs."""
    shape = tuple(data.x_train.shape[1:])
    net = build_net(cfg, shape, data.num_classes).to(device)
    nodes = None
    if cfg.regularizer == "ninr":
        nodes = NoiseNodes(nin_layers(net, cfg.placement), cfg.sigma_eps, cfg.niw_init_scale, generator)
    return NINModel(net, nodes)


# ---------------------------------------------------------------------------------------------
# Curvature and phases


def niw_hessian_top(model: NINModel, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, iters: int,
                    seed: int) -> float:
    """Top eigenvalue (largest magnitude) of the Hessian of loss(model(x), y) with respect to the
    NIWs, by power iteration on Hessian-vector products (torch.func reverse-over-reverse: vjp of
    grad; forward-over-reverse fails on the models' zero tangents), with the batch's noise drawn
    once and held (from its own generator, so the training noise stream is not consumed)."""
    from torch.func import functional_call, grad, vjp

    nodes = model.nodes
    names = [f"nodes.weights.{i}" for i in range(len(nodes.weights))]
    params = {n: p.detach() for n, p in model.named_parameters()}
    niws = {n: params[n] for n in names}
    was_training, train_gen = model.training, nodes.generator
    model.eval()  # dropout off; NINs stay on (they follow `enabled`, not the mode)
    gen = make_generator(seed, x.device)
    nodes.generator = gen
    try:
        with nodes.held():
            model(x)  # draws and records this batch's noise

            def loss_of(w):
                return loss_fn(functional_call(model, {**params, **w}, (x,)), y)

            _, hvp = vjp(grad(loss_of), niws)
            v = {n: torch.randn(w.shape, generator=gen, device=x.device) for n, w in niws.items()}
            lam = 0.0
            for _ in range(iters):
                norm = torch.sqrt(sum((t ** 2).sum() for t in v.values()))
                if float(norm) == 0:
                    break
                v = {n: t / norm for n, t in v.items()}
                (hv,) = hvp(v)
                lam = float(sum((hv[n] * v[n]).sum() for n in names))
                v = hv
    finally:
        nodes.generator = train_gen
        model.train(was_training)
    return lam


def phase_of(norms, losses, steps=None, *, learned: bool = True, growth: float = 2.0, shrink: float = 0.5,
             divergence: float = 100.0, fit_share: float = 0.2) -> str:
    """The measured phase of one run from its NIW-norm trajectory (at `steps`, default 0, 1, ...),
    its training losses (first and last) and whether it learned (`learned=False`: at chance); the
    module docstring gives the rule."""
    norms, losses = np.asarray(norms, float), np.asarray(losses, float)
    steps = np.arange(len(norms), dtype=float) if steps is None else np.asarray(steps, float)
    if len(norms) < 2 or not np.isfinite(norms).all() or not np.isfinite(losses).all():
        return "divergent"
    start = norms[0]
    if start <= 0:
        raise ConfigError("the NIW norm starts at 0; the phase rule needs a positive initial norm")
    if norms[-1] >= divergence * start:
        return "divergent"
    if not learned or (len(losses) >= 2 and losses[-1] > losses[0]):
        return "failed"
    if ((norms >= growth * np.minimum.accumulate(norms)) & (norms >= start)).any():
        return "catapult"
    if norms.min() <= shrink * start or early_decay_factor(norms, steps, fit_share) <= shrink:
        return "decay"
    return "decoupled"


def early_decay_factor(norms, steps, fit_share: float) -> float:
    """exp(slope x run length), slope the least-squares slope of log norm against step over the
    first `fit_share` of the run's steps (at least 3 points): the run's decay if the early rate held."""
    norms, steps = np.asarray(norms, float), np.asarray(steps, float)
    span = steps[-1] - steps[0]
    early = steps <= steps[0] + fit_share * span
    if early.sum() < 3 or span <= 0 or (norms <= 0).any():
        return 1.0
    slope = np.polyfit(steps[early], np.log(norms[early]), 1)[0]
    return float(np.exp(slope * span))


def chance(data: Data, arch: str) -> tuple[float, float]:
    """(chance loss, chance accuracy) of the training set: the loss of the best constant
    prediction (label entropy for classes, the targets' variance for regression) and the
    largest class share (NaN for regression)."""
    y = data.y_train
    if arch == "linear_toy":
        return float(((y - y.mean()) ** 2).mean()), float("nan")
    share = torch.bincount(y.long().cpu(), minlength=data.num_classes).double() / len(y)
    return float(-(share[share > 0] * share[share > 0].log()).sum()), float(share.max())


def predicted_phase(eta: float, lam: float, steps: int, optimizer: str) -> str:
    """The linear-stability reading of lambda at step 0 (module docstring)."""
    if optimizer != "sgd" or not math.isfinite(lam):
        return "n/a"
    if abs(1 - eta * lam) >= 1:
        return "catapult"
    return "decoupled" if steps * eta * lam < math.log(2) else "decay"


def downsample(values: list[float], points: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) at `points` evenly spaced steps, the first, last and peak always kept."""
    v = np.asarray(values, float)
    if len(v) <= points:
        return np.arange(len(v)), v
    idx = np.unique(np.r_[np.linspace(0, len(v) - 1, points - 1).round().astype(int), np.nanargmax(v)])
    return idx, v[idx]


# ---------------------------------------------------------------------------------------------
# Training


def probe_phase_sigma(cfg: NINRConfig, data: Data) -> tuple[float | None, list[dict]]:
    """The smallest of `probe_sigmas` whose probe run (`probe_steps` steps, seed `probe_seed`,
    no Hessian) the phase rule labels `phase_target` while the network learns; None if none
    does. Stops after two probes in a row that learned nothing, once one has learned (larger
    noise only destroys more). Returns it and every probe's (sigma, phase, learned, final loss)."""
    probes = []
    for sigma in sorted(cfg.probe_sigmas):
        if len(probes) >= 3 and any(p["learned"] for p in probes) and not any(p["learned"] for p in probes[-2:]):
            break
        pcfg = replace_fields(cfg, {"sigma_eps": float(sigma), "phase_target": "none", "steps": cfg.probe_steps,
                                    "seed": cfg.probe_seed, "hessian_points": 0})
        run = train_ninr(pcfg, data).columns
        probes.append({"sigma_eps": float(sigma), "phase": run["measured_phase"], "learned": bool(run["learned"]),
                       "final_loss": run["final_loss"]})
        if run["measured_phase"] == cfg.phase_target and run["learned"]:
            return float(sigma), probes
    return None, probes


def train_ninr(cfg: NINRConfig, data: Data, callback: Callable[[Progress], object] | None = None,
               state: dict | None = None) -> TrainResult:
    """Train on the shared supervised loop; for ninr, the NIW norm after every step and lambda at
    `hessian_points` steps go into the artefacts; the run's columns hold its phase summary and its
    own initial and final loss (the mean over the first and the last 10% of steps, loss_ends)."""
    probe_columns = {}
    if cfg.phase_target != "none":
        t0 = time.perf_counter()
        sigma, probes = (state["probe_sigma"], state["probes"]) if state and "probes" in state else \
            probe_phase_sigma(cfg, data)
        probe_columns = {"probe_sigma": float("nan") if sigma is None else sigma, "probes": json.dumps(probes),
                         "probe_seconds": time.perf_counter() - t0}
        if sigma is None:
            seen = ", ".join(f"σ={p['sigma_eps']:g} {p['phase']}{'' if p['learned'] else ' (learned nothing)'}"
                             for p in probes)
            return TrainResult(None, STATUS_SKIPPED, 0, [], time.perf_counter() - t0,
                               f"no probe sigma gives a learning {cfg.phase_target} for {cfg.arch} "
                               f"({cfg.placement}-NINR, lr {cfg.lr:g}, {cfg.probe_steps} steps): {seen}",
                               {}, probe_columns)
        cfg = replace_fields(cfg, {"sigma_eps": sigma})
        probe_state = {"probe_sigma": sigma, "probes": probes}
    else:
        probe_state = {}
    device = resolve_device(cfg.device)
    x, y = data.x_train.to(device), data.y_train.to(device)
    torch.manual_seed(cfg.seed)  # initial weights, then NIWs
    nin_gen = make_generator(stream_seed(cfg.seed, "nin_train"), device)
    model = build_model(cfg, data, device, nin_gen)
    loss_fn = _loss_fn(cfg)
    per_epoch = len(x) // min(cfg.batch_size, len(x))
    total = cfg.steps or cfg.epochs * per_epoch
    at = sorted({int(round(v)) for v in np.linspace(0, total, cfg.hessian_points)}) if cfg.hessian_points > 1 \
        else [0][:cfg.hessian_points]
    hb = torch.randperm(len(x), generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "hessian_batch")))
    hx, hy = x[hb[:cfg.hessian_batch].to(device)], y[hb[:cfg.hessian_batch].to(device)]
    track = model.nodes is not None
    norms: list[float] = list(state["niw_norms"]) if state else ([model.nodes.norm()] if track else [])
    step_losses: list[float] = list(state["step_losses"]) if state else []
    hessian: list[tuple[int, float]] = [tuple(p) for p in state["hessian"]] if state else []

    def measure(step: int) -> None:
        if track and step in at and all(s != step for s, _ in hessian):
            hessian.append((step, niw_hessian_top(model, hx, hy, loss_fn, cfg.hessian_iters,
                                                  stream_seed(cfg.seed, "power", step))))

    if state is None:
        measure(0)  # before any step; a resumed run has it in its state

    def on_step(step: int, loss: float) -> None:
        step_losses.append(loss)
        if track:
            norms.append(model.nodes.norm())
            measure(step)

    cdt_gen = make_generator(stream_seed(cfg.seed, "cdt"), device)

    def cdt_loss(m, xb, yb):
        noisy = (xb + cfg.cdt_std * torch.randn(xb.shape, generator=cdt_gen, device=device)).clamp(0, 1)
        return loss_fn(m(noisy), yb)

    def on_epoch(p: Progress):
        if callback is None:
            return None
        extra = {"niw_norms": list(norms), "step_losses": list(step_losses), "hessian": [list(h) for h in hessian]} \
            | probe_state
        return callback(Progress(p.epoch, p.loss, lambda: p.state() | extra, p.done))

    start = time.perf_counter()
    res = train_supervised(model, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs,
                           steps=cfg.steps, scheduler=cfg.scheduler, loss_fn=loss_fn,
                           batch_loss=cdt_loss if cfg.regularizer == "cdt" else None,
                           generators={"nin_rng": nin_gen, "cdt_rng": cdt_gen}, callback=on_epoch,
                           state=state, optimizer=cfg.optimizer, momentum=cfg.momentum,
                           weight_decay=cfg.l2 if cfg.regularizer == "l2" else 0.0, on_step=on_step)
    if res.status == STATUS_OK and track:
        measure(total)
    model.eval()
    artefacts = {"loss_steps": np.asarray(step_losses, float)}
    if track:
        steps, values = downsample(norms, cfg.trajectory_points)
        artefacts |= {"niw_norm_steps": steps, "niw_norm": values,
                      "hessian_steps": np.array([s for s, _ in hessian], int),
                      "hessian_top": np.array([v for _, v in hessian], float)}
    steps = len(step_losses)
    first, last = loss_ends(step_losses)
    chance_loss, chance_accuracy = chance(data, cfg.arch)
    accuracy = train_accuracy(model, x, y, cfg.arch) if res.status == STATUS_OK else float("nan")
    learned = not (last >= cfg.phase_failed_share * chance_loss
                   or accuracy <= chance_accuracy + cfg.phase_chance_margin)  # NaN (regression) compares False
    columns = {"device_name": device_name(device), "data_name": data.name,  # linear_toy: not cfg's dataset
               "train_steps": steps, "final_loss": float(last), "initial_loss": float(first),
               "chance_loss": chance_loss, "chance_accuracy": chance_accuracy, "train_accuracy": accuracy,
               "learned": bool(learned), "sigma_eps_used": cfg.sigma_eps} \
        | probe_columns | phase_summary(cfg, artefacts, res.status, steps, learned)
    return TrainResult(model, res.status, res.epochs_done, res.history, time.perf_counter() - start, res.message,
                       artefacts, columns)


def train_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, arch: str, batch: int = 2048) -> float:
    """Accuracy on the training set with the NINs off, as at test time (NaN for regression)."""
    if arch == "linear_toy":
        return float("nan")
    model.eval()
    was = model.nodes.enabled if model.nodes is not None else None
    if model.nodes is not None:
        model.nodes.enabled = False
    try:
        with torch.no_grad():
            right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    finally:
        if model.nodes is not None:
            model.nodes.enabled = was
    return right / len(x)


def phase_summary(cfg: NINRConfig, artefacts: dict, status: str, steps: int, learned: bool = True) -> dict:
    """The row columns of a run's phase measurement (NaN and "" where the run has no NIWs)."""
    nan = float("nan")
    out = {"measured_phase": "", "niw_early_decay": nan, "predicted_phase": "", "eta_lambda": nan, "hessian_top_init": nan,
           "hessian_top_final": nan, "niw_norm_init": nan, "niw_norm_peak": nan, "niw_norm_final": nan,
           "niw_peak_step": -1}
    if "niw_norm" not in artefacts:
        return out
    norms, losses = artefacts["niw_norm"], artefacts["loss_steps"]
    hs, hv = artefacts["hessian_steps"], artefacts["hessian_top"]
    lam0 = float(hv[0]) if len(hv) and hs[0] == 0 else nan
    losses_for_rule = losses if status == STATUS_OK else np.r_[losses, nan]
    smooth = loss_ends(losses_for_rule)
    phase = phase_of(norms, smooth, artefacts["niw_norm_steps"], learned=learned, growth=cfg.phase_growth,
                     shrink=cfg.phase_shrink, divergence=cfg.phase_divergence, fit_share=cfg.phase_fit_share)
    out |= {"measured_phase": phase, "niw_early_decay": early_decay_factor(norms, artefacts["niw_norm_steps"],
                                                                           cfg.phase_fit_share),
            "predicted_phase": predicted_phase(cfg.lr, lam0, steps, cfg.optimizer),
            "eta_lambda": cfg.lr * lam0, "hessian_top_init": lam0,
            "hessian_top_final": float(hv[-1]) if len(hv) and hs[-1] > 0 else nan,
            "niw_norm_init": float(norms[0]), "niw_norm_peak": float(np.nanmax(norms)) if np.isfinite(norms).any() else nan,
            "niw_norm_final": float(norms[-1]),
            "niw_peak_step": int(artefacts["niw_norm_steps"][int(np.nanargmax(norms))]) if np.isfinite(norms).any() else -1}
    return out


def loss_ends(losses) -> np.ndarray:
    """The mean loss over the first and the last 10% of steps (at least one step each; single
    steps are noisy under NINs); NaN for a run without steps."""
    losses = np.asarray(losses, float)
    if not len(losses):
        return np.array([np.nan, np.nan])
    k = max(1, len(losses) // 10)
    return np.array([losses[:k].mean(), losses[-k:].mean()])


# ---------------------------------------------------------------------------------------------
# Evaluation


def check_setting(setting) -> dict:
    """A test setting is {"corruption": name, "strength": s} (trainables/corruptions.py)."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with keys corruption, strength")
    check_keys("test setting", setting, ("corruption", "strength"))
    name, strength = check_corruption(setting.get("corruption", "clean"), setting.get("strength", 0.0))
    return {"corruption": name, "strength": strength}


def evaluate(model: NINModel, data: Data, settings, cfg: NINRConfig, ecfg: NINREvalConfig, eval_seed: int = 0):
    """One row per (corruption, strength): accuracy (classification) or test MSE (linear_toy)."""
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    base = {"test_images": len(x), "num_classes": data.num_classes}
    model.eval()
    if model.nodes is not None:
        model.nodes.enabled = ecfg.test_noise
        model.nodes.generator = make_generator(stream_seed(eval_seed, "nin_test"), device)
    rows = []
    try:
        for s in (check_setting(s) for s in settings):
            t0 = time.perf_counter()
            if cfg.arch == "linear_toy":
                if s["corruption"] != "clean":
                    raise ConfigError(f"corruption={s['corruption']!r} is for images; allowed with arch='linear_toy': clean")
                with torch.no_grad():
                    metric = {"accuracy": float("nan"), "test_loss": float(F.mse_loss(model(x).squeeze(-1), y))}
            else:
                correct = 0
                for i in range(0, len(x), ecfg.eval_batch_size):
                    xb, yb = x[i:i + ecfg.eval_batch_size], y[i:i + ecfg.eval_batch_size]
                    key = stream_seed(eval_seed, s["corruption"], s["strength"], i)
                    xc = corrupt(xb, s["corruption"], s["strength"], key, model, yb)
                    with torch.no_grad():
                        correct += int((model(xc).argmax(1) == yb).sum())
                metric = {"accuracy": correct / len(x), "test_loss": float("nan")}
            rows.append(base | s | metric | {"eval_seconds": time.perf_counter() - t0})
    finally:
        if model.nodes is not None:
            model.nodes.enabled = True
    return rows


train = train_ninr


PRESETS: dict[str, dict] = {
    # The poster's comparison: Fashion-MNIST at 28 px, 5 seeds (the experiment sets them).
    "paper": {"dataset": "fashion_mnist", "image_size": 28, "channels": 1, "epochs": 20},
    # The embedded MNIST subset at 28 px (4,000 train / 1,000 test): the poster's input size on real
    # digits; about an hour for ninr_compare on 2 CPU cores (bench/results/mnist5k_cost_cpu.txt).
    "quick": {"dataset": "mnist5k", "image_size": 28, "channels": 1, "epochs": 30, "batch_size": 32},
    # Seconds: for tests and for checking that a pipeline runs end to end.
    "smoke": {"dataset": "digits", "image_size": 8, "steps": 6, "batch_size": 32, "train_limit": 64,
              "test_limit": 40, "toy_samples": 64, "hessian_iters": 3, "hessian_batch": 32, "fc_widths": (16,),
              "cnn_channels": (4,), "cnn_hidden": 8, "mlp3_width": 8},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[NINRConfig, NINREvalConfig]:
    return configs_from_preset(PRESETS, NINRConfig(), NINREvalConfig, preset, overrides)


def describe(cfg: NINRConfig, ecfg: NINREvalConfig, settings) -> str:
    reg = {"ninr": f"{cfg.placement}-NINR sigma_eps {cfg.sigma_eps}", "l2": f"L2 {cfg.l2}",
           "dropout": f"dropout {cfg.dropout_rate}", "cdt": f"CDT({cfg.cdt_std})", "none": "no regulariser"}
    where = TOY_DATASET if cfg.arch == "linear_toy" else cfg.data.dataset
    return f"{cfg.arch} with {reg[cfg.regularizer]}, {cfg.optimizer} lr {cfg.lr} on {where}; {len(settings)} test settings"


def cost(cfg: NINRConfig, ecfg: NINREvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's training seconds on `device`: its steps (and, with a phase_target, at most one
    probe run of probe_steps per probe sigma) at the measured rate of this network and regulariser.
    Not priced: the corrupted-test evaluation and the lambda estimates at `hessian_points` steps."""
    toy = cfg.arch == "linear_toy"
    sizes = None if toy else planned_sizes(cfg.data)
    if not toy and sizes is None:
        return no_projection(f"data set {cfg.data.dataset}: its size is known only once loaded")
    n = cfg.toy_samples if toy else sizes.train
    reg = f"{cfg.placement}-ninr" if cfg.regularizer == "ninr" else cfg.regularizer
    model = (f"{cfg.arch} d={cfg.toy_dim}, {reg}, {cfg.optimizer}" if toy else
             f"{cfg.arch}, {reg}, {cfg.optimizer}, {sizes.classes} classes, {cfg.data.channels} ch")
    per_class = measured_per_class(cfg.batch_size, 1 if toy else sizes.classes)
    data = (lambda: toy_data(replace_fields(cfg, {"toy_samples": per_class}))) if toy else (
        lambda: synthetic_data(sizes.classes, cfg.data.channels, cfg.data.image_size, per_class, 64))
    est = Estimate()
    steps = supervised_steps(cfg, n)
    if cfg.regularizer == "ninr" and cfg.phase_target != "none":
        steps += len(cfg.probe_sigmas) * cfg.probe_steps
    # Measured without the probes (each is probe_steps long; their steps are priced at the same rate)
    # and without the lambda estimates, a fixed cost per run that would swamp a few steps.
    measured = replace_fields(cfg, {"hessian_points": 0} | ({"phase_target": "none", "sigma_eps": cfg.sigma_eps
                                                            or cfg.probe_sigmas[0]} if cfg.phase_target != "none" else {}))
    price_training(est, "ninr", model, "" if toy else cfg.data.image_size, measured, steps, device, train_ninr, data,
                   what="training" if steps == supervised_steps(cfg, n) else "training and at most every probe run")
    return est


def final_rows(rows: list[dict]) -> list[dict]:
    """The headline is the clean test row."""
    return [r for r in rows if r.get("corruption") == "clean"] or rows


METHOD = Method(
    "ninr", "ninr", preset_configs, load_data, train, evaluate, check_setting,
    setting_columns={"corruption": "corruption", "strength": "strength"},
    summary_columns=("arch", "regularizer", "placement", "sigma_eps", "lr", "corruption", "strength"),
    final_rows=final_rows, describe=describe, cost=cost, diverging={"lr": 1e30})

METHODS = [METHOD]

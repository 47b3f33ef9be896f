"""Activation noise for EBM classification: one autoencoder per class, fused into one module.

The paper's classifier (activation-noise-ebm, Sec. 4.1): for each class an autoencoder
Conv 30-73-100 (kernel 4, stride 2, padding 1) and its mirror; energy E(x|y) = ||f(x|y,z) - x||^2
averaged over n noise draws (Eq. 9); prediction argmin_y. Noise t = f(Wx+b) + alpha*z after the
activation of every layer of the placement, output layer included.

Why the bank is written by hand: the C autoencoders' parameters are stacked on a class
dimension, so a forward pass yields all C reconstructions and one Adam step updates all C
autoencoders, each on its own class's images. How a layer is computed is chosen by measurement
(bench/): at 8 px im2col plus ONE batched matrix product over classes (channels-last tensors of
shape (classes, batch, H, W, channels)); from 16 px up, per-class oneDNN convolutions on the
stacked weights, because im2col copies cost more there (bench/results/ebm_training_cpu.txt, and
the same file at commit 8515994 for the im2col path); one grouped convolution was slower than
both on CPU in a workplace measurement that bench/ does not repeat. `Autoencoder` is the plain reference module;
`AutoencoderBank.from_autoencoders` stacks C of them exactly.

Sampling inference is "train once, evaluate many": one pass over the test set evaluates a list of
test settings, each with running sums over draws so that accuracy at every n checkpoint comes
from one stream of draws. Noise for (setting, image block, draw block) comes from its own seeded
generator, so results do not depend on the memory budget or on which other settings or
checkpoints were requested, nor (but for float rounding) on the path that runs: the fused bank or
a plain per-class loop, whichever `choose_path` timed faster on this machine (EvalConfig.path).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import discriminative
from trainables.checks import (ConfigError, check_choice, check_int, check_keys, check_optional_int,
                               check_range)
from trainables.common import (STATUS_DIVERGED, STATUS_OK, Method, Progress, TrainResult, loss_tail,
                               configs_from_preset, device_name, fast_bf16, resolve_device, write_json_atomic)
from trainables.cost import (Estimate, no_projection, planned_steps, price_training, rate_for, synthetic_data,
                              threads_on, time_steps)
from trainables.data import Data, DataConfig, data_root, load_dataset, planned_sizes
from trainables.noise import DISTRIBUTIONS, NoiseParams, fill_, make_generator
from trainables.sampling import DrawTally, check_checkpoints, rows_at_checkpoints, rows_at_largest_n
from trainables.supervised import SCHEDULERS

NUM_LAYERS = 6  # encoder conv 1-3, decoder conv-transpose 4-6 (output layer included)

NOISE_SHARING = ("independent", "common")  # test noise across the class autoencoders (NoiseSpec.sharing)

PLACEMENTS: dict[str, tuple[int, ...]] = {  # the layers a placement perturbs (paper Fig. 9)
    "full": (1, 2, 3, 4, 5, 6),
    "odd": (1, 3, 5),
    "even": (2, 4, 6),
    "enc": (1, 2, 3),
    "dec": (4, 5, 6),
    "hidden": (1, 2, 3, 4, 5),  # every layer but the output: no noise (or dropout) on the reconstruction
}

@dataclass(frozen=True)
class NoiseSpec:
    """One noise setting: z ~ distribution, scaled by alpha, after the layers of `placement`.
    A test setting of this family is one of these (as a dict of its fields).

    `sharing` (test noise only) is how draws relate across the class autoencoders within one
    sample: "independent" (a fresh draw per class, as separate autoencoders would have) or
    "common" (one draw shared by all classes: common random numbers, unbiased per class, lower
    variance of the energy differences the argmin reads, and 1/C of the numbers to draw). The
    paper is silent (PROTOCOLS sec. 1). None: the evaluation's `EvalConfig.noise_sharing`, so
    `--set noise_sharing=common` reaches every experiment; a setting that names it keeps it
    (ablate_ebm sweeps both).
    """

    distribution: str = "gaussian"
    alpha: float = 0.0
    placement: str = "full"
    sharing: str | None = None

    def __post_init__(self):
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        check_range("alpha", self.alpha, 0.0)
        check_choice("placement", self.placement, tuple(PLACEMENTS))
        if self.sharing is not None:
            check_choice("sharing", self.sharing, NOISE_SHARING)

    @property
    def layers(self) -> tuple[int, ...]:
        """1-based indices of the noisy layers; empty when alpha is 0."""
        return PLACEMENTS[self.placement] if self.alpha > 0 else ()


# The row column each test-setting key is written to.
SETTING_COLUMNS = {"distribution": "distribution_test", "alpha": "alpha_test", "placement": "placement_test",
                   "sharing": "noise_sharing"}


def check_setting(setting) -> NoiseSpec:
    """A test setting (dict of NoiseSpec fields, or a NoiseSpec), or one ConfigError line."""
    if isinstance(setting, NoiseSpec):
        return setting
    check_keys("test setting", setting, tuple(SETTING_COLUMNS))
    return NoiseSpec(**setting)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda t: t,
    "elu": F.elu, "leaky_relu": F.leaky_relu,
}
# In-place twins for inference, where no autograd graph needs the inputs.
_INPLACE = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "identity": lambda t: t,
            "elu": F.elu_, "leaky_relu": F.leaky_relu_}


@dataclass(frozen=True)
class EBMConfig:
    """One training configuration: one trained bank of class-conditional autoencoders."""

    data: DataConfig = DataConfig()
    distribution_train: str = "gaussian"  # law of z during training (noise.DISTRIBUTIONS)
    alpha_train: float = 0.0  # noise scale during training; 0 = no training noise
    placement_train: str = "full"  # layers that get training noise or dropout (noise.PLACEMENTS)
    dropout_rate: float = 0.0  # dropout rate c at the same places (paper Fig. 2); 0 = off
    noise_params: NoiseParams = NoiseParams()
    hidden_channels: tuple[int, ...] = (30, 73, 100)  # encoder widths; decoder mirrors them
    hidden_activation: str = "relu"  # paper silent: ReLU on layers 1-5
    output_activation: str = "sigmoid"  # paper silent: sigmoid on layer 6 (inputs are in [0,1])
    lr: float = 1e-3  # Adam, default betas
    scheduler: str = "none"  # none (constant lr: the paper names none) | cosine (annealed per step to 0)
    batch_size: int = 256  # images per class per optimiser step
    epochs: int = 100  # an epoch = ceil(largest class / batch_size) steps
    steps: int = 0  # > 0: train exactly this many optimiser steps instead of `epochs`
    seed: int = 0  # initial weights, shuffling and training noise
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        NoiseSpec(self.distribution_train, self.alpha_train, self.placement_train)
        check_range("dropout_rate", self.dropout_rate, 0.0, 0.99)
        check_choice("hidden_activation", self.hidden_activation, tuple(ACTIVATIONS))
        check_choice("output_activation", self.output_activation, tuple(ACTIVATIONS))
        if (not isinstance(self.hidden_channels, tuple) or len(self.hidden_channels) != 3  # --set hidden_channels=5
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.hidden_channels)):
            raise ConfigError(f"hidden_channels={self.hidden_channels!r} is out of range; allowed: 3 positive integers")
        check_range("lr", self.lr, 0.0, low_open=True)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        for name in ("batch_size", "epochs"):
            check_int(name, getattr(self, name), 1)
        check_int("steps", self.steps, 0)
        check_int("seed", self.seed, 0)
        if self.data.image_size % 8:
            raise ConfigError(f"image_size={self.data.image_size} is out of range; allowed: multiples of 8 "
                              "(three stride-2 layers down and three up)")

    @property
    def noise_train(self) -> NoiseSpec:
        return NoiseSpec(self.distribution_train, self.alpha_train, self.placement_train)


PRECISIONS = ("fp32", "bf16")
EVAL_PATHS = ("fused_bank", "plain_loop")  # how sampling inference can run: the rows' eval_path
PATH_CHOICES = ("auto", *EVAL_PATHS)  # EvalConfig.path


@dataclass(frozen=True)
class EvalConfig:
    """Sampling inference settings shared by all test settings of one evaluation."""

    n_checkpoints: tuple[int, ...] = (1, 10, 100, 1000)  # accuracy reported at each n
    eval_seed: int | None = None  # keys the test-noise generators; None: the trial's seed
    block_images: int = 32  # test images per noise block (fixed: part of the noise key)
    block_draws: int = 10  # draws per noise block (fixed: part of the noise key)
    noise_streams: int = 4  # generators per noise block, filled in parallel on CPU (part of the key)
    memory_mb: int = 0  # working memory per call, 0 = auto (64 MB on CPU: cache-sized; 1/4 of free GPU memory)
    # Layer arithmetic of sampling inference: "bf16" runs the convolutions in bfloat16, channels-last
    # (bf16 matmul 4.1x fp32 on an avx512_bf16 CPU, end to end only 1.08-1.12x fused fp32, as drawing
    # the noise stays: bench/results/ebm_sampling_cpu.txt; on AVX2-only CPUs bf16 is emulated, slower). Noise is drawn and energies summed in fp32, the same draws on the
    # same elements as fp32, so only rounding differs. Where bf16 is not native (common.fast_bf16)
    # it runs fp32, with one warning; the rows' eval_precision says which ran.
    precision: str = "fp32"
    # Test noise across the class autoencoders for the settings that do not name their own
    # (NoiseSpec.sharing): "independent" is the paper's separate autoencoders; "common" shares one
    # draw per (image, draw) by every class, drawn once.
    noise_sharing: str = "independent"
    # How sampling inference runs (SamplingEvaluator): "fused_bank" (per class, one convolution call
    # over every (image, draw) of a call), "plain_loop" (per class and per draw, one call over the
    # block's images: smaller calls, oneDNN's transposed convolution on the output layer too), or
    # "auto": at the first evaluation of these shapes on this machine each correct (path,
    # precision) is timed on one call and the winner cached in <data root>/eval_paths.json
    # (choose_path). Every path adds the same keyed draws to the same elements, so only float
    # rounding differs; the rows' eval_path and eval_precision say what ran. Under auto,
    # precision="bf16" allows bf16 where it is native and lets fp32 run where fp32 was faster.
    path: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "n_checkpoints", check_checkpoints(self.n_checkpoints))
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("path", self.path, PATH_CHOICES)
        check_choice("noise_sharing", self.noise_sharing, NOISE_SHARING)
        check_optional_int("eval_seed", self.eval_seed, 0)
        check_int("block_images", self.block_images, 1)
        check_int("block_draws", self.block_draws, 1)
        check_int("noise_streams", self.noise_streams, 1)
        check_int("memory_mb", self.memory_mb, 0)



PRESETS: dict[str, dict] = {
    # The paper's protocol: CIFAR-10 at 32 px, 100 epochs of batch 256, n up to 1000 (Fig. 3).
    "paper": {"dataset": "cifar10"},
    # Embedded digits at their native 8 px, trained to a loss plateau; ~10 min for grid_ebm on
    # 2 CPU cores (bench/ebm_phenomena.py shows the loss tail).
    "quick": {"dataset": "digits", "image_size": 8, "steps": 1500, "batch_size": 64,
              "n_checkpoints": (1, 10, 100)},
    # The fairness checks' candidate (issue 13; bench/README.md): digits upsampled to 16 px, so the
    # bottleneck is spatial (2x2x100), 4000 cosine-annealed steps of 64 and n up to 1000. Sized for a
    # GPU (`--backend local`, one worker per GPU); on 2 CPU cores a training takes about 8 min (25 at 32 px).
    "fair": {"dataset": "digits", "image_size": 16, "steps": 4000, "batch_size": 64, "scheduler": "cosine",
             "n_checkpoints": (1, 10, 100, 1000)},
    # Seconds: for tests and for checking that a pipeline runs end to end.
    "smoke": {"dataset": "digits", "image_size": 8, "steps": 3, "batch_size": 16, "train_limit": 20,
              "test_limit": 30, "n_checkpoints": (1, 4), "block_draws": 2},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[EBMConfig, EvalConfig]:
    """Training and evaluation configs of a preset, with `overrides` (any field name) applied."""
    return configs_from_preset(PRESETS, EBMConfig(), EvalConfig, preset, overrides)


# ---------------------------------------------------------------------------------------------
# Models


class Autoencoder(nn.Module):
    """The paper's autoencoder as plain PyTorch layers: the reference the bank must equal."""

    def __init__(self, in_channels=1, hidden=(30, 73, 100), hidden_activation="relu",
                 output_activation="sigmoid"):
        super().__init__()
        widths = (in_channels, *hidden)
        self.encoder = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1) for i in range(3))
        self.decoder = nn.ModuleList(nn.ConvTranspose2d(widths[3 - i], widths[2 - i], 4, 2, 1) for i in range(3))
        self.acts = [ACTIVATIONS[hidden_activation]] * 5 + [ACTIVATIONS[output_activation]]

    def forward(self, x, after_layer: Callable | None = None):
        """x: (N, C, H, W). after_layer(i, h) may perturb the activation of layer i (1-based)."""
        for i, layer in enumerate([*self.encoder, *self.decoder], start=1):
            x = self.acts[i - 1](layer(x))
            if after_layer is not None:
                x = after_layer(i, x)
        return x


def _conv_down(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Conv k4 s2 p1 per class: (G|1, N, H, W, Cin) -> (G, N, H/2, W/2, Cout) via im2col + bmm."""
    g, n, h, wd, c = x.shape
    cols = F.pad(x, (0, 0, 1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)  # (g,n,h/2,w/2,c,4,4)
    cols = cols.reshape(g, n * (h // 2) * (wd // 2), c * 16)
    classes, cout = w.shape[0], w.shape[2]
    if g == classes:
        out = torch.baddbmm(b.unsqueeze(1), cols, w)
        return out.view(classes, n, h // 2, wd // 2, cout)
    # One input shared by all classes (inference, layer 1): one matmul against all weights.
    out = cols[0] @ w.permute(1, 0, 2).reshape(c * 16, classes * cout) + b.reshape(-1)
    return out.view(n, h // 2, wd // 2, classes, cout).permute(3, 0, 1, 2, 4)


def _conv_up(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ConvTranspose k4 s2 p1 per class: one bmm, then col2im as four shifted strided adds."""
    g, n, h, wd, cin = x.shape
    cout = w.shape[2] // 16
    y = torch.bmm(x.reshape(g, n * h * wd, cin), w).view(g, n, h, wd, 2, 2, 2, 2, cout)
    # Kernel tap k = 2p + a lands on padded output row 2(i + p) + a: view rows as (i + p, a).
    out = x.new_zeros(g, n, h + 1, 2, wd + 1, 2, cout)
    for p in (0, 1):
        for q in (0, 1):
            out[:, :, p:p + h, :, q:q + wd] += y[:, :, :, :, p, :, q].permute(0, 1, 2, 4, 3, 5, 6)
    out = out.view(g, n, 2 * h + 2, 2 * wd + 2, cout)[:, :, 1:-1, 1:-1]
    return out + b[:, None, None, None, :]


class AutoencoderBank(nn.Module):
    """C autoencoders stacked along a leading class dimension, run as one module."""

    def __init__(self, num_classes: int, in_channels=1, hidden=(30, 73, 100),
                 hidden_activation="relu", output_activation="sigmoid"):
        super().__init__()
        self.num_classes, self.in_channels, self.hidden = num_classes, in_channels, tuple(hidden)
        self.activation_names = (hidden_activation, output_activation)
        self.acts = [ACTIVATIONS[hidden_activation]] * 5 + [ACTIVATIONS[output_activation]]
        widths = (in_channels, *hidden)
        shapes = [(widths[i] * 16, widths[i + 1]) for i in range(3)]  # encoder: (Cin*16, Cout)
        shapes += [(widths[3 - i], 16 * widths[2 - i]) for i in range(3)]  # decoder: (Cin, 16*Cout)
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(num_classes, *s)) for s in shapes)
        outs = [widths[i + 1] for i in range(3)] + [widths[2 - i] for i in range(3)]
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(num_classes, o)) for o in outs)

    @classmethod
    def from_autoencoders(cls, aes: Sequence[Autoencoder], **kwargs) -> "AutoencoderBank":
        """Stack separately built autoencoders into one bank (exact copy of their weights)."""
        first = aes[0]
        bank = cls(len(aes), first.encoder[0].in_channels,
                   tuple(c.out_channels for c in first.encoder), **kwargs)
        with torch.no_grad():
            for i in range(3):
                bank.weights[i].copy_(torch.stack([a.encoder[i].weight.flatten(1).T for a in aes]))
                bank.biases[i].copy_(torch.stack([a.encoder[i].bias for a in aes]))
                w = [a.decoder[i].weight.permute(0, 2, 3, 1).flatten(1) for a in aes]
                bank.weights[3 + i].copy_(torch.stack(w))
                bank.biases[3 + i].copy_(torch.stack([a.decoder[i].bias for a in aes]))
        return bank

    @classmethod
    def initialised(cls, num_classes: int, in_channels: int, hidden, seed: int,
                    hidden_activation="relu", output_activation="sigmoid") -> "AutoencoderBank":
        """PyTorch's default layer initialisation, per class, from `seed` (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            aes = [Autoencoder(in_channels, hidden) for _ in range(num_classes)]
        return cls.from_autoencoders(aes, hidden_activation=hidden_activation,
                                     output_activation=output_activation)

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i (1-based) plus its activation, on channels-last (G|1, N, H, W, C) input."""
        conv = _conv_down if i <= 3 else _conv_up
        return self.acts[i - 1](conv(h, self.weights[i - 1], self.biases[i - 1]))

    def forward(self, x: torch.Tensor, after_layer: Callable | None = None) -> torch.Tensor:
        """x: (G|1, N, H, W, C) channels-last; returns all G reconstructions (G, N, H, W, C)."""
        for i in range(1, NUM_LAYERS + 1):
            x = self.layer(i, x)
            if after_layer is not None:
                x = after_layer(i, x)
        return x

    def forward_per_class(self, x: torch.Tensor, after_layer: Callable | None = None) -> torch.Tensor:
        """forward() for G == classes, computed class by class with oneDNN convolutions.

        Same math and same layouts in and out; after_layer sees (G, N, C, H, W). On CPU this trains
        faster than im2col + bmm from 16 px up (bench/ebm_training.py), slower at 8 px.
        """
        layers = [self.nchw_layers(c) for c in range(self.num_classes)]
        h = x.permute(0, 1, 4, 2, 3)
        for i in range(1, NUM_LAYERS + 1):
            conv = F.conv2d if i <= 3 else F.conv_transpose2d
            # unbind, not h[c]: the backward of C index ops would zero-fill C full-size gradients
            h = self.acts[i - 1](torch.stack([conv(hc, *layers[c][i - 1], 2, 1) for c, hc in enumerate(h.unbind(0))]))
            if after_layer is not None:
                h = after_layer(i, h)
        return h.permute(0, 1, 3, 4, 2)

    def forward_grouped(self, x: torch.Tensor, after_layer: Callable | None = None) -> torch.Tensor:
        """forward() for G == classes as one grouped convolution per layer (classes are groups).

        Same math and layouts in and out as forward_per_class (after_layer sees (G, N, C, H, W), a
        view); 6 convolutions a pass whatever G is, so on a GPU, where a training step is bound by
        kernel launches, a step costs a few dozen launches instead of a few hundred.
        """
        g, n = x.shape[:2]
        widths = (self.in_channels, *self.hidden)
        h = x.permute(1, 0, 4, 2, 3).reshape(n, g * widths[0], *x.shape[2:4])
        for i in range(1, NUM_LAYERS + 1):
            if i <= 3:
                cin, cout = widths[i - 1], widths[i]
                w = self.weights[i - 1].view(g, cin, 16, cout).permute(0, 3, 1, 2).reshape(g * cout, cin, 4, 4)
                h = F.conv2d(h, w, self.biases[i - 1].reshape(-1), 2, 1, groups=g)
            else:
                cin, cout = widths[7 - i], widths[6 - i]
                w = self.weights[i - 1].view(g, cin, 4, 4, cout).permute(0, 1, 4, 2, 3).reshape(g * cin, cout, 4, 4)
                h = F.conv_transpose2d(h, w, self.biases[i - 1].reshape(-1), 2, 1, groups=g)
            h = self.acts[i - 1](h)
            if after_layer is not None:
                per_class = after_layer(i, h.view(n, g, -1, *h.shape[2:]).transpose(0, 1))
                h = per_class.transpose(0, 1).reshape(n, -1, *h.shape[2:])
        return h.view(n, g, widths[0], *h.shape[2:]).permute(1, 0, 3, 4, 2)

    def nchw_layers(self, c: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Class c's (weight, bias) per layer in the layout of F.conv2d / F.conv_transpose2d."""
        widths = (self.in_channels, *self.hidden)
        out = []
        for i in range(3):
            w = self.weights[i][c].T.reshape(widths[i + 1], widths[i], 4, 4)
            out.append((w.contiguous(), self.biases[i][c]))
        for i in range(3):
            cin, cout = widths[3 - i], widths[2 - i]
            w = self.weights[3 + i][c].view(cin, 4, 4, cout).permute(0, 3, 1, 2)
            out.append((w.contiguous(), self.biases[3 + i][c]))
        return out

    def layer_shapes(self, side: int) -> list[tuple[int, int, int]]:
        """(H, W, C) of each layer's activation for square inputs of `side` pixels."""
        widths = (self.in_channels, *self.hidden)
        sides = [side // 2, side // 4, side // 8, side // 4, side // 2, side]
        chans = [widths[1], widths[2], widths[3], widths[2], widths[1], widths[0]]
        return [(s, s, c) for s, c in zip(sides, chans)]


# ---------------------------------------------------------------------------------------------
# Training


# Image side from which training runs class by class (AutoencoderBank.forward_per_class): on this
# project's 2-core CPU the im2col + bmm step trained 1.31x faster than separate modules at 8 px but
# 0.74x at 16 px and 0.36x at 32 px (bench/results/ebm_training_cpu.txt at commit 8515994).
PER_CLASS_TRAINING_FROM = 16


def training_forward(bank: "AutoencoderBank", side: int, device: torch.device) -> Callable:
    """The bank's training pass for this device and image side: on CUDA one grouped convolution
    per layer (launch-bound small kernels); on CPU per-class oneDNN convolutions from
    PER_CLASS_TRAINING_FROM px, im2col + bmm below. All three are the same math (tests/test_ebm.py)."""
    if device.type == "cuda":
        return bank.forward_grouped
    return bank.forward_per_class if side >= PER_CLASS_TRAINING_FROM else bank


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _train_noise(cfg: EBMConfig, generator: torch.Generator) -> Callable | None:
    """The per-layer perturbation of training: activation noise and/or dropout."""
    spec, rate = cfg.noise_train, cfg.dropout_rate
    noisy = set(spec.layers) | (set(PLACEMENTS[spec.placement]) if rate > 0 else set())
    if not noisy:
        return None

    def after_layer(i, h):
        if i not in noisy:
            return h
        if rate > 0:
            keep = torch.empty_like(h).bernoulli_(1 - rate, generator=generator)
            h = h * keep / (1 - rate)
        if spec.alpha > 0:
            h = h + spec.alpha * fill_(torch.empty_like(h), spec.distribution, cfg.noise_params, generator)
        return h

    return after_layer


RESIDUAL_DRAWS, RESIDUAL_SEED = 4, 2024  # the fixed training noise of the convergence check, every snapshot


def fixed_noise_residual(forward: Callable, cfg: EBMConfig, batch: torch.Tensor) -> float:
    """Per-pixel MSE on `batch` (C, m, H, W, ch) under the training perturbation of every layer in
    the placement but the output layer, with the same draws at every call (common random numbers).

    Why: output noise alpha*z has mean 0 and is independent of the rest, so it only adds the floor
    alpha^2 E[z^2] to the loss; without it and with fixed draws, two snapshots differ by their
    weights alone, which a 2% convergence bar needs (the per-epoch noisy loss jitters by more).
    """
    gen = make_generator(RESIDUAL_SEED, batch.device)
    perturb = _train_noise(cfg, gen)
    hidden_only = None if perturb is None else (lambda i, h: h if i == NUM_LAYERS else perturb(i, h))
    with torch.no_grad():
        return float(np.mean([float(((forward(batch, hidden_only) - batch) ** 2).mean())
                              for _ in range(RESIDUAL_DRAWS if hidden_only else 1)]))


def convergence_columns(history: list[float], residual_0: float, residual_80: float, residual_end: float) -> dict:
    """Row columns that say whether training converged, from the fixed-noise residual before
    training, at the epoch that starts the last 20% and at the end: its relative fall over the last
    20% (the fairness check (a') of bench/ebm_phenomena.py, < 2% to pass), the share of the whole
    run's fall that came in the last 20% (the scale-free reading: a residual that keeps falling on a
    log scale can fail the first and pass this), and the loss curve's tail (common.loss_tail)."""
    change, share = loss_tail(history)
    fall = (residual_80 - residual_end) / residual_end if residual_end > 0 else float("nan")
    whole = residual_0 - residual_end
    return {"residual_initial": residual_0, "residual_at_80": residual_80, "residual_final": residual_end,
            "residual_fall_last20": fall,
            "residual_share_last20": (residual_80 - residual_end) / whole if whole > 0 else float("nan"),
            "loss_tail_change": change, "loss_tail_share": share}


def steps_per_epoch(data: Data, batch_size: int) -> int:
    """Steps for the largest class to see each of its images once."""
    counts = torch.bincount(data.y_train, minlength=data.num_classes)
    return max(1, math.ceil(int(counts.max()) / batch_size))


def train_bank(cfg: EBMConfig, data: Data, callback: Callable[[Progress], object] | None = None,
               state: dict | None = None) -> TrainResult:
    """Train all C autoencoders at once; each sees only its own class.

    `callback(Progress)` runs after every epoch; returning True stops training early. `state`
    (a dict from Progress.state()) resumes a run exactly where it was saved. A non-finite loss
    ends training with status "diverged" instead of raising.
    """
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    x = _to_nhwc(data.x_train.to(device))
    y = data.y_train.to(device)
    classes = data.num_classes
    by_class = [torch.nonzero(y == c).flatten() for c in range(classes)]
    if any(len(ix) == 0 for ix in by_class):
        empty = [c for c, ix in enumerate(by_class) if len(ix) == 0]
        raise ConfigError(f"classes {empty} have no training images; allowed: every class non-empty")

    bank = AutoencoderBank.initialised(classes, x.shape[-1], cfg.hidden_channels, cfg.seed,
                                       cfg.hidden_activation, cfg.output_activation).to(device)
    opt = torch.optim.Adam(bank.parameters(), lr=cfg.lr)
    gen = make_generator(cfg.seed, device)
    per_epoch = steps_per_epoch(data, cfg.batch_size)
    total_steps = cfg.steps or cfg.epochs * per_epoch
    epochs = math.ceil(total_steps / per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if cfg.scheduler == "cosine" else None
    history: list[float] = []
    first_epoch = 0
    at_80 = round(0.8 * epochs)  # the epoch that starts the last 20% of steps
    residual_0 = residual_80 = float("nan")
    if state is not None:
        bank.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        history = list(state["history"])
        first_epoch = int(state["epoch"])
        residual_0, residual_80 = (float(state.get(k, float("nan"))) for k in ("residual_0", "residual_80"))
    perturb = _train_noise(cfg, gen)
    bs = cfg.batch_size
    forward = training_forward(bank, x.shape[1], device)
    probe = torch.stack([x[ix[:min(len(i) for i in by_class)]] for ix in by_class])  # (C, m, H, W, ch)
    if state is None:
        residual_0 = fixed_noise_residual(forward, cfg, probe)

    def snapshot(epoch: int) -> Callable[[], dict]:
        # A deep copy: state_dict() holds live tensors that the next step would overwrite.
        return lambda: copy.deepcopy({"model": bank.state_dict(), "optimizer": opt.state_dict(),
                                      "scheduler": sched.state_dict() if sched is not None else {},
                                      "generator": gen.get_state(), "history": history, "epoch": epoch,
                                      "residual_0": residual_0, "residual_80": residual_80})

    status = STATUS_OK
    epoch = first_epoch
    for epoch in range(first_epoch + 1, epochs + 1):
        steps = min(per_epoch, total_steps - (epoch - 1) * per_epoch)
        # Each class walks its own reshuffled images, cycling when it has fewer than needed.
        need = steps * bs
        idx = torch.stack([
            ix[torch.cat([torch.randperm(len(ix), generator=gen, device=device)
                          for _ in range(math.ceil(need / len(ix)))])[:need]]
            for ix in by_class]).view(classes, steps, bs)
        total = torch.zeros((), device=device)
        for s in range(steps):
            batch = x[idx[:, s]]  # (G, bs, H, W, C)
            out = forward(batch, perturb)
            loss = ((out - batch) ** 2).flatten(1).mean(1).sum()  # sum of per-class MSEs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.detach()
        mean_loss = float(total) / steps / classes
        history.append(mean_loss)
        if not math.isfinite(mean_loss):
            status = STATUS_DIVERGED
            break
        if epoch == at_80 and 0 < at_80 < epochs:
            residual_80 = fixed_noise_residual(forward, cfg, probe)
        if callback is not None and callback(Progress(epoch, mean_loss, snapshot(epoch), epoch / epochs)) is True:
            break
    residual_end = fixed_noise_residual(forward, cfg, probe) if status == STATUS_OK else float("nan")
    columns = {"device_name": device_name(device)} | convergence_columns(history, residual_0, residual_80, residual_end)
    return TrainResult(bank, status, epoch, history, time.perf_counter() - start,
                       "" if status == STATUS_OK else f"non-finite loss at epoch {epoch}", columns=columns)


# ---------------------------------------------------------------------------------------------
# Sampling inference


def _noise_key(eval_seed: int, spec: NoiseSpec, image_block: int, draw_block: int, stream: int) -> int:
    """A seed for one (setting, image block, draw block, stream): independent of chunking and order."""
    tag = zlib.crc32(f"{spec.distribution}|{spec.alpha!r}|{spec.placement}".encode())
    state = np.random.SeedSequence([eval_seed, tag, image_block, draw_block, stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="noise")


_BF16_WARNED: set[str] = set()  # the devices already warned that bf16 runs as fp32 there


def precision_that_runs(precision: str, device: torch.device) -> str:
    """The layer precision sampling inference runs at: bf16 only where the hardware has it
    natively (common.fast_bf16); elsewhere bf16 is emulated and slower than fp32 (0.12-0.52x of
    the plain loop on an AVX2 CPU, issue 35), so it runs fp32, with one warning per device."""
    if precision != "bf16":
        return precision
    native, why = fast_bf16(device)
    if native:
        return "bf16"
    if str(device) not in _BF16_WARNED:
        _BF16_WARNED.add(str(device))
        warnings.warn(f"precision=bf16 runs as fp32 on {device}: {why}; the rows' eval_precision says so",
                      RuntimeWarning, stacklevel=3)
    return "fp32"


class SamplingEvaluator:
    """Energies of a trained bank under test-time noise, block by block, on one path.

    Both paths run each class's layers as PyTorch convolutions (oneDNN on CPU, cuDNN on GPU), and
    add the same keyed draws to the same elements, so they differ only in float rounding:
    - `fused_bank`: one call per class and layer over every (image, draw) of a call, the output
      layer as the bank's matmul + col2im (oneDNN's transposed convolution is slow with one output
      channel: 5x on an AVX-512 CPU, bench/ebm_sampling.py);
    - `plain_loop`: the loop a researcher would write (bench/ebm_sampling.py's plain reference,
      fed the keyed draws): per class and per draw, one call over the block's images, all six
      layers as convolutions. Its calls are 1/(draws per call) the size: on a 2-core AVX2 CPU the
      plain loop beat the fused bank at 32 px in some rounds (issue 35), so `choose_path` times both.
    Noise for one (setting, image block, draw block) comes from its own generator, drawn class by
    class and layer by layer in that order on both paths, so the result does not depend on how
    many draw blocks share one call.
    """

    def __init__(self, bank: AutoencoderBank, params: NoiseParams, ecfg: EvalConfig, side: int, seed: int = 0,
                 path: str = "fused_bank", precision: str | None = None):
        """`precision`: the layer precision that runs (None: ecfg.precision as precision_that_runs
        resolves it on the bank's device)."""
        check_choice("path", path, EVAL_PATHS)
        self.bank, self.params, self.ecfg, self.path = bank, params, ecfg, path
        self.seed = seed  # the evaluation seed: keys the noise generators
        self.shapes = [(c, h, w) for h, w, c in bank.layer_shapes(side)]  # NCHW per image
        # bf16: channels-last activations and weights, where oneDNN's bf16 kernels are fastest.
        self.precision = precision or precision_that_runs(ecfg.precision, bank.weights[0].device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.format = torch.channels_last if self.precision == "bf16" else torch.contiguous_format
        self.layers = [[(w.to(self.dtype, memory_format=self.format), b.to(self.dtype)) for w, b in bank.nchw_layers(c)]
                       for c in range(bank.num_classes)]
        # The fused path's output layer: the bank's matmul + col2im form, in fp32 for both
        # precisions (it is cheap, and bf16 made it slower).
        self.output_layer = [(bank.weights[5][c:c + 1], bank.biases[5][c:c + 1]) for c in range(bank.num_classes)]
        hidden, output = bank.activation_names
        self.acts = [_INPLACE[hidden]] * (NUM_LAYERS - 1) + [_INPLACE[output]]

    def memory_order(self, h: torch.Tensor) -> torch.Tensor:
        """An NCHW tensor viewed with its dimensions in memory order: NHWC when channels-last."""
        return h.permute(0, 2, 3, 1) if self.format == torch.channels_last else h

    def sharing(self, spec: NoiseSpec) -> str:
        """The sharing a setting runs with: its own, else the evaluation's default."""
        return spec.sharing or self.ecfg.noise_sharing

    def holds_noise(self, spec: NoiseSpec) -> bool:
        """Whether every noisy layer's draws of a call are held at once: common noise (drawn once
        for all classes) and the plain loop (a class's draws, before its per-draw calls)."""
        return self.sharing(spec) == "common" or self.path == "plain_loop"

    def draw_blocks_per_call(self, images: int, spec: NoiseSpec | None = None) -> int:
        """How many draw blocks one class's convolution call takes within the memory budget."""
        acts = [math.prod(s) for s in self.shapes]
        per_pass = 4 * (3 * max(acts) + sum(acts) // 2)  # live activations, output, noise scratch
        if spec is not None and self.holds_noise(spec):
            per_pass += 4 * sum(acts[i - 1] for i in spec.layers)
        per_block = per_pass * images * self.ecfg.block_draws
        budget = self.ecfg.memory_mb * 2**20
        if budget == 0:
            device = self.bank.weights[0].device
            budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 64 * 2**20
        return max(1, int(budget // per_block))

    def layer(self, c: int, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i (1-based) of class c on NCHW input, activation applied in place."""
        if i == NUM_LAYERS and self.path == "fused_bank":
            w, b = self.output_layer[c]
            h = _conv_up(h.float().permute(0, 2, 3, 1).unsqueeze(0), w, b)[0].permute(0, 3, 1, 2)
            h = h.contiguous(memory_format=self.format)
        else:
            w, b = self.layers[c][i - 1]
            h = F.conv2d(h, w, b, 2, 1) if i <= 3 else F.conv_transpose2d(h, w, b, 2, 1)
        return self.acts[i - 1](h)

    def clean(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """clean[c][i-1]: activation of layer i of class c for images x: (B, C, H, W)."""
        out = []
        x = x.to(self.dtype, memory_format=self.format)
        for c in range(self.bank.num_classes):
            acts, h = [], x
            for i in range(1, NUM_LAYERS + 1):
                h = self.layer(c, i, h)
                acts.append(h)
            out.append(acts)
        return out

    def _fill(self, z: torch.Tensor, distribution: str, gens: list[list[torch.Generator]]) -> None:
        """Row j of z from draw block j's generators, one contiguous chunk per stream. On CPU the
        chunks run on a thread pool: PyTorch's samplers are single-threaded, and drawing alone takes
        19-28% of the fused fp32 time (noise-only rows of bench/results/ebm_sampling_cpu.txt)."""
        jobs = [(chunk, gen) for row, row_gens in zip(z, gens)
                for chunk, gen in zip(row.chunk(len(row_gens)), row_gens)]
        if z.device.type == "cpu" and torch.get_num_threads() > 1:
            list(_pool().map(lambda job: fill_(job[0], distribution, self.params, job[1]), jobs))
        else:
            for chunk, gen in jobs:
                fill_(chunk, distribution, self.params, gen)

    def energies(self, x, clean, spec: NoiseSpec, image_block: int, d0: int, d1: int) -> torch.Tensor:
        """Energies (G, B, d1 - d0) for draws d0..d1-1 (d0 a multiple of block_draws). Layers up
        to the first noisy one are deterministic, so they come from the clean pass.

        Independent noise is drawn class by class, layer by layer (on the fused path just before it
        is used, so it stays in cache). Common noise is drawn once, every noisy layer in turn, and
        added to every class's activation: the same generators in the same order, so class 0 sees
        the draws it sees under independent noise, and 1/C of the numbers are drawn."""
        bd = self.ecfg.block_draws
        first_block, last_block = d0 // bd, (d1 - 1) // bd
        k = last_block - first_block + 1
        b = x.shape[0]
        streams = self.ecfg.noise_streams
        gens = [[make_generator(_noise_key(self.seed, spec, image_block, first_block + j, s), x.device)
                 for s in range(streams)] for j in range(k)]
        shapes = {i: (k * b * bd, *self.shapes[i - 1]) for i in spec.layers}  # NCHW, batch (block, image, draw)

        def draw(i: int, flat: torch.Tensor) -> torch.Tensor:
            """Layer i's noise from flat scratch, in the activations' dtype and memory format.
            z is in NCHW order in both precisions, so bf16 perturbs the same elements with the same
            draws as fp32. One converting copy: an add_ of fp32 into bf16 took as long as drawing."""
            z = flat[:math.prod(shapes[i])].view(k, -1)  # row j: draw block j
            self._fill(z, spec.distribution, gens)
            return z.view(shapes[i]).to(self.dtype, memory_format=self.format)

        def held() -> dict[int, torch.Tensor]:
            """Every noisy layer's draws of the call, layer by layer."""
            flat = torch.empty(sum(math.prod(s) for s in shapes.values()), device=x.device)
            offsets = itertools.accumulate((math.prod(shapes[i]) for i in spec.layers), initial=0)
            return {i: draw(i, flat[o:]) for i, o in zip(spec.layers, offsets)}

        if self.sharing(spec) == "common":
            shared = held()
            noise_of = lambda c: shared.__getitem__  # noqa: E731
        elif self.holds_noise(spec):
            noise_of = lambda c: held().__getitem__  # noqa: E731
        else:
            flat = torch.empty(max(math.prod(s) for s in shapes.values()), device=x.device)
            noise_of = lambda c: functools.partial(draw, flat=flat)  # noqa: E731
        run = self._fused_class if self.path == "fused_bank" else self._plain_class
        e = torch.stack([run(c, x, clean[c], noise_of(c), spec, k) for c in range(self.bank.num_classes)])
        lo = d0 - first_block * bd
        return e[:, :, lo:lo + (d1 - d0)]

    def _fused_class(self, c: int, x, clean_c, noise, spec: NoiseSpec, k: int) -> torch.Tensor:
        """Class c's energies (B, k * block_draws): one call per layer over all (block, image, draw)."""
        b, bd, start = x.shape[0], self.ecfg.block_draws, spec.layers[0]
        a = self.memory_order(clean_c[start - 1])  # batch order below is (draw block, image, draw)
        # contiguous(): with one image in the block, reshape keeps the expand's zero strides
        # (a view), and the in-place noise add below would write one element many times.
        h = a.unsqueeze(0).unsqueeze(2).expand(k, b, bd, *a.shape[1:]).reshape(k * b * bd, *a.shape[1:]).contiguous()
        h = h.permute(0, 3, 1, 2) if self.format == torch.channels_last else h
        for i in range(start, NUM_LAYERS + 1):
            if i > start:
                h = self.layer(c, i, h)
            if i in spec.layers:
                h.add_(noise(i), alpha=spec.alpha)
        h = self.memory_order(h).reshape(k, b, bd, -1).float()
        e = (h - self.memory_order(x).reshape(1, b, 1, -1)).pow_(2).sum(-1)  # (k, B, bd)
        return e.permute(1, 0, 2).reshape(b, k * bd)

    def _plain_class(self, c: int, x, clean_c, noise, spec: NoiseSpec, k: int) -> torch.Tensor:
        """Class c's energies (B, k * block_draws): a pass over the block's images per draw."""
        b, bd, start = x.shape[0], self.ecfg.block_draws, spec.layers[0]
        z = {i: noise(i).view(k, b, bd, *self.shapes[i - 1]) for i in spec.layers}
        target = self.memory_order(x).reshape(b, -1)
        out = torch.empty(b, k, bd, device=x.device)
        for j, d in itertools.product(range(k), range(bd)):
            h = torch.add(clean_c[start - 1], z[start][j, :, d], alpha=spec.alpha)  # the clean pass is shared
            for i in range(start + 1, NUM_LAYERS + 1):
                h = self.layer(c, i, h)
                if i in spec.layers:
                    h.add_(z[i][j, :, d], alpha=spec.alpha)
            out[:, j, d] = (self.memory_order(h).reshape(b, -1).float() - target).pow_(2).sum(-1)
        return out.view(b, k * bd)


# ---------------------------------------------------------------------------------------------
# Which path runs (EvalConfig.path = "auto")

PATH_CACHE = "eval_paths.json"  # under the data root: the winner per machine and shapes (choose_path)
PATH_TIMING_ROUNDS = 3  # interleaved rounds of one call per candidate, after a warm-up call each
PATH_TIMING_CLASSES = 2  # classes a timing call runs: every class runs the same shapes


def path_key(ev: SamplingEvaluator, spec: NoiseSpec, images: int, precisions: Sequence[str]) -> str:
    """What a path's speed depends on: the device, its capability and threads, torch, and the
    shapes of a call (bank widths, image side, block sizes, memory budget, the setting's noisy
    layers and sharing). Not the law or alpha: every path draws the same numbers, so they change
    all paths' cost alike."""
    device, bank = ev.bank.weights[0].device, ev.bank
    if device.type == "cuda":
        capability = "compute capability {}.{}".format(*torch.cuda.get_device_capability(device))
    else:
        capability = torch.backends.cpu.get_cpu_capability()
    return json.dumps({
        "device": device_name(device), "capability": capability, "native_bf16": fast_bf16(device)[0],
        "threads": torch.get_num_threads(), "torch": torch.__version__, "classes": bank.num_classes,
        "widths": [bank.in_channels, *bank.hidden], "side": ev.shapes[-1][-1], "images": images,
        "block_draws": ev.ecfg.block_draws, "memory_mb": ev.ecfg.memory_mb, "noise_streams": ev.ecfg.noise_streams,
        "layers": list(spec.layers), "sharing": ev.sharing(spec), "precisions": list(precisions)}, sort_keys=True)


def read_path_cache(file: Path) -> dict:
    """The cached choices; an unreadable or malformed file is an empty cache (rewritten on the next
    choice), never an error: it only saves a second of timing."""
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def first_classes(bank: AutoencoderBank, count: int) -> AutoencoderBank:
    """A bank of the first `count` classes of `bank` (the same weights), or bank itself."""
    if bank.num_classes <= count:
        return bank
    sub = AutoencoderBank(count, bank.in_channels, bank.hidden, *bank.activation_names).to(bank.weights[0].device)
    sub.load_state_dict({name: value[:count] for name, value in bank.state_dict().items()})
    return sub


def time_paths(evaluators: dict[tuple[str, str], SamplingEvaluator], x: torch.Tensor, spec: NoiseSpec,
               draws: int) -> dict[tuple[str, str], float]:
    """Seconds of one call of each (path, precision): the clean pass of image block x and `draws`
    draws. Best of PATH_TIMING_ROUNDS interleaved rounds (each candidate once a round, so load
    from other work hits all alike), after a warm-up call each (oneDNN builds its kernels on the
    first call of a shape)."""
    def call(ev: SamplingEvaluator) -> float:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        ev.energies(x, ev.clean(x), spec, 0, 0, draws)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - t0

    for ev in evaluators.values():
        call(ev)
    best = {key: math.inf for key in evaluators}
    for _ in range(PATH_TIMING_ROUNDS):
        for key, ev in evaluators.items():
            best[key] = min(best[key], call(ev))
    return best


def choose_path(bank: AutoencoderBank, params: NoiseParams, ecfg: EvalConfig, x: torch.Tensor,
                spec: NoiseSpec | None, seed: int, cache_folder: Path) -> SamplingEvaluator:
    """The evaluator sampling inference runs with: the configured path, or under "auto" the
    fastest correct (path, precision) for these shapes on this machine. fp32 is always a
    candidate, bf16 only where it was asked for and is native (precision_that_runs). The first
    evaluation of a shape times each candidate (time_paths) and caches the winner in
    cache_folder/PATH_CACHE (atomic write; a write that fails only warns); later ones read it.
    `spec`: the evaluation's first noisy setting (None: all are noise-free, one clean pass per
    block, nothing worth timing: the fused bank). Timing runs about 8 calls of one draw block on
    PATH_TIMING_CLASSES classes (the same call shapes at a fraction of the work). Two processes
    that time at once each write their own entry; the last write wins and the other's shape is
    timed again when next met. Timings under load from other work can pick the slower path by a
    little: bench/README.md shows the choice against each path per machine.
    """
    side = x.shape[-1]
    precision = precision_that_runs(ecfg.precision, bank.weights[0].device)
    if ecfg.path != "auto" or spec is None:
        return SamplingEvaluator(bank, params, ecfg, side, seed, "fused_bank" if ecfg.path == "auto" else ecfg.path,
                                 precision)
    precisions = ("fp32", "bf16") if precision == "bf16" else ("fp32",)
    candidates = list(itertools.product(EVAL_PATHS, precisions))
    x = x[:ecfg.block_images]
    key = path_key(SamplingEvaluator(bank, params, ecfg, side, seed), spec, len(x), precisions)
    file = cache_folder / PATH_CACHE
    cache = read_path_cache(file)
    hit = cache.get(key)
    if isinstance(hit, dict) and (hit.get("path"), hit.get("precision")) in candidates:
        return SamplingEvaluator(bank, params, ecfg, side, seed, hit["path"], hit["precision"])
    few = first_classes(bank, PATH_TIMING_CLASSES)
    t0 = time.perf_counter()
    seconds = time_paths({(p, q): SamplingEvaluator(few, params, ecfg, side, seed, p, q) for p, q in candidates},
                         x, spec, min(ecfg.block_draws, ecfg.n_checkpoints[-1]))
    path, precision = min(seconds, key=seconds.get)
    cache[key] = {"path": path, "precision": precision, "seconds": {f"{p} {q}": s for (p, q), s in seconds.items()},
                  "timing_seconds": time.perf_counter() - t0,
                  "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        write_json_atomic(cache, file)
    except OSError as exc:
        warnings.warn(f"eval path cache {file} not written ({exc}); the next evaluation times the paths again",
                      RuntimeWarning, stacklevel=3)
    return SamplingEvaluator(bank, params, ecfg, side, seed, path, precision)


@torch.no_grad()
def evaluate(bank: AutoencoderBank, data: Data, settings: Sequence[NoiseSpec], cfg: EBMConfig,
             ecfg: EvalConfig = EvalConfig(), eval_seed: int = 0) -> list[dict]:
    """Sampling inference for every test setting in one pass over the test set.

    Returns one row per (setting, n checkpoint): the setting's columns, accuracy, the mean and
    across-draw variance of the energy (averaged over images and classes), and every image's
    predicted class and label (`predictions`, `labels`, in test-set order). A setting with
    alpha = 0 is deterministic: one pass, reported at every n with n_effective = 1. Test noise is
    keyed by `eval_seed`.
    """
    # Each setting's sharing resolved, so its row says what ran.
    settings = [replace(s, sharing=s.sharing or ecfg.noise_sharing) for s in map(check_setting, settings)]
    if not settings:
        raise ConfigError("settings is empty; allowed: a non-empty list of test noise settings")
    device = next(bank.parameters()).device
    bank.eval()
    x_all = data.x_test.to(device)
    y_all = data.y_test.to(device)
    side = x_all.shape[-1]
    noisy = next((s for s in settings if s.alpha > 0), None)
    ev = choose_path(bank, cfg.noise_params, ecfg, x_all, noisy, eval_seed, data_root(cfg.data))
    n_max = ecfg.n_checkpoints[-1]
    tallies = [DrawTally(ecfg.n_checkpoints if s.alpha > 0 else (1,)) for s in settings]
    seconds = [0.0] * len(settings)  # the whole evaluation of each setting
    clean_share = 0.0  # each setting's share of the clean passes, which every n needs
    bi = ecfg.block_images
    steps = [ev.draw_blocks_per_call(bi, s) * ecfg.block_draws for s in settings]
    for block, lo in enumerate(range(0, len(x_all), bi)):
        x, labels = x_all[lo:lo + bi], y_all[lo:lo + bi]
        t0 = time.perf_counter()
        clean = ev.clean(x)
        clean_energy = torch.stack([(acts[-1] - x).pow(2).flatten(1).sum(-1) for acts in clean]).unsqueeze(-1)
        t_clean = time.perf_counter() - t0
        clean_share += t_clean / len(settings)
        for si, spec in enumerate(settings):
            t0 = time.perf_counter()
            if spec.alpha == 0:
                tallies[si].add_block(lambda d0, d1: clean_energy, labels, 1, 1, time.perf_counter)
            else:
                def per_draw(d0, d1, spec=spec):
                    return ev.energies(x, clean, spec, block, d0, d1)
                tallies[si].add_block(per_draw, labels, n_max, steps[si], time.perf_counter, ecfg.block_draws)
            seconds[si] += time.perf_counter() - t0 + t_clean / len(settings)

    rows, total, labels_list = [], len(x_all), y_all.tolist()
    for spec, tally, secs in zip(settings, tallies, seconds):
        setting = {column: getattr(spec, key) for key, column in SETTING_COLUMNS.items()}
        rows += [setting | r for r in rows_at_checkpoints(ecfg.n_checkpoints, spec.alpha > 0, lambda m, t=tally: {
            "accuracy": t.correct[m] / total, "energy_mean": t.mean[m] / total,
            "energy_var": t.var[m] / total if m > 1 else float("nan"),
            # Per image: best vs second-best class mean energy, the std of a class's n-draw mean,
            # and the std of the gap itself (smaller under common noise); a gap well above its
            # std means n was large enough for the argmin.
            "energy_gap_median": t.median_gap(m), "energy_mean_std_median": t.median_mean_std(m),
            "energy_gap_std_median": t.median_gap_std(m),
            "test_images": total, "eval_seconds": secs, "eval_precision": ev.precision, "eval_path": ev.path,
            # The evaluation's seconds up to this n (no draw block past n's counted: what a run
            # stopping at n costs), the clean passes' share included: accuracy per second.
            "eval_seconds_at_n": t.seconds[m] + clean_share,
            # Per image, in test-set order: what a paired comparison of two models needs.
            "predictions": t.predictions(m), "labels": labels_list})]
    return rows


def describe(cfg: EBMConfig, ecfg: EvalConfig, settings) -> str:
    """One trial's work, for --dry-run."""
    return (f"{len(settings)} test settings, up to n = {ecfg.n_checkpoints[-1]} draws each "
            f"(data set {cfg.data.dataset}, {cfg.data.image_size} px)")


def cost(cfg: EBMConfig, ecfg: EvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's projected seconds on `device`, for --dry-run (issue 35 item 5): its training
    steps at the measured training rate of this bank's shape, and each setting's passes (test
    images x classes x draws; one draw at alpha 0) at the measured sampling rate of its image size,
    precision, noise sharing and path. The sampling rows were measured with full placement: a
    placement that perturbs fewer layers costs less than priced."""
    sizes = planned_sizes(cfg.data)
    if sizes is None:
        return no_projection(f"data set {cfg.data.dataset}: its size is known only once loaded")
    est, side, classes = Estimate(), cfg.data.image_size, sizes.classes
    model = f"bank of {classes}, {cfg.data.channels} ch, hidden {'-'.join(map(str, cfg.hidden_channels))}"
    path = "grouped" if device.type == "cuda" else "per_class" if side >= PER_CLASS_TRAINING_FROM else "bmm"
    steps = planned_steps(cfg.steps, cfg.epochs, math.ceil(sizes.largest_class / cfg.batch_size))
    price_training(est, "ebm", model, side, cfg, steps, device, train_bank,
                   lambda: synthetic_data(classes, cfg.data.channels, side, cfg.batch_size, classes), path=path)
    precision = "bf16" if ecfg.precision == "bf16" and fast_bf16(device)[0] else "fp32"
    # auto is priced as the fused bank, the path it chose on every shape measured so far (bench/README.md).
    eval_path = "fused_bank" if ecfg.path == "auto" else ecfg.path
    specs = [replace(s, sharing=s.sharing or ecfg.noise_sharing) for s in map(check_setting, settings)]
    for sharing in dict.fromkeys(s.sharing for s in specs):
        mine = [s for s in specs if s.sharing == sharing]
        passes = sum(sizes.test * classes * (ecfg.n_checkpoints[-1] if s.alpha > 0 else 1) for s in mine)
        noisy = max(mine, key=lambda s: s.alpha)

        def measure(spec=noisy):  # passes of one image block through draw blocks, on a random bank
            bank = AutoencoderBank.initialised(classes, cfg.data.channels, cfg.hidden_channels, 0,
                                               cfg.hidden_activation, cfg.output_activation).to(device)
            data = synthetic_data(classes, cfg.data.channels, side, 1, ecfg.block_images)
            run = lambda k: evaluate(bank, data, [spec], cfg, replace(  # noqa: E731
                ecfg, precision=precision, path=eval_path, n_checkpoints=(k * ecfg.block_draws,)))
            return time_steps(run) * ecfg.block_draws * ecfg.block_images * classes, threads_on(device)

        key = {"kind": "eval", "family": "ebm", "image_size": side, "precision": precision,
               "noise_sharing": sharing, "path": eval_path}
        est.add(f"evaluation, {sharing} noise", passes, rate_for(key, device, measure))
    return est


# The quick and smoke presets fail both fairness checks of bench/ebm_phenomena.py (docs/ebm-findings.md).
PRESET_NOTES = {p: f"note: --preset {p} is a demonstration of the service, not a test of the paper: its training "
                   "has not converged and its n is too small for the energy gaps (docs/ebm-findings.md); "
                   "--preset fair is the miniature that can decide a finding"
                for p in ("quick", "smoke")}

METHOD = Method(
    "ebm", "ebm", preset_configs, lambda cfg: load_dataset(cfg.data), train_bank, evaluate, check_setting,
    setting_columns=SETTING_COLUMNS,
    summary_columns=("distribution_train", "alpha_train", "placement_train", "dropout_rate",
                     "distribution_test", "placement_test", "alpha_test"),
    final_rows=rows_at_largest_n, describe=describe, cost=cost, presets=("paper", "fair", "quick", "smoke"),
    diverging={"lr": 1e30}, preset_notes=PRESET_NOTES)

METHODS = [METHOD, discriminative.METHOD]  # Appendix E's classifiers belong to this paper's family

"""SE-SNN: stochastic layers with a max-entropy regulariser (papers/se-snn.txt, PROTOCOLS sec. 4).

A stochastic layer predicts a Gaussian per unit, mu = f_mu(h), sigma = softplus(f_sigma(h)),
samples z = mu + eps * sigma and passes relu(z) on; the classifier layer stays deterministic.
Deep VIB follows Alemi et al.: its next layer reads the Gaussian code z itself (with the code as
the last hidden layer, a linear softmax decoder); `vib_z_relu=True` passes relu(z) on as SE-SNN's
layer does.
The max-entropy regulariser with margin b reads the batch's log sigma (N samples x K units) of
each stochastic layer, aggregated per task (Eq. 5-7):

- neuron (pruning, Eq. 5):       mean_j (b - mean_i log s_ij)^+
- sample (label noise, Eq. 6):   mean_i (b - mean_j log s_ij)^+
- both (adversarial, Eq. 7):     mean_ij (b - log s_ij)^+

Loss = task loss + omega * (sum of Omega over the stochastic layers). The paper's "margin 16" and
"b 4" are read as b = log 16 and log 4: its Appendix B.1 sweeps b over {log 1, log 4, log 16}.

Baselines of the paper, as orthogonal fields (`model` x `loss`):
- model `deterministic`: the plain MLP; with `parallel_layer` its penultimate layer gets a parallel
  Linear whose output is added (the paper's parameter-matched baseline);
- model `vib`: the same stochastic layers with Deep VIB's KL(N(mu, sigma) || N(0, 1)) summed over
  units, weight `vib_beta` (Alemi et al.), instead of the max-entropy term;
- loss `bootstrap_soft` / `bootstrap_hard` (Reed et al., beta 0.95 / 0.8, the targets as in
  Patrini et al.'s public code: the soft target keeps its gradient);
- loss `forward` (Patrini et al.): train on the noisy labels, estimate the corruption matrix T from
  the training set's softmax (per class, discard values at or above the `anchor_percentile`-th
  percentile and take the argmax of the rest as the anchor; Patrini's code does this on a view
  and so also zeroes later rows' entries, here each class reads an untouched copy), then train
  a fresh network on -log (softmax @ T)[noisy label]. `model=sesnn, loss=forward` is SE-SNN+Forward.

Label noise is patterned: each class is flipped to one other class (drawn per seed, so the pattern
changes across runs and is fixed within one) with probability `label_noise`; test labels stay clean.
At test time `test_mode=mean` passes mu only (the paper's pruning and label-noise tests);
`sample` averages the softmax over `test_draws` draws. Attacks on a sampled model use the expected
gradient over `eot_draws` draws (Athalye et al.'s EOT), as the paper does for its defence study:
FGS steps along the mean of the draws' gradients; CW-L2 (ART's CarliniL2Method, untargeted) runs
on the mean over `eot_draws` draws of the logits (`eot_output=logits`, whose gradient is the
expected gradient) or of the softmax (`probs`), its open parameters the `cw_*` fields; with
`eot_fixed_draws` every call of one attack averages the same draws (its objective is then a
function of the input alone, which ART's line and binary searches assume).

Compression by pruning (Sec. 4.1, Tables 1-3) is the method `sesnn_prune`: LeNet-5-Caffe, VGG16
with 512-wide FC layers and Table 3's CIFAR-100 variant, every hidden layer stochastic (a
convolution's Gaussian per channel and position, Eq. 5 per channel), trained with omega 1e-4 and
b = log 4, then Molchanov et al.'s pipeline (never-active units removed at once, then the unit of
highest mean log sigma, i.e. pre-activation entropy, removed and the network fine-tuned, round by
round until the error budget); layers are rebuilt smaller by trainables/pruning.py, which also
measures size, FLOPs and memory as the paper's tables do.
"""

from __future__ import annotations

import copy
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
from trainables.common import (STATUS_OK, Method, Progress, TrainResult, check_device, loss_tail,
                               configs_from_preset, device_name, params_digest, resolve_device)
from trainables.corruptions import CW_OUTPUTS, eot_cw_l2, eot_fgsm
from trainables.cost import (Estimate, measured_per_class, no_projection, price_training, supervised_steps,
                             synthetic_data)
from trainables.data import Data, DataConfig, load_dataset, planned_sizes
from trainables.injection import stream_seed
from trainables.label_noise import flip_pattern, noisy_labels  # noqa: F401 (the family's label noise)
from trainables.noise import make_generator
from trainables.pruning import (feature_map_size, inactive_units, least_important, multiplications, remove_units,
                                weight_count)
from trainables.supervised import OPTIMIZERS, SCHEDULERS, train_supervised

MODELS = ("deterministic", "sesnn", "vib")
AGGREGATIONS = ("neuron", "sample", "both")
EQUATIONS = {"neuron": "Eq. 5", "sample": "Eq. 6", "both": "Eq. 7"}  # the paper's name of each aggregation
LOSSES = ("ce", "bootstrap_soft", "bootstrap_hard", "forward")
TEST_MODES = ("mean", "sample")
ATTACKS = ("none", "fgsm", "cw_l2")
PROB_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before a log, as in Patrini et al.'s code


@dataclass(frozen=True)
class SESNNConfig:
    """One training run: an MLP, which of its hidden layers are stochastic, the regulariser, the
    task loss, and the label noise of the training set."""

    data: DataConfig = DataConfig()
    hidden: tuple[int, ...] = (128, 128)  # hidden widths (the label-noise MLP; the defence's is 1024-1024-256)
    model: str = "deterministic"  # deterministic | sesnn | vib
    stochastic_layers: tuple[int, ...] = (0, 1)  # 0-based hidden layers made stochastic (sesnn, vib)
    parallel_layer: bool = True  # deterministic: a parallel Linear added to the penultimate layer
    aggregation: str = "sample"  # neuron (Eq. 5) | sample (Eq. 6) | both (Eq. 7)
    omega: float = 1e-2
    margin: float = math.log(4)  # b, in units of log sigma
    sigma_floor: float = 1e-6  # added to softplus so log sigma stays finite in float32
    vib_beta: float = 1e-3
    vib_z_relu: bool = False  # Deep VIB: False reads z directly (Alemi et al.); True passes relu(z) like SE-SNN
    loss: str = "ce"  # ce | bootstrap_soft | bootstrap_hard | forward
    soft_beta: float = 0.95
    hard_beta: float = 0.8
    anchor_percentile: float = 97.0  # forward: 100 takes the plain argmax as the anchor
    label_noise: float = 0.0  # probability that a training label is flipped to its class's pattern target
    adv_train_eps: float = 0.0  # > 0: FGS adversarial training at this L-inf budget
    adv_train_weight: float = 0.5  # loss = (1 - w) * clean + w * adversarial (Goodfellow et al.)
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20  # per stage (forward trains two stages)
    steps: int = 0  # > 0: exactly this many optimiser steps per stage instead of `epochs`
    scheduler: str = "cosine"  # annealed to 0: a constant lr on noisy labels keeps memorising them (no plateau)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if not isinstance(self.hidden, tuple) or not self.hidden or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden):
            raise ConfigError(f"hidden={self.hidden!r} is not allowed; allowed: a non-empty tuple of integers >= 1")
        check_choice("model", self.model, MODELS)
        layers = tuple(range(len(self.hidden)))
        if not isinstance(self.stochastic_layers, tuple) or not all(i in layers for i in self.stochastic_layers) \
                or len(set(self.stochastic_layers)) != len(self.stochastic_layers):
            raise ConfigError(f"stochastic_layers={self.stochastic_layers!r} is not allowed; allowed: distinct "
                              f"hidden-layer indices from {', '.join(map(str, layers))}")
        if self.model != "deterministic" and not self.stochastic_layers:
            raise ConfigError(f"stochastic_layers=() with model={self.model!r} makes nothing stochastic; "
                              f"allowed: indices from {', '.join(map(str, layers))}")
        for name in ("parallel_layer", "vib_z_relu"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed; allowed: True, False")
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        for name in ("omega", "vib_beta", "adv_train_eps", "weight_decay"):
            check_range(name, getattr(self, name), 0.0)
        check_range("margin", self.margin, -math.inf)
        check_range("sigma_floor", self.sigma_floor, 0.0, low_open=True)
        check_choice("loss", self.loss, LOSSES)
        for name in ("soft_beta", "hard_beta", "adv_train_weight"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("anchor_percentile", self.anchor_percentile, 0.0, 100.0, low_open=True)
        check_range("label_noise", self.label_noise, 0.0, 1.0)
        if self.label_noise == 1.0:
            raise ConfigError("label_noise=1.0 flips every label; allowed: [0, 1)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("lr", self.lr, 0.0, low_open=True)
        for name in ("batch_size", "epochs"):
            check_int(name, getattr(self, name), 1)
        check_int("steps", self.steps, 0)
        check_int("seed", self.seed, 0)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_device(self.device)


@dataclass(frozen=True)
class SESNNEvalConfig:
    """How a trained network is tested: mu only or sampled, and the attack's draws."""

    test_mode: str = "mean"  # mean (mu only) | sample (softmax averaged over test_draws draws)
    test_draws: int = 12  # Deep VIB's test-time sample count (Alemi et al.)
    eot_draws: int = 10  # draws per expected gradient of an attack on a sampled model
    eval_seed: int | None = None  # seeds test-time draws; None: the trial's seed
    eval_batch_size: int = 1000
    # CW-L2 (the paper gives none of these): ART's CarliniL2Method defaults, except the initial
    # constant, 1 rather than ART's 0.01: on the closed-form linear case of tests/test_sesnn.py, at
    # ART's other defaults, 0.01 left perturbations up to 16% above the minimal L2 and 1 within 3%.
    eot_output: str = "logits"  # what an attack's draws average: logits (expected gradient) | probs (log mean softmax)
    cw_confidence: float = 0.0  # kappa: the rival logit must beat the true one by this much
    cw_learning_rate: float = 0.01
    cw_binary_search_steps: int = 10
    cw_max_iter: int = 10  # gradient steps per binary-search step (ART's line search in each)
    cw_initial_const: float = 1.0
    cw_max_halving: int = 5
    cw_max_doubling: int = 5
    cw_images: int = 1000  # the first this many test images are attacked by CW-L2 (0: all): its cost
    # True: every model call of one CW attack averages the same eot_draws draws (common random numbers,
    # from their own seed), so its line and binary searches compare losses of one deterministic
    # objective; the attacked images are then tested on fresh draws as always. False: each call draws afresh.
    eot_fixed_draws: bool = True

    def __post_init__(self):
        check_choice("test_mode", self.test_mode, TEST_MODES)
        for name in ("test_draws", "eot_draws", "eval_batch_size", "cw_binary_search_steps", "cw_max_iter"):
            check_int(name, getattr(self, name), 1)
        for name in ("cw_max_halving", "cw_max_doubling", "cw_images"):
            check_int(name, getattr(self, name), 0)
        check_optional_int("eval_seed", self.eval_seed, 0)
        check_choice("eot_output", self.eot_output, CW_OUTPUTS)
        if not isinstance(self.eot_fixed_draws, bool):
            raise ConfigError(f"eot_fixed_draws={self.eot_fixed_draws!r} is not allowed; allowed: True, False")
        check_range("cw_confidence", self.cw_confidence, 0.0)
        for name in ("cw_learning_rate", "cw_initial_const"):
            check_range(name, getattr(self, name), 0.0, low_open=True)


# ---------------------------------------------------------------------------------------------
# The network


class StochasticLayer(nn.Module):
    """mu = norm(f_mu(h)), sigma = softplus(f_sigma(h)) + floor, z = mu + eps * sigma (eps from
    `generator`); `sample=False` passes mu. The last forward's (mu, sigma) stay for the regulariser.
    A unit is an output row of `mu` (a neuron, or a channel of a convolution: one Gaussian per
    channel and position, its entropy aggregated per channel)."""

    def __init__(self, mu: nn.Module, log_scale: nn.Module, floor: float, norm: nn.Module | None = None):
        super().__init__()
        self.mu, self.log_scale = mu, log_scale
        self.norm = norm if norm is not None else nn.Identity()
        self.floor, self.sample, self.generator = floor, True, None
        self.shared = False  # one draw per unit for the whole batch (an attack's common random numbers)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu = self.norm(self.mu(h))
        sigma = F.softplus(self.log_scale(h)) + self.floor
        self.last = (mu, sigma)
        if not self.sample:
            return mu
        shape = (1, *mu.shape[1:]) if self.shared else mu.shape  # shared: an image's noise is not its row's
        return mu + sigma * torch.randn(shape, generator=self.generator, device=mu.device, dtype=mu.dtype)


class StochasticLinear(StochasticLayer):
    """The MLP's stochastic layer: both predictors Linear."""

    def __init__(self, fan_in: int, width: int, floor: float):
        super().__init__(nn.Linear(fan_in, width), nn.Linear(fan_in, width), floor)


class StochasticConv2d(StochasticLayer):
    """The convolutional stochastic layer of the compression networks: both predictors Conv2d,
    BatchNorm on mu if `norm` (the VGG runs), a Gaussian per channel and position."""

    def __init__(self, fan_in: int, width: int, kernel: int, padding: int, floor: float, norm: bool):
        super().__init__(nn.Conv2d(fan_in, width, kernel, padding=padding),
                         nn.Conv2d(fan_in, width, kernel, padding=padding), floor,
                         nn.BatchNorm2d(width) if norm else None)


class ParallelLinear(nn.Module):
    """a(h) + b(h): the baseline's penultimate layer with as many weights as a stochastic one."""

    def __init__(self, fan_in: int, width: int):
        super().__init__()
        self.main, self.parallel = nn.Linear(fan_in, width), nn.Linear(fan_in, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.main(h) + self.parallel(h)


class StochasticNet(nn.Module):
    """A network whose StochasticLayers sample or pass mu as it is told, all at once."""

    @property
    def stochastic(self) -> list[StochasticLayer]:
        return [m for m in self.modules() if isinstance(m, StochasticLayer)]

    def set_noise(self, sample: bool, generator: torch.Generator | None, shared: bool = False) -> None:
        """Sample (or pass mu) from `generator`; `shared`: one noise draw per unit for the whole batch,
        so an image's noise does not depend on which images share its batch (DrawMean's fixed draws)."""
        for m in self.stochastic:
            m.sample, m.generator, m.shared = sample, generator, shared


class SNN(StochasticNet):
    """Flatten, then per hidden width a Linear (or stochastic / parallel layer) and ReLU, then the
    deterministic classifier."""

    def __init__(self, cfg: SESNNConfig, in_features: int, classes: int):
        super().__init__()
        layers, width = [], in_features
        for i, h in enumerate(cfg.hidden):
            if cfg.model != "deterministic" and i in cfg.stochastic_layers:
                layers.append(StochasticLinear(width, h, cfg.sigma_floor))
            elif cfg.model == "deterministic" and cfg.parallel_layer and i == len(cfg.hidden) - 1:
                layers.append(ParallelLinear(width, h))
            else:
                layers.append(nn.Linear(width, h))
            width = h
        self.hidden = nn.ModuleList(layers)
        self.classifier = nn.Linear(width, classes)
        # Deep VIB's code z is read as it is (Alemi et al.) unless vib_z_relu; every other layer's output goes through ReLU
        self.relu_after = [not (cfg.model == "vib" and not cfg.vib_z_relu and isinstance(m, StochasticLinear))
                           for m in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer, relu in zip(self.hidden, self.relu_after):
            h = torch.relu(layer(h)) if relu else layer(h)
        return self.classifier(h)


def max_entropy(log_sigma: torch.Tensor, margin: float, aggregation: str) -> torch.Tensor:
    """Omega of one layer from its (N, K) log sigma: Eq. 5 (neuron), 6 (sample) or 7 (both)."""
    if aggregation == "neuron":
        return F.relu(margin - log_sigma.mean(0)).mean()
    if aggregation == "sample":
        return F.relu(margin - log_sigma.mean(1)).mean()
    return F.relu(margin - log_sigma).mean()


def hinge_active_shares(log_sigmas: list[torch.Tensor], margin: float) -> dict[str, float]:
    """The share of Eq. 5, 6 and 7's hinge terms (b - .)^+ that are active (positive), pooled over
    the layers' (N, K) log sigma: where every term is active the three regularisers are one loss,
    omega * (b - mean log sigma), and differ only where the margin binds for some terms."""
    terms = {"neuron": [ls.mean(0) for ls in log_sigmas], "sample": [ls.mean(1) for ls in log_sigmas],
             "both": [ls.flatten() for ls in log_sigmas]}
    return {f"hinge_active_{k}": float((margin - torch.cat(v) > 0).float().mean()) for k, v in terms.items()}


def vib_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over units, mean over the batch (Deep VIB)."""
    return (-torch.log(sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5).sum(1).mean()


def regulariser(model: SNN, cfg: SESNNConfig) -> torch.Tensor:
    """The weighted regulariser of the last forward pass (0 for a deterministic model)."""
    terms = [(max_entropy(torch.log(s), cfg.margin, cfg.aggregation) if cfg.model == "sesnn" else vib_kl(mu, s))
             for mu, s in (m.last for m in model.stochastic)]
    if not terms:
        return torch.zeros(())
    return (cfg.omega if cfg.model == "sesnn" else cfg.vib_beta) * torch.stack(terms).sum()


# ---------------------------------------------------------------------------------------------
# Label noise and the losses of the baselines


def true_transition(pattern: np.ndarray, p: float) -> np.ndarray:
    """T[i, j] = P(noisy label j | true label i) of the patterned flips."""
    t = np.eye(len(pattern)) * (1 - p)
    t[np.arange(len(pattern)), pattern] += p
    return t


def estimate_transition(probs: np.ndarray, percentile: float) -> np.ndarray:
    """Patrini et al.'s anchor estimate of T from softmax outputs (N, C); module docstring."""
    t = np.empty((probs.shape[1], probs.shape[1]))
    for i in range(probs.shape[1]):
        column = probs[:, i].copy()
        if percentile < 100:
            column[column >= np.percentile(column, percentile, method="higher")] = 0.0
        t[i] = probs[int(np.argmax(column))]
    return t


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits, 1).clamp(PROB_EPS, 1 - PROB_EPS)


def task_loss(cfg: SESNNConfig, logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy, a bootstrap loss (Reed et al.) or the forward-corrected loss, mean over the batch."""
    if cfg.loss == "ce" or (cfg.loss == "forward" and transition is None):  # forward's first stage is plain CE
        return F.cross_entropy(logits, y)
    q = _probs(logits)
    t = F.one_hot(y, logits.shape[1]).to(q.dtype)
    if cfg.loss == "bootstrap_soft":
        return -((cfg.soft_beta * t + (1 - cfg.soft_beta) * q) * torch.log(q)).sum(1).mean()
    if cfg.loss == "bootstrap_hard":
        z = F.one_hot(q.argmax(1), logits.shape[1]).to(q.dtype)
        return -((cfg.hard_beta * t + (1 - cfg.hard_beta) * z) * torch.log(q)).sum(1).mean()
    return -torch.log((q @ transition).gather(1, y[:, None]).clamp_min(PROB_EPS)).mean()


# ---------------------------------------------------------------------------------------------
# Training


def load_data(cfg: SESNNConfig) -> Data:
    return load_dataset(cfg.data)


def build_model(cfg: SESNNConfig, data: Data, device) -> SNN:
    return SNN(cfg, int(np.prod(data.x_train.shape[1:])), data.num_classes).to(device)


def _stage(cfg, model, x, y, transition, gen, callback, state, epoch_offset) -> TrainResult:
    """One supervised stage on (x, y): task loss + regulariser, FGS adversarial training optional."""

    def loss_of(m: SNN, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        total = task_loss(cfg, m(xb), yb, transition) + regulariser(m, cfg)
        if cfg.adv_train_eps > 0:
            xa = eot_fgsm(m, xb, yb, cfg.adv_train_eps, draws=1)  # the training draw's gradient
            adv = task_loss(cfg, m(xa), yb, transition) + regulariser(m, cfg)
            total = (1 - cfg.adv_train_weight) * total + cfg.adv_train_weight * adv
        return total

    def on_epoch(p: Progress):
        if callback is None:
            return None
        extra = {"stage": 2 if transition is not None else 1}
        if transition is not None:
            extra["transition"] = transition.cpu()
        stages = 2 if cfg.loss == "forward" else 1  # the share of the whole training, both stages
        done = (p.done + (1 if transition is not None else 0)) / stages
        return callback(Progress(p.epoch + epoch_offset, p.loss, lambda: p.state() | extra, done))

    return train_supervised(model, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs,
                            steps=cfg.steps, scheduler=cfg.scheduler, batch_loss=loss_of,
                            generators={"snn_rng": gen}, callback=on_epoch, state=state,
                            optimizer=cfg.optimizer, weight_decay=cfg.weight_decay)


def predict_probs(model: SNN, x: torch.Tensor, sample: bool, draws: int, generator, batch: int) -> torch.Tensor:
    """Softmax on x: of mu only, or averaged over `draws` draws of the stochastic layers."""
    model.eval()
    model.set_noise(sample, generator)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            k = draws if sample and model.stochastic else 1
            out.append(sum(F.softmax(model(xb), 1) for _ in range(k)) / k)
    return torch.cat(out)


def train_sesnn(cfg: SESNNConfig, data: Data, callback: Callable[[Progress], object] | None = None,
                state: dict | None = None) -> TrainResult:
    """Train on the noisy labels; `forward` trains twice (estimate T, then a fresh net on the
    corrected loss), resuming in whichever stage the checkpoint was taken."""
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    x = data.x_train.to(device)
    y, flipped, pattern = noisy_labels(data.y_train, data.num_classes, cfg.label_noise, cfg.seed)
    y, flipped = y.to(device), flipped.to(device)
    stage = int(state.get("stage", 1)) if state else 1
    transition, history, epochs1 = None, [], 0
    if stage == 1:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data, device)
        gen = make_generator(stream_seed(cfg.seed, "snn_train"), device)
        model.set_noise(True, gen)
        stopped = []

        def stage1(p: Progress):  # a True from the caller (Tune stopping the trial) skips stage 2 too
            answer = callback(p) if callback is not None else None
            stopped.append(answer is True)
            return answer

        res = _stage(cfg, model, x, y, None, gen, stage1, state, 0)
        history, epochs1 = list(res.history), res.epochs_done
        if res.status != STATUS_OK or cfg.loss != "forward" or any(stopped):
            return _finish(cfg, res, res.history, model, x, flipped, pattern, None, start)
        probs = predict_probs(model, x, False, 1, None, 4096).cpu().double().numpy()
        transition = torch.as_tensor(estimate_transition(probs, cfg.anchor_percentile), dtype=torch.float32,
                                     device=device)
        state = None
    else:
        transition = state["transition"].to(device, torch.float32)
        epochs1 = int(state["stage1_epochs"])
        history = list(state.get("stage1_history", []))  # a checkpoint from before it kept them: none
    torch.manual_seed(stream_seed(cfg.seed, "stage2_init"))  # a fresh network; a resumed one loads its state
    model = build_model(cfg, data, device)
    gen = make_generator(stream_seed(cfg.seed, "snn_train_stage2"), device)
    model.set_noise(True, gen)

    def with_stage1(p: Progress):
        if callback is None:
            return None
        return callback(Progress(p.epoch, p.loss, lambda: p.state() | {"stage1_epochs": epochs1,
                                                                        "stage1_history": history}, p.done))

    res = _stage(cfg, model, x, y, transition, gen, with_stage1, state, epochs1)
    last_stage = list(res.history)
    res.history = history + res.history
    res.epochs_done += epochs1
    return _finish(cfg, res, last_stage, model, x, flipped, pattern, transition, start)


def _finish(cfg, res, last_stage, model, x, flipped, pattern, transition, start) -> TrainResult:
    """The result with its label-noise, loss and entropy measurements as the run's columns; loss
    columns read the last stage (forward's corrected training)."""
    nan = float("nan")
    info = {"device_name": device_name(x.device), "label_noise_realised": float(flipped.float().mean()),
            "flip_pattern": json.dumps(pattern.tolist()),
            "initial_loss": float(last_stage[0]) if last_stage else nan,
            "final_loss": float(last_stage[-1]) if last_stage else nan,
            **dict(zip(("loss_tail_change", "loss_tail_share"), loss_tail(last_stage))),
            "transition_error": nan, "log_sigma_flipped": nan, "log_sigma_kept": nan,
            "hinge_active_neuron": nan, "hinge_active_sample": nan, "hinge_active_both": nan}
    if transition is not None:
        info["transition_error"] = float(np.abs(transition.cpu().double().numpy()
                                                - true_transition(pattern, cfg.label_noise)).mean())
    if model.stochastic and res.status == STATUS_OK:
        model.eval()
        with torch.no_grad():
            model.set_noise(False, None)
            model(x)
            log_sigmas = [torch.log(m.last[1]) for m in model.stochastic]
            per_sample = log_sigmas[-1].mean(1)  # the last stochastic layer's entropy
        if cfg.model == "sesnn":  # on the whole (noisy) training set, means passed on: where the margin binds
            info |= hinge_active_shares(log_sigmas, cfg.margin)
        if flipped.any():
            info["log_sigma_flipped"] = float(per_sample[flipped].mean())
        if (~flipped).any():
            info["log_sigma_kept"] = float(per_sample[~flipped].mean())
    model.eval()
    info["params_digest"] = params_digest(model)
    artefacts = {"transition": transition.cpu().numpy()} if transition is not None else {}
    artefacts |= epoch_losses(res.history, last_stage)
    return TrainResult(model, res.status, res.epochs_done, res.history, time.perf_counter() - start, res.message,
                       artefacts, info)


def epoch_losses(history: list[float], last_stage: list[float]) -> dict:
    """App. B.4's convergence curve as a trial artefact: the training loss (task loss plus the
    weighted regulariser) of each epoch of the network that is tested (`epoch_loss`; forward's
    corrected training) and, for forward, of its first, plain cross-entropy stage."""
    out = {"epoch_loss": np.asarray(last_stage, float)} if last_stage else {}
    if len(history) > len(last_stage):
        out["epoch_loss_stage1"] = np.asarray(history[:len(history) - len(last_stage)], float)
    return out


train = train_sesnn


# ---------------------------------------------------------------------------------------------
# Evaluation


def check_setting(setting) -> dict:
    """A test setting is {"attack": "none" | "fgsm" | "cw_l2", "eps": FGS's L-inf budget} (eps 0
    with none and with cw_l2, which has no budget: it finds the smallest L2 perturbation)."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with keys attack, eps")
    check_keys("test setting", setting, ("attack", "eps"))
    attack, eps = setting.get("attack", "none"), setting.get("eps", 0.0)
    check_choice("attack", attack, ATTACKS)
    check_range("eps", eps, 0.0, 1.0)
    if attack in ("none", "cw_l2") and eps != 0:
        raise ConfigError(f"eps={eps!r} with attack={attack!r}; allowed: 0")
    return {"attack": attack, "eps": float(eps)}


def evaluate(model: SNN, data: Data, settings, cfg: SESNNConfig, ecfg: SESNNEvalConfig, eval_seed: int = 0):
    """One row per (attack, eps): clean-label test accuracy. An attacked row adds the attack's
    success rate (of the images the clean row classifies right, the share the attack changed and
    the network then gets wrong) and the mean L2 norm of those successful perturbations (Carlini &
    Wagner's measure); CW-L2 attacks the first `cw_images` test images, and its row is over those."""
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    sample = ecfg.test_mode == "sample" and bool(model.stochastic)
    draws = ecfg.eot_draws if sample else 1
    base = {"test_images": len(x), "num_classes": data.num_classes}
    rows, clean_right = [], None
    for s in (check_setting(s) for s in settings):
        t0 = time.perf_counter()
        gen = make_generator(stream_seed(eval_seed, "snn_test", s["attack"], s["eps"]), device)
        n = min(len(x), ecfg.cw_images or len(x)) if s["attack"] == "cw_l2" else len(x)
        x0, y0 = x[:n], y[:n]
        xs = x0
        if s["attack"] == "fgsm":
            model.set_noise(sample, gen)
            xs = torch.cat([eot_fgsm(model, x[i:i + ecfg.eval_batch_size], y[i:i + ecfg.eval_batch_size], s["eps"],
                                     draws=draws)
                            for i in range(0, len(x), ecfg.eval_batch_size)])
        elif s["attack"] == "cw_l2":
            fixed = ecfg.eot_fixed_draws and sample
            cw_gen = make_generator(stream_seed(eval_seed, "snn_cw_draws"), device) if fixed else gen
            model.set_noise(sample, cw_gen, shared=fixed)
            xs = eot_cw_l2(model, x0, y0, draws=draws, output=ecfg.eot_output, confidence=ecfg.cw_confidence,
                           learning_rate=ecfg.cw_learning_rate, binary_search_steps=ecfg.cw_binary_search_steps,
                           max_iter=ecfg.cw_max_iter, initial_const=ecfg.cw_initial_const,
                           max_halving=ecfg.cw_max_halving, max_doubling=ecfg.cw_max_doubling,
                           batch_size=ecfg.eval_batch_size, generator=cw_gen if fixed else None)
        probs = predict_probs(model, xs, sample, ecfg.test_draws, gen, ecfg.eval_batch_size)
        right = probs.argmax(1) == y0
        row = base | s | {"test_images": n, "accuracy": float(right.float().mean()),
                          "attack_success_rate": math.nan, "mean_l2": math.nan}
        if s["attack"] != "none":
            if clean_right is None:  # the clean row's predictions: the same draws
                clean_gen = make_generator(stream_seed(eval_seed, "snn_test", "none", 0.0), device)
                clean_right = predict_probs(model, x, sample, ecfg.test_draws, clean_gen,
                                            ecfg.eval_batch_size).argmax(1) == y
            l2 = (xs - x0).flatten(1).norm(dim=1)
            success = clean_right[:n] & ~right & (l2 > 0)
            row |= {"attack_success_rate": float(success.sum()) / max(1, int(clean_right[:n].sum())),
                    "mean_l2": float(l2[success].mean()) if success.any() else math.nan}
        rows.append(row | {"eval_seconds": time.perf_counter() - t0})
    model.set_noise(True, None)
    return rows


PRESETS: dict[str, dict] = {
    # The paper's MNIST at 28 px; epochs are our default (the paper gives none for MNIST).
    "paper": {"dataset": "mnist", "image_size": 28, "channels": 1, "epochs": 20},
    # The embedded MNIST subset (4,000 train / 1,000 test) at the paper's 28 px, so the paper's own
    # networks (784 inputs): 4-25 s per label-noise trial, 1.5-3 min per defence trial on one CPU core
    # (bench/results/mnist5k_cost_cpu.txt). `--dataset digits --set image_size=8` is the older stand-in.
    "quick": {"dataset": "mnist5k", "image_size": 28, "channels": 1, "epochs": 60, "batch_size": 64},
    # Seconds: for tests and for checking that a pipeline runs end to end.
    "smoke": {"dataset": "digits", "image_size": 8, "epochs": 2, "batch_size": 32, "train_limit": 16,
              "test_limit": 40, "hidden": (16, 16)},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[SESNNConfig, SESNNEvalConfig]:
    return configs_from_preset(PRESETS, SESNNConfig(), SESNNEvalConfig, preset, overrides)


def describe(cfg: SESNNConfig, ecfg: SESNNEvalConfig, settings) -> str:
    model = {"sesnn": f"SE-SNN ({cfg.aggregation}, omega {cfg.omega:g}, b {cfg.margin:.3g})",
             "vib": f"Deep VIB (beta {cfg.vib_beta:g})", "deterministic": "deterministic MLP"}[cfg.model]
    adv = f", FGS training at {cfg.adv_train_eps:g}" if cfg.adv_train_eps else ""
    return (f"{model} {cfg.hidden}, loss {cfg.loss}, label noise {cfg.label_noise:g}{adv} on {cfg.data.dataset} "
            f"at {cfg.data.image_size} px; {len(settings)} test settings")


def cost(cfg: SESNNConfig, ecfg: SESNNEvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's training seconds on `device`: steps per stage (forward trains two) at the
    measured rate of this network, loss and adversarial training. Not priced: the attacks."""
    sizes = planned_sizes(cfg.data)
    if sizes is None:
        return no_projection(f"data set {cfg.data.dataset}: its size is known only once loaded")
    est = Estimate()
    model = (f"{cfg.model} {'-'.join(map(str, cfg.hidden))}, loss {cfg.loss}, FGS training "
             f"{cfg.adv_train_eps:g}, {sizes.classes} classes, {cfg.data.channels} ch")
    per_class = measured_per_class(cfg.batch_size, sizes.classes)
    price_training(est, "sesnn", model, cfg.data.image_size, cfg, supervised_steps(cfg, sizes.train), device,
                   train_sesnn, lambda: synthetic_data(sizes.classes, cfg.data.channels, cfg.data.image_size,
                                                       per_class, 64),
                   what="training" if cfg.loss != "forward" else "training, per stage (two stages)")
    return est


def final_rows(rows: list[dict]) -> list[dict]:
    """The headline is the unattacked test row."""
    return [r for r in rows if r.get("attack") == "none"] or rows


METHOD = Method(
    "sesnn", "sesnn", preset_configs, load_data, train, evaluate, check_setting,
    setting_columns={"attack": "attack", "eps": "eps"},
    summary_columns=("model", "loss", "label_noise", "adv_train_eps", "attack", "eps"),
    final_rows=final_rows, describe=describe, cost=cost, diverging={"lr": 1e30})



# ---------------------------------------------------------------------------------------------
# Network compression by pruning (Sec. 4.1, Tables 1-3)

# The compression networks: ("conv", width, kernel, padding), ("pool", "max" | "avg") of 2x2, or
# ("fc", width); every conv and fc layer is stochastic and prunable, the classifier follows.
# LeNet-5-Caffe (BVLC caffe examples/mnist/lenet.prototxt): conv5x5 20, pool, conv5x5 50, pool, fc 500.
_VGG_BLOCK = lambda width, n: (*(("conv", width, 3, 1) for _ in range(n)), ("pool", "max"))  # noqa: E731
ARCHS = {
    "lenet5": (("conv", 20, 5, 0), ("pool", "max"), ("conv", 50, 5, 0), ("pool", "max"), ("fc", 500)),
    # VGG16 with 512-wide FC layers (Louizos et al. 2017, Dai et al. 2018's VIBNet code, config "D").
    "vgg16": (*_VGG_BLOCK(64, 2), *_VGG_BLOCK(128, 2), *_VGG_BLOCK(256, 3), *_VGG_BLOCK(512, 3),
              *_VGG_BLOCK(512, 3), ("fc", 512), ("fc", 512)),
    # Table 3's CIFAR-100 variant (Liu et al. 2017): the two FC layers replaced by three conv
    # layers, one more in each of the last three blocks (16 conv layers, VIBNet's config "G5"),
    # the last pool an average, then the classifier.
    "vgg16_cifar100": (*_VGG_BLOCK(64, 2), *_VGG_BLOCK(128, 2), *_VGG_BLOCK(256, 4), *_VGG_BLOCK(512, 4),
                       *_VGG_BLOCK(512, 4)[:-1], ("pool", "avg")),
    # App. B.2: the label-noise MLP 784-128-128-10, both hidden layers stochastic (pruned with label noise).
    "mlp": (("fc", 128), ("fc", 128)),
}
PRUNE_STAGES = ("trained", "batch_pruned", "pruned")
BUDGET_DATA = ("val", "test")


@dataclass(frozen=True)
class PruneConfig:
    """One compression run: a network of ARCHS (conv nets, or App. B.2's MLP) whose hidden layers
    are all stochastic, trained with Eq. 5 (per neuron / channel; `aggregation` picks Eq. 6 or 7),
    then pruned as Molchanov et al. (2017b) and the paper do: remove the units never active on the
    training set, then one unit of highest entropy at a time, each removal followed by fine-tuning
    (longer while it has not yet recovered: `recovery_steps`), until the error has grown by more
    than `error_budget`. `model=deterministic` trains the same layers on mu only and stops after
    the never-active units (App. B.2's Baseline)."""

    data: DataConfig = DataConfig()
    arch: str = "lenet5"  # lenet5 | vgg16 | vgg16_cifar100 | mlp (App. B.2's 784-128-128-10)
    widths: tuple[int, ...] = ()  # the hidden widths before pruning; () = the architecture's own
    batch_norm: bool = False  # BatchNorm on each conv layer's mu (VIBNet's and Liu et al.'s VGGs have it)
    # sesnn: every hidden layer sampled in training and fine-tuning | deterministic: mu only (the
    # same layers, sigma never drawn nor regularised; omega must be 0): App. B.2's Baseline "without
    # stochastic layers", which has no entropy to rank units by, so only its never-active units go.
    model: str = "sesnn"
    omega: float = 1e-4  # the paper's weight of Eq. 5; 0 is the baseline arm (same pipeline, no regulariser)
    margin: float = math.log(4)  # b = log 4: the paper's "4", read as the family does (module docstring)
    # The regulariser's aggregation: neuron (Eq. 5, the compression study's) | sample (Eq. 6, the
    # label-noise study's: App. B.2 prunes the label-noise SE-SNN) | both (Eq. 7). Units are ranked by
    # their mean log sigma whichever trained them.
    aggregation: str = "neuron"
    label_noise: float = 0.0  # patterned label noise on every training label (held-out ones too), App. B.2: 0.4
    sigma_floor: float = 1e-6
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only (training and fine-tuning)
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 30  # the first training (the paper gives none)
    steps: int = 0  # > 0: exactly this many optimiser steps instead of `epochs`
    scheduler: str = "cosine"
    val_size: int = 5000  # training images held out (never trained on) for the budget check
    budget_data: str = "val"  # val (the held-out images) | test (reads the test set, as many pruning papers)
    error_budget: float = 0.002  # allowed rise of the error (a fraction) over the batch-pruned network's
    prune_per_step: int = 1  # units removed per round (the paper: one)
    # Fine-tuning after each removal (the paper and Molchanov et al. give no numbers): same loss as
    # training, a constant rate, a fresh optimiser each round (the surgery makes new parameters).
    # SGD with `momentum`: a fresh Adam's first steps move every weight by ~lr whatever its gradient,
    # which by itself cost the quick LeNet-5 up to 2.6 points (bench/results/prune_sesnn_finetune_cpu.txt).
    finetune_optimizer: str = "sgd"  # sgd | adam
    finetune_steps: int = 50  # optimiser steps after each removal
    finetune_lr: float = 1e-2
    # A removal whose fine-tuned network is over the budget gets up to this many more steps (in
    # chunks of finetune_steps, the budget checked after each) before it ends the pipeline: one
    # round's fine-tuning may not yet have recovered what a removal cost. 0: stop at once.
    recovery_steps: int = 450
    rank_size: int = 0  # training images whose mean log sigma ranks the units each round; 0: all of them
    max_rounds: int = 0  # > 0: stop after this many rounds even within the budget
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_choice("arch", self.arch, tuple(ARCHS))
        hidden = sum(kind != "pool" for kind, *_ in ARCHS[self.arch])
        if not isinstance(self.widths, tuple) or (self.widths and (len(self.widths) != hidden or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.widths))):
            raise ConfigError(f"widths={self.widths!r} is not allowed; allowed: () or {hidden} integers >= 1 "
                              f"(one per hidden layer of {self.arch})")
        if not isinstance(self.batch_norm, bool):
            raise ConfigError(f"batch_norm={self.batch_norm!r} is not allowed; allowed: True, False")
        for name in ("omega", "weight_decay", "momentum"):
            check_range(name, getattr(self, name), 0.0)
        check_choice("model", self.model, ("sesnn", "deterministic"))
        if self.model == "deterministic" and self.omega != 0:
            raise ConfigError(f"omega={self.omega!r} is not allowed with model='deterministic'; allowed: 0 (its "
                              "sigma is never drawn, so there is nothing to regularise)")
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_range("label_noise", self.label_noise, 0.0, 1.0)
        if self.label_noise == 1.0:
            raise ConfigError("label_noise=1.0 flips every label; allowed: [0, 1)")
        check_range("margin", self.margin, -math.inf)
        check_range("sigma_floor", self.sigma_floor, 0.0, low_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("finetune_optimizer", self.finetune_optimizer, OPTIMIZERS)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_range("finetune_lr", self.finetune_lr, 0.0, low_open=True)
        for name in ("batch_size", "epochs", "prune_per_step", "finetune_steps"):
            check_int(name, getattr(self, name), 1)
        for name in ("steps", "rank_size", "max_rounds", "recovery_steps", "seed"):
            check_int(name, getattr(self, name), 0)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("budget_data", self.budget_data, BUDGET_DATA)
        check_int("val_size", self.val_size, 1 if self.budget_data == "val" else 0)
        check_range("error_budget", self.error_budget, 0.0, 1.0)
        check_device(self.device)

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        return self.widths or tuple(layer[1] for layer in ARCHS[self.arch] if layer[0] != "pool")


@dataclass(frozen=True)
class PruneEvalConfig:
    """Testing passes mu only (the paper's test time); nothing is drawn."""

    eval_batch_size: int = 1000

    def __post_init__(self):
        check_int("eval_batch_size", self.eval_batch_size, 1)


class CompressionNet(StochasticNet):
    """A conv net of ARCHS with the given hidden widths: each conv / fc layer stochastic and
    followed by ReLU, 2x2 pools, a flatten before the first fc layer, a deterministic classifier."""

    def __init__(self, arch: str, widths: tuple[int, ...], channels: int, image_size: int, classes: int,
                 floor: float, batch_norm: bool):
        super().__init__()
        self.input_shape = (channels, image_size, image_size)  # what a traced forward pass is fed
        layers, width, flat, it = [], channels, False, iter(widths)
        for kind, *spec in ARCHS[arch]:
            if kind == "pool":
                layers.append(nn.MaxPool2d(2) if spec[0] == "max" else nn.AvgPool2d(2))
                continue
            out = next(it)
            if kind == "conv":
                layers += [StochasticConv2d(width, out, spec[1], spec[2], floor, batch_norm), nn.ReLU()]
            else:
                if not flat:  # the flattened size of the conv part at this image size
                    with torch.no_grad():
                        probe = nn.Sequential(*layers)(torch.zeros(2, channels, image_size, image_size))
                    layers.append(nn.Flatten())
                    width, flat = probe[0].numel(), True
                layers += [StochasticLinear(width, out, floor), nn.ReLU()]
            width = out
        if not flat:
            layers.append(nn.Flatten())
        # An MLP (fc layers only): the input width its architecture string starts with.
        self.mlp_inputs = channels * image_size * image_size if ARCHS[arch][0][0] == "fc" else None
        self.body = nn.Sequential(*layers)
        with torch.no_grad():
            features = self.body(torch.zeros(2, channels, image_size, image_size)).shape[1]
        self.classifier = nn.Linear(features, classes)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(m.mu.weight.shape[0] for m in self.stochastic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))

    def deployed(self) -> nn.Sequential:
        """The test-time network, mu only (the sigma predictors are for training): each stochastic
        layer replaced by its mu predictor (and norm), sharing their modules. What is measured."""
        return nn.Sequential(*[nn.Sequential(m.mu, m.norm) if isinstance(m, StochasticLayer) else m
                               for m in self.body], self.classifier)


def architecture(widths, classes: int, inputs: int | None = None) -> str:
    """The pruned-architecture string of the papers, e.g. 5-12-145-10; an MLP's starts with its
    input width as App. B.2's 145-26-15-10 does (inputs are never pruned here: 784-...)."""
    return "-".join(str(w) for w in (*((inputs,) if inputs else ()), *widths, classes))


def build_compression_net(cfg: PruneConfig, data: Data, widths: tuple[int, ...], device) -> CompressionNet:
    c, size = data.x_train.shape[1], data.x_train.shape[-1]
    try:
        net = CompressionNet(cfg.arch, widths, c, size, data.num_classes, cfg.sigma_floor, cfg.batch_norm)
    except RuntimeError as exc:  # a conv or pool larger than the feature map
        raise ConfigError(f"arch={cfg.arch!r} cannot take image_size={size}: {str(exc).splitlines()[0]}; "
                          f"allowed: 28 for lenet5, 32 for the VGGs") from exc
    return net.to(device)


def channel_log_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """(N * positions, units) log sigma of a layer's (N, units[, H, W]) sigma: a channel's
    Gaussians at every position are its samples, so Eq. 5 and the ranking aggregate per channel."""
    return torch.log(sigma).movedim(1, -1).reshape(-1, sigma.shape[1])


def prune_regulariser(model: CompressionNet, cfg: PruneConfig) -> torch.Tensor:
    """omega * sum over the stochastic layers of Eq. 5 (per neuron / channel; Eq. 6 or 7 as
    cfg.aggregation says) of the last forward."""
    terms = [max_entropy(channel_log_sigma(m.last[1]), cfg.margin, cfg.aggregation) for m in model.stochastic]
    return cfg.omega * torch.stack(terms).sum()


def prune_loss(cfg: PruneConfig) -> Callable[[CompressionNet, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch loss of training and fine-tuning: cross-entropy + omega * Eq. 5."""
    return lambda m, xb, yb: F.cross_entropy(m(xb), yb) + prune_regulariser(m, cfg)


def unit_statistics(model: CompressionNet, x: torch.Tensor, batch: int) -> tuple[list, list]:
    """Per stochastic layer, over x with mu passed (the test-time network): each unit's largest
    mu (its ReLU fires somewhere iff > 0) and its mean log sigma (pre-activation entropy up to a
    constant; the ranking of Sec. 4.1)."""
    model.eval()
    model.set_noise(False, None)
    layers = model.stochastic
    peaks = [torch.full((m.mu.weight.shape[0],), -math.inf, device=x.device) for m in layers]
    sums = [torch.zeros(m.mu.weight.shape[0], dtype=torch.float64, device=x.device) for m in layers]
    count = [0] * len(layers)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
            for k, m in enumerate(layers):
                mu, sigma = m.last
                peaks[k] = torch.maximum(peaks[k], mu.movedim(1, -1).reshape(-1, mu.shape[1]).amax(0))
                ls = channel_log_sigma(sigma)
                sums[k] += ls.double().sum(0)
                count[k] += ls.shape[0]
    return [p.cpu() for p in peaks], [(s / n).cpu() for s, n in zip(sums, count)]


def remove_stochastic_units(model: CompressionNet, idxs: list[list[int]]) -> None:
    """Remove units (per stochastic layer, indices of that layer) in place, sampling on while traced
    so each layer's sigma predictor is coupled to its mu (trainables.pruning)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm's running statistics stay as they are during the trace
    model.set_noise(True, make_generator(0, device))  # the trace's draws leave the global stream alone
    example = torch.zeros(2, *model.input_shape, device=device, dtype=next(model.parameters()).dtype)
    remove_units(model, [(m.mu, i) for m, i in zip(model.stochastic, idxs)], example)
    model.set_noise(False, None)
    model.train(was_training)


def _accuracy(model: CompressionNet, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    model.set_noise(False, None)
    with torch.no_grad():
        hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


@dataclass
class PruneStages:
    """What a compression run hands `evaluate`: the network after each stage of the pipeline."""

    trained: CompressionNet
    batch_pruned: CompressionNet
    pruned: CompressionNet


def _split(cfg: PruneConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) training-set indices: val_size images drawn once per seed are held out."""
    held = cfg.val_size if cfg.budget_data == "val" else 0
    if held >= n:
        raise ConfigError(f"val_size={cfg.val_size} leaves no training images of {n}; allowed: 1 to {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "prune_val_split")))
    return perm[held:].sort().values, perm[:held].sort().values


def over_budget(base: float, accuracy: float, budget: float) -> bool:
    """Whether accuracy fell more than `budget` below `base`. A drop of exactly the budget is allowed:
    the tolerance keeps 0.972 - 0.962 (5 of 500 images, 0.010000000000000009 in floats) within 0.01."""
    return base - accuracy > budget + 1e-9


def finetune(net: CompressionNet, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
             cfg: PruneConfig, base: float, rnd: int) -> tuple[float, int, TrainResult]:
    """Fine-tune `net` after round `rnd`'s removal on (x, y) with the training loss, sampling on:
    `finetune_steps` steps, then, while the accuracy on (xv, yv) is more than `error_budget` below
    `base`, further chunks of `finetune_steps` until `recovery_steps` more are spent. Returns the
    last accuracy, the steps taken and the last chunk's result (its status says if it diverged)."""
    device = x.device
    gen = make_generator(stream_seed(cfg.seed, "prune_finetune_noise", rnd), device)
    used, chunk = 0, 0
    while True:
        steps = min(cfg.finetune_steps, cfg.finetune_steps + cfg.recovery_steps - used)
        net.set_noise(True, gen)
        seed = stream_seed(cfg.seed, "prune_finetune", rnd, chunk)
        torch.manual_seed(seed)
        ft = train_supervised(net, x, y, seed=seed, lr=cfg.finetune_lr, batch_size=cfg.batch_size, epochs=1,
                              steps=steps, scheduler="none",
                              batch_loss=prune_loss(cfg),
                              generators={"snn_rng": gen}, optimizer=cfg.finetune_optimizer,
                              weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        used, chunk = used + steps, chunk + 1
        accuracy = _accuracy(net, xv, yv, 1000)
        if ft.status != STATUS_OK or not over_budget(base, accuracy, cfg.error_budget) \
                or used >= cfg.finetune_steps + cfg.recovery_steps:
            return accuracy, used, ft


TRAIN_SHARE = 0.5  # of the progress bar: the first training; the pruning rounds the rest


def train_prune(cfg: PruneConfig, data: Data, callback: Callable[[Progress], object] | None = None,
                state: dict | None = None) -> TrainResult:
    """Train, batch-prune the never-active units, then remove the highest-entropy unit and fine-tune
    round by round until the budget; a checkpoint after each training epoch and each kept round
    resumes mid-pipeline to the same end (each round draws from seeds of its own)."""
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    fit, val = _split(cfg, len(data.x_train))
    labels, flipped, _ = noisy_labels(data.y_train, data.num_classes, cfg.label_noise, cfg.seed)
    x, y = data.x_train[fit].to(device), labels[fit].to(device)
    xv, yv = ((data.x_train[val], labels[val]) if cfg.budget_data == "val" else (data.x_test, data.y_test))
    xv, yv = xv.to(device), yv.to(device)
    rank = x if not cfg.rank_size or cfg.rank_size >= len(x) else x[torch.randperm(
        len(x), generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "prune_rank")))[:cfg.rank_size].sort().values]
    batch = 1000
    torch.manual_seed(cfg.seed)
    trained = build_compression_net(cfg, data, cfg.hidden_widths, device)

    loss_of = prune_loss(cfg)

    def net_at(widths, weights) -> CompressionNet:
        net = build_compression_net(cfg, data, tuple(widths), device)
        net.load_state_dict(weights)
        return net

    phase = state.get("phase", "train") if state else "train"
    stopped = False
    if phase == "train":
        gen = make_generator(stream_seed(cfg.seed, "prune_train"), device)
        trained.set_noise(cfg.model == "sesnn", gen)

        def on_epoch(p: Progress):
            nonlocal stopped
            if callback is None:
                return None
            answer = callback(Progress(p.epoch, p.loss, lambda: p.state() | {"phase": "train"},
                                       TRAIN_SHARE * p.done, {"units": float(sum(cfg.hidden_widths))}))
            stopped = stopped or answer is True
            return answer

        res = train_supervised(trained, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs,
                               steps=cfg.steps, scheduler=cfg.scheduler, batch_loss=loss_of,
                               generators={"snn_rng": gen}, callback=on_epoch, state=state, optimizer=cfg.optimizer,
                               weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        history, epochs = list(res.history), res.epochs_done
        if res.status != STATUS_OK:
            return TrainResult(trained, res.status, epochs, history, time.perf_counter() - start, res.message,
                               columns={"device_name": device_name(device)})
        peaks, _ = unit_statistics(trained, x, batch)
        dead = [inactive_units(p) for p in peaks]
        current = net_at(trained.widths, trained.state_dict())
        remove_stochastic_units(current, dead)
        base, rnd, log = _accuracy(current, xv, yv, batch), 0, []
    else:
        trained.load_state_dict(state["trained"])
        history, epochs, dead = list(state["history"]), int(state["epochs"]), [list(d) for d in state["dead"]]
        current = net_at(state["widths"], state["model"])
        base, rnd, log = float(state["base_accuracy"]), int(state["round"]), [dict(r) for r in state["log"]]
    batch_pruned = net_at(trained.widths, trained.state_dict())
    remove_stochastic_units(batch_pruned, dead)
    batch_units = sum(batch_pruned.widths)
    removable = max(1, batch_units - len(batch_pruned.widths))
    reason, message, status = "", "", STATUS_OK
    rejected = (math.nan, math.nan)  # units and accuracy of the removal that broke the budget
    finetuned = sum(int(r.get("finetune_steps", 0)) for r in log)
    recovered = sum(int(r.get("finetune_steps", 0)) > cfg.finetune_steps for r in log)
    while not stopped:
        if cfg.model == "deterministic":  # no entropy to rank its units by: the never-active ones went
            reason = "deterministic"
            break
        if cfg.max_rounds and rnd >= cfg.max_rounds:
            reason = "max_rounds"
            break
        _, scores = unit_statistics(current, rank, batch)
        chosen = least_important(scores, cfg.prune_per_step)
        if not any(chosen):
            reason = "one_unit_per_layer"
            break
        candidate = net_at(current.widths, current.state_dict())
        remove_stochastic_units(candidate, chosen)
        accuracy, steps, ft = finetune(candidate, x, y, xv, yv, cfg, base, rnd)
        rnd += 1
        finetuned += steps
        if ft.status != STATUS_OK:
            reason, status, message = "diverged", ft.status, f"fine-tuning of round {rnd}: {ft.message}"
            break
        if over_budget(base, accuracy, cfg.error_budget):
            reason, rejected = "budget", (float(sum(candidate.widths)), accuracy)
            break
        recovered += steps > cfg.finetune_steps
        current = candidate
        log.append({"units": float(sum(current.widths)), "budget_accuracy": accuracy, "loss": float(ft.history[-1]),
                    "finetune_steps": steps})
        if callback is not None:
            snapshot = {"phase": "prune", "trained": trained.state_dict(), "dead": dead, "history": history,
                        "epochs": epochs, "widths": list(current.widths), "model": current.state_dict(),
                        "base_accuracy": base, "round": rnd, "log": list(log)}
            done = TRAIN_SHARE + (1 - TRAIN_SHARE) * min(1.0, (batch_units - sum(current.widths)) / removable)
            stopped = callback(Progress(epochs + rnd, log[-1]["loss"], lambda s=snapshot: copy.deepcopy(s), done,
                                        {"units": log[-1]["units"], "budget_accuracy": accuracy})) is True
    if stopped and not reason:
        reason = "stopped"
    for net in (trained, batch_pruned, current):
        net.eval()
        net.set_noise(False, None)
    columns = {"device_name": device_name(device), "params_digest": params_digest(current),
               "stop_reason": reason, "prune_rounds": rnd, "units_trained": sum(trained.widths),
               "units_batch_pruned": sum(trained.widths) - batch_units, "units_removed_iteratively":
               batch_units - sum(current.widths), "units_left": sum(current.widths),
               "budget_accuracy_start": base, "budget_accuracy_end": log[-1]["budget_accuracy"] if log else base,
               "budget_images": len(xv), "initial_loss": float(history[0]) if history else float("nan"),
               "finetune_steps_total": finetuned, "recovered_rounds": recovered,
               "rejected_units": rejected[0], "rejected_budget_accuracy": rejected[1],
               "label_noise_realised": float(flipped.float().mean())}
    artefacts = {"prune_units": np.array([r["units"] for r in log]),
                 "prune_budget_accuracy": np.array([r["budget_accuracy"] for r in log]),
                 "prune_finetune_steps": np.array([r.get("finetune_steps", 0) for r in log])}
    return TrainResult(PruneStages(trained, batch_pruned, current), status, epochs + rnd, history,
                       time.perf_counter() - start, message, artefacts, columns)


def check_prune_setting(setting) -> dict:
    """A test setting is {"stage": "trained" | "batch_pruned" | "pruned"}: which network is tested."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with key stage")
    check_keys("test setting", setting, ("stage",))
    check_choice("stage", setting.get("stage"), PRUNE_STAGES)
    return {"stage": setting["stage"]}


def evaluate_prune(stages: PruneStages, data: Data, settings, cfg: PruneConfig, ecfg: PruneEvalConfig,
                   eval_seed: int = 0):
    """One row per stage: test error with mu passed, and the compression measures of Tables 1-3
    against the trained network: size (% of its nonzero weights), FLOPs (multiplications, millions),
    run-time memory (% of its feature-map elements), the architecture string."""
    device = next(stages.trained.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    one = x[:1]
    reference = stages.trained.deployed()
    ref_weights, ref_maps = weight_count(reference), feature_map_size(reference, one)
    rows = []
    for s in (check_prune_setting(s) for s in settings):
        t0 = time.perf_counter()
        net = getattr(stages, s["stage"])
        deployed = net.deployed()
        accuracy = _accuracy(net, x, y, ecfg.eval_batch_size)
        weights, flops, maps = weight_count(deployed), multiplications(deployed, one), feature_map_size(deployed, one)
        rows.append(s | {"accuracy": accuracy, "error": 1 - accuracy, "test_images": len(x),
                         "architecture": architecture(net.widths, data.num_classes, net.mlp_inputs),
                         "units": sum(net.widths),
                         "weights": weights, "size_pct": 100 * weights / ref_weights, "multiplications": flops,
                         "mflops": flops / 1e6, "feature_maps": maps, "memory_pct": 100 * maps / ref_maps,
                         "eval_seconds": time.perf_counter() - t0})
    return rows


PRUNE_PRESETS: dict[str, dict] = {
    # LeNet-5-Caffe on MNIST at 28 px, one unit per round as the paper; the VGG16 runs are
    # points of the experiment (search_spaces/sesnn.py). Epochs, fine-tuning and budget are ours.
    "paper": {"dataset": "mnist", "image_size": 28, "channels": 1, "arch": "lenet5"},
    # The embedded MNIST subset (3,500 trained on, 500 held out for the budget, 1,000 test) at 28 px:
    # the paper's LeNet-5 itself on one CPU core. Five units a round, ranked on 1,000 images: one at a
    # time took ~30 s a round on the shared 2-core box (~470 rounds after the batch pruning). Up to
    # 500 fine-tuning steps (9 epochs) per removal: five conv1 channels at once need ~300 to recover.
    # 15 epochs and at most 40 rounds (200 units) so that both arms finish in ~45 min on the shared
    # 2-core box (each trial got ~10% of a core on 2026-12-07; 30 epochs alone took ~30 min there).
    "quick": {"dataset": "mnist5k", "image_size": 28, "channels": 1, "arch": "lenet5", "epochs": 15,
              "batch_size": 64, "val_size": 500, "finetune_steps": 50, "recovery_steps": 450, "error_budget": 0.01,
              "prune_per_step": 5, "rank_size": 1000, "max_rounds": 40},
    # Seconds: LeNet-5's shape at small widths on a few images, three rounds.
    "smoke": {"dataset": "mnist5k", "image_size": 28, "channels": 1, "arch": "lenet5", "widths": (4, 6, 12),
              "train_limit": 8, "test_limit": 40, "epochs": 2, "batch_size": 16, "val_size": 16,
              "finetune_steps": 2, "max_rounds": 3, "error_budget": 1.0},
}


def prune_preset_configs(preset: str, overrides: dict | None = None) -> tuple[PruneConfig, PruneEvalConfig]:
    return configs_from_preset(PRUNE_PRESETS, PruneConfig(), PruneEvalConfig, preset, overrides)


def describe_prune(cfg: PruneConfig, ecfg: PruneEvalConfig, settings) -> str:
    model = (f"deterministic {cfg.arch} (never-active units only)" if cfg.model == "deterministic" else
             f"SE-SNN pruning of {cfg.arch} {'-'.join(map(str, cfg.hidden_widths))} ({EQUATIONS[cfg.aggregation]}, "
             f"omega {cfg.omega:g}, b {cfg.margin:.3g})")
    noise = f", label noise {cfg.label_noise:g}" if cfg.label_noise else ""
    return (f"{model}{noise}, budget +{cfg.error_budget:g} error on {cfg.budget_data}, {cfg.prune_per_step} "
            f"unit(s) per round, {cfg.finetune_steps} fine-tuning steps, on {cfg.data.dataset} at "
            f"{cfg.data.image_size} px; {len(settings)} stages tested")


PRUNE_PRESET_NOTES = {
    "paper": "note: the VGG16 points train without crop/flip augmentation (not built here), so their errors are "
             "not Tables 2-3's; epochs, fine-tuning steps and the error budget are ours (the paper gives none)",
    "quick": "note: 3,500 mnist5k images trained on (500 held out for the budget). prune_sesnn: LeNet-5, 15 epochs, "
             "five units removed a round (the paper: one) and at most 40 rounds (shrunk to fit ~45 min on a shared "
             "2-core machine: a run that stops at max_rounds was still within its budget), so no paper row beside "
             "it; prune_labelnoise_sesnn: the MLP as labelnoise_sesnn's quick preset (60 epochs), one unit a round "
             "to the budget; errors are several times full MNIST's",
    "smoke": "note: --preset smoke checks that the pipeline runs (narrow networks, 80 images, a few rounds); its "
             "numbers mean nothing",
}


def final_prune_rows(rows: list[dict]) -> list[dict]:
    """The headline is the pruned network's row."""
    return [r for r in rows if r.get("stage") == "pruned"] or rows


PRUNE_METHOD = Method(
    "sesnn_prune", "sesnn", prune_preset_configs, load_data, train_prune, evaluate_prune, check_prune_setting,
    setting_columns={"stage": "stage"},
    summary_columns=("arch", "omega", "stage", "architecture", "size_pct", "mflops", "memory_pct", "error"),
    final_rows=final_prune_rows,
    describe=describe_prune, diverging={"lr": 1e30}, preset_notes=PRUNE_PRESET_NOTES)

METHODS = [METHOD, PRUNE_METHOD]

from trainables.reid import REID_METHOD  # noqa: E402  (Table 4's re-identification study: trainables/reid.py's last section)
METHODS.append(REID_METHOD)

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
gradient over `eot_draws` draws (Athalye et al.'s EOT), as the paper does for its defence study.
Pruning (Tables 1-3) is not built yet.
"""

from __future__ import annotations

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
from trainables.corruptions import eot_fgsm
from trainables.data import Data, DataConfig, load_dataset
from trainables.injection import stream_seed
from trainables.noise import make_generator
from trainables.supervised import OPTIMIZERS, SCHEDULERS, train_supervised

MODELS = ("deterministic", "sesnn", "vib")
AGGREGATIONS = ("neuron", "sample", "both")
LOSSES = ("ce", "bootstrap_soft", "bootstrap_hard", "forward")
TEST_MODES = ("mean", "sample")
ATTACKS = ("none", "fgsm")
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

    def __post_init__(self):
        check_choice("test_mode", self.test_mode, TEST_MODES)
        for name in ("test_draws", "eot_draws", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        check_optional_int("eval_seed", self.eval_seed, 0)


# ---------------------------------------------------------------------------------------------
# The network


class StochasticLinear(nn.Module):
    """mu = f_mu(h), sigma = softplus(f_sigma(h)) + floor, z = mu + eps * sigma (eps from
    `generator`); `sample=False` passes mu. The last forward's (mu, sigma) stay for the regulariser."""

    def __init__(self, fan_in: int, width: int, floor: float):
        super().__init__()
        self.mu, self.log_scale = nn.Linear(fan_in, width), nn.Linear(fan_in, width)
        self.floor, self.sample, self.generator = floor, True, None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu = self.mu(h)
        sigma = F.softplus(self.log_scale(h)) + self.floor
        self.last = (mu, sigma)
        if not self.sample:
            return mu
        return mu + sigma * torch.randn(mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype)


class ParallelLinear(nn.Module):
    """a(h) + b(h): the baseline's penultimate layer with as many weights as a stochastic one."""

    def __init__(self, fan_in: int, width: int):
        super().__init__()
        self.main, self.parallel = nn.Linear(fan_in, width), nn.Linear(fan_in, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.main(h) + self.parallel(h)


class SNN(nn.Module):
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

    @property
    def stochastic(self) -> list[StochasticLinear]:
        return [m for m in self.hidden if isinstance(m, StochasticLinear)]

    def set_noise(self, sample: bool, generator: torch.Generator | None) -> None:
        for m in self.stochastic:
            m.sample, m.generator = sample, generator

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


def flip_pattern(classes: int, seed: int) -> np.ndarray:
    """target[c]: the one other class that class c is flipped to, uniform over the others."""
    gen = np.random.default_rng(stream_seed(seed, "label_pattern"))
    return np.array([(c + 1 + gen.integers(classes - 1)) % classes for c in range(classes)])


def noisy_labels(y: torch.Tensor, classes: int, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(noisy labels, flipped mask, pattern): each label flipped to pattern[label] with probability p."""
    pattern = flip_pattern(classes, seed)
    u = torch.rand(len(y), generator=torch.Generator().manual_seed(stream_seed(seed, "label_flips")))
    flipped = u < p
    noisy = torch.where(flipped, torch.as_tensor(pattern)[y.cpu()], y.cpu())
    return noisy.to(y.device), flipped.to(y.device), pattern


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
    torch.manual_seed(stream_seed(cfg.seed, "stage2_init"))  # a fresh network; a resumed one loads its state
    model = build_model(cfg, data, device)
    gen = make_generator(stream_seed(cfg.seed, "snn_train_stage2"), device)
    model.set_noise(True, gen)

    def with_stage1(p: Progress):
        if callback is None:
            return None
        return callback(Progress(p.epoch, p.loss, lambda: p.state() | {"stage1_epochs": epochs1}, p.done))

    res = _stage(cfg, model, x, y, transition, gen, with_stage1, state, epochs1)
    last_stage = list(res.history)
    res.history = history + res.history if stage == 1 else res.history
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
    return TrainResult(model, res.status, res.epochs_done, res.history, time.perf_counter() - start, res.message,
                       artefacts, info)


train = train_sesnn


# ---------------------------------------------------------------------------------------------
# Evaluation


def check_setting(setting) -> dict:
    """A test setting is {"attack": "none" | "fgsm", "eps": L-inf budget} (eps 0 with none)."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with keys attack, eps")
    check_keys("test setting", setting, ("attack", "eps"))
    attack, eps = setting.get("attack", "none"), setting.get("eps", 0.0)
    check_choice("attack", attack, ATTACKS)
    check_range("eps", eps, 0.0, 1.0)
    if attack == "none" and eps != 0:
        raise ConfigError(f"eps={eps!r} with attack='none'; allowed: 0")
    return {"attack": attack, "eps": float(eps)}


def evaluate(model: SNN, data: Data, settings, cfg: SESNNConfig, ecfg: SESNNEvalConfig, eval_seed: int = 0):
    """One row per (attack, eps): clean-label test accuracy."""
    device = next(model.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    sample = ecfg.test_mode == "sample" and bool(model.stochastic)
    base = {"test_images": len(x), "num_classes": data.num_classes}
    rows = []
    for s in (check_setting(s) for s in settings):
        t0 = time.perf_counter()
        gen = make_generator(stream_seed(eval_seed, "snn_test", s["attack"], s["eps"]), device)
        xs = x
        if s["attack"] == "fgsm":
            model.set_noise(sample, gen)
            xs = torch.cat([eot_fgsm(model, x[i:i + ecfg.eval_batch_size], y[i:i + ecfg.eval_batch_size], s["eps"],
                                     draws=ecfg.eot_draws if sample else 1)
                            for i in range(0, len(x), ecfg.eval_batch_size)])
        probs = predict_probs(model, xs, sample, ecfg.test_draws, gen, ecfg.eval_batch_size)
        rows.append(base | s | {"accuracy": float((probs.argmax(1) == y).float().mean()),
                                "eval_seconds": time.perf_counter() - t0})
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


def final_rows(rows: list[dict]) -> list[dict]:
    """The headline is the unattacked test row."""
    return [r for r in rows if r.get("attack") == "none"] or rows


METHOD = Method(
    "sesnn", "sesnn", preset_configs, load_data, train, evaluate, check_setting,
    setting_columns={"attack": "attack", "eps": "eps"},
    summary_columns=("model", "loss", "label_noise", "adv_train_eps", "attack", "eps"),
    final_rows=final_rows, describe=describe, diverging={"lr": 1e30})

METHODS = [METHOD]

from trainables.reid import REID_METHOD  # noqa: E402  (Table 4's re-identification study: trainables/reid.py's last section)
METHODS.append(REID_METHOD)

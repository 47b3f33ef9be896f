"""noise_bench: the four kinds of beneficial noise side by side, on one base model, under the same shifts.

No paper compares the methods this project runs; each measures its own method on its own data,
model and shift (issue 36). Here every method trains the same base classifier (`base`: an MLP of
widths `hidden`, models.mlp, the zoo's small_cnn, or the zoo's CIFAR-style ResNet18: 3x3 stride-1
stem, no max-pool) on the same data, the same noisy labels and
the same budget (`epochs`/`steps`, `batch_size`, Adam at `lr`, `scheduler`), and every trained
model meets the same test settings. The arm (`arm`) picks the method, and each arm is trained AND
predicted by its own family's code; this module only builds that family's config for the shared
base and data:

- plain, l2, dropout, input_noise: ninr.train_ninr with regularizer none / l2 / dropout / cdt, the
  classic baselines of the NINR poster's table (input_noise is its CDT: Gaussian noise of std
  `input_noise_std` on the training inputs, clipped);
- in_ninr, full_ninr: ninr.train_ninr with regularizer ninr, placement in / full; `sigma_eps` 0
  takes the poster's decay phase by the family's measured phase rule (its probe runs);
- activation_noise: discriminative.train_classifier (family ebm), App. E of the activation-noise
  paper: alpha*z after every activation at training and at test (alpha_test = alpha_train), the
  softmax averaged over `test_draws` noisy passes (discriminative.predict_probs);
- vpn: vpn.train_vpn with generator `vpn_generator`, joint; Algorithm 2 inference (vpn.vpn_scores,
  C hypotheses x `vpn_draws` passes);
- sesnn, vib: sesnn.train_sesnn with model sesnn / vib: stochastic layers `stochastic_layers`
  with the max-entropy regulariser (weight `omega`) or Deep VIB's KL (`vib_beta`), tested by
  `snn_test_mode` (sesnn.predict_probs).

Nearest faithful forms (a method that cannot sit on the base exactly as its paper defines it):
- SE-SNN and VIB replace the chosen hidden Linear layers of the MLP by stochastic ones (the
  paper's networks are MLPs); the SNN family has no stochastic form of small_cnn or ResNet18, so
  `base=cnn` and `base=resnet18` refuse them.
- dropout "after every hidden activation" (NINR's baseline) has no place in torchvision's ResNet18
  (no dropout in its definition; each block reuses one in-place ReLU), so `base=resnet18` refuses
  it rather than inventing a position. RESNET_LEFT_OUT holds the reasons; the paper preset's
  CIFAR-10 points leave these three arms out and its notes say why.
- NINR, L2, dropout and CDT are trained with Adam (the shared budget) where the poster uses SGD;
  the family's measured phase rule still reads the NIW-norm trajectory, its SGD prediction is n/a.
- Appendix E's classifiers are ResNets on CIFAR; here its noise sits on the shared base.

Tuning (`tuning`): `default` trains at the arm's paper default (the knob fields below); `tuned`
first trains one model per value of the arm's one strength knob (`<knob>_grid`), keeps the value
whose model is most accurate on `val_size` training images held out for every arm (never the
test set; their labels carry the same label noise, as a real validation split would), then
trains the tested model at that value. Every arm trains on the same images without the held-out
ones, tuned or not. `plain` has no knob, so no tuned form.

Label noise (`label_noise`): the patterned flips of SE-SNN's study (trainables/label_noise.py),
drawn by the trial's seed, so every arm of a seed trains on the same noisy labels.

Test settings: {"shift": s, "strength": v}: `clean`; each corruption of trainables/corruptions.py
at a strength; `fgsm` (the expected gradient over `eot_draws` draws for a stochastic arm, the
family's own forward making the draws; VPN's attacked forward is the log of its Algorithm 2 score
averaged over `eot_draws` noises per hypothesis); `cw_l2` (ART's CW-L2 on the mean over `eot_draws` draws,
on the first `cw_images` test images; on a stochastic arm by default both with fixed draws (the same
K draws on every call of the attack, one draw per unit shared by the images of a call: SE-SNN/VIB's
layers, activation noise's hooks, VPN's standard normals per hypothesis, so ART's search sees one
function) and with fresh draws, an image counting as broken when either attack breaks it
(`cw_draws`; rows: `cw_fixed_draws`, `cw_fresh_draws`). Rows written before 2026-12-07 14:00 UTC
attacked SE-SNN/VIB with fixed draws only and activation noise/VPN with fresh draws only). Each row: accuracy, attack success
rate and mean L2 of the successful perturbations (attacks), inference passes per test image, and
the family's own config as JSON (`arm_config`: every default the family fixes, in every row).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables import discriminative, ninr, sesnn, vpn
from trainables.checks import ConfigError, check_choice, check_int, check_keys, check_optional_int, check_range
from trainables.common import (STATUS_OK, Method, Progress, TrainResult, check_device, config_row,
                               configs_from_preset)
from trainables.cost import Estimate, no_projection
from trainables.corruptions import CORRUPTIONS, check_corruption, corrupt, eot_cw_l2, eot_fgsm, worst_case
from trainables.data import Data, DataConfig, load_dataset
from trainables.injection import stream_seed
from trainables.label_noise import noisy_labels
from trainables.models import check_widths
from trainables.noise import DISTRIBUTIONS, make_generator
from trainables.supervised import SCHEDULERS

BASES = ("mlp", "cnn", "resnet18")
TUNINGS = ("default", "tuned")
SHIFTS = (*CORRUPTIONS, "cw_l2")
SNN_TEST_MODES = sesnn.TEST_MODES


@dataclass(frozen=True)
class ArmSpec:
    """Where an arm comes from: its family's trainables module, the training function's name in
    it (looked up at call time), and the bench fields of its strength knob and validation grid."""

    module: Any
    train: str
    knob: str | None
    grid: str | None


ARM_SPECS = {
    "plain": ArmSpec(ninr, "train_ninr", None, None),
    "l2": ArmSpec(ninr, "train_ninr", "l2", "l2_grid"),
    "dropout": ArmSpec(ninr, "train_ninr", "dropout_rate", "dropout_grid"),
    "input_noise": ArmSpec(ninr, "train_ninr", "input_noise_std", "input_noise_grid"),
    "activation_noise": ArmSpec(discriminative, "train_classifier", "alpha", "alpha_grid"),
    "vpn": ArmSpec(vpn, "train_vpn", "vpn_std_cap", "vpn_std_cap_grid"),
    "in_ninr": ArmSpec(ninr, "train_ninr", "sigma_eps", "sigma_grid"),
    "full_ninr": ArmSpec(ninr, "train_ninr", "sigma_eps", "sigma_grid"),
    "sesnn": ArmSpec(sesnn, "train_sesnn", "omega", "omega_grid"),
    "vib": ArmSpec(sesnn, "train_sesnn", "vib_beta", "vib_beta_grid"),
}
ARMS = tuple(ARM_SPECS)
MLP_ONLY = ("sesnn", "vib")
SNN_REASON = "the SNN family has stochastic MLPs only"
# Arms that cannot sit on the zoo's ResNet18, and why (the paper preset's CIFAR-10 points leave them out).
RESNET_LEFT_OUT = {
    "dropout": "torchvision's ResNet18 has no dropout and each block reuses one in-place ReLU, so NINR's "
               "'dropout after every hidden activation' has no place in it",
    "sesnn": SNN_REASON, "vib": SNN_REASON,
}
# The zoo model each family builds for a base: NINR's arch, and discriminative's/VPN's (models.build_model).
NINR_ARCH = {"mlp": "fc", "cnn": "small_cnn", "resnet18": "resnet18"}
ZOO_ARCH = {"mlp": "mlp", "cnn": "small_cnn", "resnet18": "resnet18"}


def _check_grid(name: str, values, low: float, high: float = math.inf) -> None:
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"{name}={values!r} is not allowed; allowed: a non-empty tuple of numbers in [{low}, {high}]")
    for v in values:
        check_range(name, v, low, high)


@dataclass(frozen=True)
class BenchConfig:
    """One trained model of the bench: the arm, its setting, the shared base, data and budget."""

    data: DataConfig = DataConfig(dataset="digits", image_size=8)
    arm: str = "plain"  # one of ARMS
    tuning: str = "default"  # default (the paper's knob value) | tuned (the knob chosen on the validation split)
    label_noise: float = 0.0  # share of training labels flipped by the seed's pattern
    base: str = "mlp"  # mlp (models.mlp with `hidden`) | cnn (the zoo's small_cnn) | resnet18 (the zoo's, CIFAR stem)
    hidden: tuple[int, ...] = (128, 128)  # the MLP's hidden widths (SE-SNN's label-noise MLP is 128-128)
    val_size: int = 300  # training images held out from every arm; tuning reads them, nothing trains on them
    epochs: int = 40  # the same budget for every arm (VPN's shallow-model epochs)
    steps: int = 0  # > 0: exactly this many optimiser steps instead of `epochs`
    batch_size: int = 64
    lr: float = 1e-3  # Adam, the optimiser every family's loop takes (NINR's poster used SGD)
    scheduler: str = "none"  # none | cosine (NINR's phase rule assumes a constant lr)
    # The arms' knobs at their paper defaults, and the validation grid each `tuned` arm picks from.
    l2: float = 5e-4  # weight decay (NINR's default; the poster gives none)
    l2_grid: tuple[float, ...] = (5e-5, 5e-4, 5e-3)
    dropout_rate: float = 0.2  # after every hidden activation (NINR's default)
    dropout_grid: tuple[float, ...] = (0.1, 0.2, 0.5)
    input_noise_std: float = 0.2  # CDT(0.2) of the NINR poster: N(0, s^2) on training inputs, clipped
    input_noise_grid: tuple[float, ...] = (0.1, 0.2, 0.4)
    alpha: float = 0.5  # activation noise, train = test (App. E tests 0.5 and 1.0)
    alpha_grid: tuple[float, ...] = (0.1, 0.5, 1.0)
    activation_distribution: str = "gaussian"  # law of z (App. E: Gaussian)
    sigma_eps: float = 0.0  # NIN noise std; 0: the smallest probe sigma the family's phase rule labels decay
    sigma_grid: tuple[float, ...] = (1.0, 10.0, 100.0)
    probe_sigmas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # sigma_eps 0: the probes (ascending)
    probe_steps: int = 400  # sigma_eps 0: optimiser steps of each probe run
    omega: float = 1e-2  # SE-SNN's max-entropy weight (its label-noise study)
    omega_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    vib_beta: float = 1e-3  # Deep VIB's KL weight
    vib_beta_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    stochastic_layers: tuple[int, ...] = (0, 1)  # SE-SNN/VIB: the hidden layers made stochastic (label-noise MLP: both)
    vpn_generator: str = "dnn3"  # VPN's generator network (the paper's DNN3 generator)
    vpn_std_cap: float = 0.0  # VPN's optional cap on the generated std; 0 = none (the paper's default)
    vpn_std_cap_grid: tuple[float, ...] = (0.0, 0.1, 0.3)
    # How each arm predicts (part of the method: tuning scores the held-out images the same way).
    test_draws: int = 12  # noisy passes averaged per prediction: activation noise, and SE-SNN/VIB when sampled
    snn_test_mode: str = "sample"  # SE-SNN/VIB: sample (the defence study, VIB's sampled test) | mean (mu only)
    vpn_draws: int = 1  # VPN: noises per class hypothesis (Algorithm 2; the authors' code: 1)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_choice("arm", self.arm, ARMS)
        check_choice("tuning", self.tuning, TUNINGS)
        if self.arm == "plain" and self.tuning == "tuned":
            raise ConfigError("tuning='tuned' with arm='plain', which has no strength knob; allowed: tuning='default'")
        check_range("label_noise", self.label_noise, 0.0, 1.0)
        if self.label_noise == 1.0:
            raise ConfigError("label_noise=1.0 flips every label; allowed: [0, 1)")
        check_choice("base", self.base, BASES)
        if self.base == "resnet18" and self.arm in RESNET_LEFT_OUT:
            raise ConfigError(f"base='resnet18' with arm={self.arm!r}: {RESNET_LEFT_OUT[self.arm]}; allowed arms "
                              f"on resnet18: {', '.join(a for a in ARMS if a not in RESNET_LEFT_OUT)}")
        if self.base != "mlp" and self.arm in MLP_ONLY:
            raise ConfigError(f"base={self.base!r} with arm={self.arm!r}: {SNN_REASON}; allowed: base='mlp'")
        check_widths("hidden", self.hidden)
        check_int("val_size", self.val_size, 0)
        if self.tuning == "tuned" and self.val_size == 0:
            raise ConfigError("val_size=0 with tuning='tuned' leaves nothing to tune on; allowed: val_size >= 1")
        for name in ("epochs", "batch_size", "probe_steps", "test_draws", "vpn_draws"):
            check_int(name, getattr(self, name), 1)
        check_choice("snn_test_mode", self.snn_test_mode, SNN_TEST_MODES)
        check_int("steps", self.steps, 0)
        check_int("seed", self.seed, 0)
        check_range("lr", self.lr, 0.0, low_open=True)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("activation_distribution", self.activation_distribution, DISTRIBUTIONS)
        check_device(self.device)
        for spec in ARM_SPECS.values():
            if spec.knob:
                high = 0.99 if spec.knob == "dropout_rate" else math.inf  # a dropout rate of 1 drops everything
                check_range(spec.knob, getattr(self, spec.knob), 0.0, high)
                _check_grid(spec.grid, getattr(self, spec.grid), 0.0, high)
        _check_grid("probe_sigmas", self.probe_sigmas, 0.0)
        arm_config(self, knob_default(self))  # the family refuses what it cannot train, before any compute


# CW-L2 on a stochastic arm: which attacks run (True: fixed draws, False: fresh), per cw_draws.
CW_MODES = {"fixed": (True,), "fresh": (False,), "worst": (True, False)}


@dataclass(frozen=True)
class BenchEvalConfig:
    """How every trained model is tested."""

    eot_draws: int = 10  # draws per expected gradient of an attack on a stochastic arm
    cw_images: int = 100  # CW-L2 attacks the first this many test images (0: all): its cost
    # CW-L2: ART's CarliniL2Method defaults, except the initial constant (1, as the SE-SNN family: its test)
    cw_binary_search_steps: int = 10
    cw_max_iter: int = 10
    cw_learning_rate: float = 0.01
    cw_initial_const: float = 1.0
    # CW-L2 on a stochastic arm: fixed, every call of the attack averages the same eot_draws draws,
    # shared by a call's images (ART's search then sees one function, as the SE-SNN family's
    # eot_fixed_draws); fresh, new draws on every call; worst, both, and per image the one that
    # breaks it (the smaller perturbation where both do). Neither is the stronger everywhere
    # (bench/README "CW-L2 on noise_bench's stochastic arms"). Rows: cw_fixed_draws, cw_fresh_draws
    # say which ran (both false for a deterministic arm: one attack).
    cw_draws: str = "worst"
    eval_seed: int | None = None  # seeds corruptions and test-time draws; None: the trial's seed
    eval_batch_size: int = 500

    def __post_init__(self):
        for name in ("eot_draws", "cw_binary_search_steps", "cw_max_iter", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        check_choice("cw_draws", self.cw_draws, tuple(CW_MODES))
        check_int("cw_images", self.cw_images, 0)
        for name in ("cw_learning_rate", "cw_initial_const"):
            check_range(name, getattr(self, name), 0.0, low_open=True)
        check_optional_int("eval_seed", self.eval_seed, 0)


# ---------------------------------------------------------------------------------------------
# Each arm as its family's own config


def knob_default(cfg: BenchConfig) -> float:
    """The arm's paper-default knob value (NaN for plain, which has none)."""
    spec = ARM_SPECS[cfg.arm]
    return float(getattr(cfg, spec.knob)) if spec.knob else float("nan")


def arm_config(cfg: BenchConfig, value: float):
    """The arm's family config for the shared base, data and budget, with its knob at `value`."""
    budget = dict(data=cfg.data, epochs=cfg.epochs, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                  scheduler=cfg.scheduler, seed=cfg.seed, device=cfg.device)
    arm = cfg.arm
    if ARM_SPECS[arm].module is ninr:
        reg = {"plain": "none", "l2": "l2", "dropout": "dropout", "input_noise": "cdt"}.get(arm, "ninr")
        fields = dict(arch=NINR_ARCH[cfg.base], fc_widths=cfg.hidden, regularizer=reg,
                      optimizer="adam", hessian_points=0, probe_sigmas=cfg.probe_sigmas, probe_steps=cfg.probe_steps)
        if arm == "l2":
            fields["l2"] = value
        elif arm == "dropout":
            fields["dropout_rate"] = value
        elif arm == "input_noise":
            fields["cdt_std"] = value
        elif reg == "ninr":
            fields |= dict(placement="in" if arm == "in_ninr" else "full", sigma_eps=value,
                           phase_target="decay" if value == 0 else "none")
        return ninr.NINRConfig(**budget, **fields)
    arch = ZOO_ARCH[cfg.base]
    if arm == "activation_noise":
        return discriminative.ClassifierConfig(**budget, arch=arch, hidden=cfg.hidden, stem="cifar",
                                               distribution_train=cfg.activation_distribution, alpha_train=value)
    if arm == "vpn":
        return vpn.VPNConfig(**budget, base=arch, hidden=cfg.hidden, stem="cifar", generator=cfg.vpn_generator,
                             mode="joint", std_cap=value, epoch_test_accuracy=False)
    weight = {"omega": value} if arm == "sesnn" else {"vib_beta": value}
    return sesnn.SESNNConfig(**budget, hidden=cfg.hidden, model=arm, stochastic_layers=cfg.stochastic_layers,
                             parallel_layer=False, optimizer="adam", label_noise=0.0, **weight)


def method_of(cfg: BenchConfig) -> Method:
    """The registered Method of the arm's family (its `family` and `name` go in every row)."""
    return ARM_SPECS[cfg.arm].module.METHOD


# ---------------------------------------------------------------------------------------------
# Each arm's inference, through its family's own code


@dataclass
class Trained:
    """A trained arm: the family's model and the family config it was trained with."""

    net: nn.Module
    arm_cfg: Any


class _VPNScores(nn.Module):
    """Algorithm 2 as logits for an attack: the log of the class scores averaged over `draws`
    noises per hypothesis (vpn.vpn_scores with its graph kept), so the gradient reaches the input
    through f and g and is the expected gradient of the score over the draws (EOT in score space:
    the generator runs once per hypothesis, not once per draw)."""

    def __init__(self, model, classes: int, draws: int, gen, batch: int, shared: bool = False):
        super().__init__()
        self.model, self.classes, self.draws, self.gen, self.batch = model, classes, draws, gen, batch
        self.shared = shared

    def forward(self, x):
        scores = vpn.vpn_scores(self.model, x, self.classes, self.draws, self.gen, self.batch,
                                grad=torch.is_grad_enabled(), shared=self.shared)
        return torch.log(scores["score"].clamp_min(1e-12))


@dataclass
class Inference:
    """What evaluation needs of an arm: `predict(x, gen)` (probabilities, or VPN's class scores),
    `forward(gen, shared)` (a module whose forward gives logits for attacks), the draws an attack
    averages over that forward (1 where it is deterministic or averages its own draws), the passes
    per test image, and whether the family shares one draw over a batch (CW's common random numbers)."""

    predict: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    forward: Callable[[torch.Generator, bool], nn.Module]
    attack_draws: int
    passes: int
    shared_draws: bool = False


def inference(trained: Trained, cfg: BenchConfig, classes: int, bs: int, eot_draws: int = 1) -> Inference:
    """The arm's prediction and attack forward, by its family's code, `bs` images per forward pass;
    an attack on a random forward takes the expected gradient over `eot_draws` draws."""
    model, acfg = trained.net, trained.arm_cfg
    model.eval()
    if isinstance(acfg, ninr.NINRConfig):  # NINs off at test time (the family's default, test_noise False)
        if model.nodes is not None:
            model.nodes.enabled = False

        def predict(x, gen):
            with torch.no_grad():
                return torch.cat([F.softmax(model(x[i:i + bs]), 1) for i in range(0, len(x), bs)])
        return Inference(predict, lambda gen, shared: model, 1, 1)
    if isinstance(acfg, discriminative.ClassifierConfig):
        dist, alpha = acfg.distribution_train, acfg.alpha_train

        def forward(gen, shared):
            model.activation_noise.set(dist, alpha, gen, shared)
            return model
        return Inference(lambda x, gen: discriminative.predict_probs(model, x, dist, alpha, cfg.test_draws, gen, bs),
                         forward, eot_draws if alpha > 0 else 1, cfg.test_draws if alpha > 0 else 1,
                         shared_draws=alpha > 0)
    if isinstance(acfg, vpn.VPNConfig):
        return Inference(lambda x, gen: vpn.vpn_scores(model, x, classes, cfg.vpn_draws, gen, bs)["score"],
                         lambda gen, shared: _VPNScores(model, classes, eot_draws, gen, bs, shared), 1,
                         classes * cfg.vpn_draws, shared_draws=True)
    sample = cfg.snn_test_mode == "sample"

    def snn_forward(gen, shared):
        model.set_noise(sample, gen, shared=shared)
        return model
    return Inference(lambda x, gen: sesnn.predict_probs(model, x, sample, cfg.test_draws, gen, bs),
                     snn_forward, eot_draws if sample else 1, cfg.test_draws if sample else 1, shared_draws=sample)


# ---------------------------------------------------------------------------------------------
# Training


def split(cfg: BenchConfig, data: Data) -> Data:
    """The training set with the seed's label noise, cut into what the arms train on (x_train,
    y_train) and the held-out validation images (as x_test, y_test: the family's code never sees
    the test set). The held-out images are one fixed draw per training-set size, the same for
    every arm and seed."""
    if cfg.val_size >= len(data.y_train):
        raise ConfigError(f"val_size={cfg.val_size} leaves no training image of {len(data.y_train)}; "
                          f"allowed: 0 to {len(data.y_train) - 1}")
    y, _, _ = noisy_labels(data.y_train, data.num_classes, cfg.label_noise, cfg.seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(stream_seed("noise_bench_val", len(y))))
    val, fit = order[:cfg.val_size].sort().values, order[cfg.val_size:].sort().values
    return Data(data.name, data.x_train[fit], y[fit], data.x_train[val], y[val], data.class_names)


def _fit(cfg: BenchConfig, value: float, data: Data, callback=None, state=None) -> tuple[TrainResult, Any]:
    """One training of the arm at knob `value` by its family's function (looked up at call time)."""
    spec = ARM_SPECS[cfg.arm]
    acfg = arm_config(cfg, value)
    return getattr(spec.module, spec.train)(acfg, data, callback, state), acfg


def _val_accuracy(res: TrainResult, acfg, cfg: BenchConfig, data: Data) -> float:
    """Accuracy on the held-out images (data.x_test of the split), predicted as the test set will be."""
    if res.status != STATUS_OK or res.model is None:
        return float("nan")
    device = next(res.model.parameters()).device
    inf = inference(Trained(res.model, acfg), cfg, data.num_classes, cfg.batch_size)
    gen = make_generator(stream_seed(cfg.seed, "noise_bench_val_draws"), device)
    right = inf.predict(data.x_test.to(device), gen).argmax(1) == data.y_test.to(device)
    return float(right.float().mean())


def train(cfg: BenchConfig, data: Data, callback: Callable[[Progress], object] | None = None,
          state: dict | None = None) -> TrainResult:
    """The arm's training on the shared split: for `tuned`, first one run per grid value scored on
    the validation images; then the tested model at the chosen value, with the trial's callback
    and checkpoint passed to the family (the choice rides in the checkpoint)."""
    start = time.perf_counter()
    fit = split(cfg, data)
    value, scores = knob_default(cfg), {}
    if cfg.tuning == "tuned":
        if state is not None and "bench_value" in state:
            value, scores = float(state["bench_value"]), dict(state["bench_scores"])
        else:
            for v in getattr(cfg, ARM_SPECS[cfg.arm].grid):
                scores[repr(float(v))] = _val_accuracy(*_fit(cfg, float(v), fit), cfg, fit)
            finite = {k: s for k, s in scores.items() if math.isfinite(s)}
            value = float(max(finite, key=finite.get)) if finite else value  # ties: the first (smallest) value

    def wrapped(p: Progress):
        if callback is None:
            return None
        extra = {"bench_value": value, "bench_scores": scores}
        return callback(Progress(p.epoch, p.loss, lambda: p.state() | extra, p.done, p.metrics))

    res, acfg = _fit(cfg, value, fit, wrapped, state)
    method = method_of(cfg)
    fam = res.columns
    used = fam.get("sigma_eps_used", value) if cfg.arm in ("in_ninr", "full_ninr") else value
    columns = {"arm_family": method.family, "arm_method": method.name, "knob": ARM_SPECS[cfg.arm].knob or "",
               "knob_value": float(used), "tuning_scores": json.dumps(scores),
               "val_accuracy": scores.get(repr(value), float("nan")),
               "arm_config": json.dumps(config_row(acfg), default=str), "train_images": len(fit.y_train),
               "device_name": fam.get("device_name", ""),
               "final_loss": float(fam.get("final_loss", res.history[-1] if res.history else float("nan"))),
               "measured_phase": fam.get("measured_phase", "")}
    model = Trained(res.model, acfg) if res.model is not None else None
    return TrainResult(model, res.status, res.epochs_done, res.history, time.perf_counter() - start, res.message,
                       dict(res.artefacts), columns)


# ---------------------------------------------------------------------------------------------
# Evaluation


SETTING_COLUMNS = {"shift": "shift", "strength": "strength"}


def check_setting(setting) -> dict:
    """A test setting is {"shift": one of SHIFTS, "strength": its strength} (trainables/corruptions.py;
    cw_l2 has none: it finds the smallest L2 perturbation)."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with keys shift, strength")
    check_keys("test setting", setting, tuple(SETTING_COLUMNS))
    shift, strength = setting.get("shift", "clean"), setting.get("strength", 0.0)
    check_choice("shift", shift, SHIFTS)
    if shift == "cw_l2":
        if strength != 0:
            raise ConfigError(f"strength={strength!r} with shift='cw_l2'; allowed: 0")
        return {"shift": shift, "strength": 0.0}
    _, strength = check_corruption(shift, strength)
    return {"shift": shift, "strength": strength}


def evaluate(trained: Trained, data: Data, settings, cfg: BenchConfig, ecfg: BenchEvalConfig, eval_seed: int = 0):
    """One row per (shift, strength) on the test set, predicted by the arm's family code. Attacked
    rows add the success rate (of the images the clean prediction gets right, the share the attack
    changed and the arm then gets wrong) and the mean L2 of those successful perturbations."""
    inf = inference(trained, cfg, data.num_classes, ecfg.eval_batch_size, ecfg.eot_draws)
    device = next(trained.net.parameters()).device
    x, y = data.x_test.to(device), data.y_test.to(device)
    bs = ecfg.eval_batch_size

    def gen_of(*parts):
        return make_generator(stream_seed(eval_seed, "noise_bench", *parts), device)

    clean_right = inf.predict(x, gen_of("predict", "clean", 0.0)).argmax(1) == y  # the clean row's own draws
    draws = inf.attack_draws
    rows = []
    for s in (check_setting(s) for s in settings):
        t0 = time.perf_counter()
        shift, strength = s["shift"], s["strength"]
        gen = gen_of(shift, strength)
        n = min(len(x), ecfg.cw_images or len(x)) if shift == "cw_l2" else len(x)
        x0, y0 = x[:n], y[:n]
        modes = []
        if shift == "cw_l2":
            modes = CW_MODES[ecfg.cw_draws] if inf.shared_draws else (False,)  # deterministic: one attack
            xs, right = None, None
            for fixed in modes:
                cw_gen = gen_of("cw_draws") if fixed else gen
                xm = eot_cw_l2(inf.forward(cw_gen, fixed), x0, y0, draws=draws, learning_rate=ecfg.cw_learning_rate,
                               binary_search_steps=ecfg.cw_binary_search_steps, max_iter=ecfg.cw_max_iter,
                               initial_const=ecfg.cw_initial_const, batch_size=bs, generator=cw_gen if fixed else None)
                rm = inf.predict(xm, gen_of("predict", shift, strength)).argmax(1) == y0
                xs, right = (xm, rm) if xs is None else worst_case(x0, (xs, right), (xm, rm))
        elif shift == "fgsm":
            model = inf.forward(gen, False)
            xs = torch.cat([eot_fgsm(model, x[i:i + bs], y[i:i + bs], strength, draws=draws)
                            for i in range(0, len(x), bs)])
        else:
            xs = torch.cat([corrupt(x[i:i + bs], shift, strength, stream_seed(eval_seed, shift, strength, i))
                            for i in range(0, len(x), bs)])
        if shift != "cw_l2":
            right = inf.predict(xs, gen_of("predict", shift, strength)).argmax(1) == y0
        row = s | {"accuracy": float(right.float().mean()), "test_images": n, "passes_per_image": inf.passes,
                   "attack_success_rate": math.nan, "mean_l2": math.nan,
                   "cw_fixed_draws": True in modes, "cw_fresh_draws": inf.shared_draws and False in modes}
        if shift in ("fgsm", "cw_l2"):
            l2 = (xs - x0).flatten(1).norm(dim=1)
            success = clean_right[:n] & ~right & (l2 > 0)
            row |= {"attack_success_rate": float(success.sum()) / max(1, int(clean_right[:n].sum())),
                    "mean_l2": float(l2[success].mean()) if success.any() else math.nan}
        rows.append(row | {"eval_seconds": time.perf_counter() - t0})
    return rows


# ---------------------------------------------------------------------------------------------
# Presets and the Method


PRESETS: dict[str, dict] = {
    # The paper scale; the Space's points set each data set (MNIST, Fashion-MNIST, CIFAR-10) and its base.
    "paper": {"dataset": "fashion_mnist", "image_size": 28, "channels": 1, "epochs": 20, "batch_size": 128,
              "val_size": 5000, "cw_images": 1000, "probe_steps": 400},
    # The embedded digits at their native 8 px (1,347 training images, 300 held out; 450 test).
    "quick": {"dataset": "digits", "image_size": 8, "epochs": 40, "batch_size": 64, "val_size": 300,
              "probe_steps": 200, "cw_images": 100, "cw_binary_search_steps": 5},
    # Seconds: every arm end to end, two epochs of two steps (a resumed run has a checkpoint to start from).
    "smoke": {"dataset": "digits", "image_size": 8, "train_limit": 20, "test_limit": 30, "val_size": 40,
              "steps": 4, "batch_size": 64, "hidden": (16, 16), "sigma_eps": 10.0, "probe_steps": 4,
              "test_draws": 2, "eot_draws": 2, "cw_images": 4, "cw_binary_search_steps": 2, "cw_max_iter": 2,
              "eval_batch_size": 100},
}


def preset_configs(preset: str, overrides: dict | None = None) -> tuple[BenchConfig, BenchEvalConfig]:
    """Training and evaluation configs of a preset, with `overrides` (any field name) applied."""
    return configs_from_preset(PRESETS, BenchConfig(), BenchEvalConfig, preset, overrides)


def describe(cfg: BenchConfig, ecfg: BenchEvalConfig, settings) -> str:
    method = method_of(cfg)
    base = {"mlp": f"mlp {cfg.hidden}", "cnn": "small_cnn", "resnet18": "resnet18 (CIFAR stem)"}[cfg.base]
    spec = ARM_SPECS[cfg.arm]
    fits = len(getattr(cfg, spec.grid)) + 1 if cfg.tuning == "tuned" else 1
    return (f"{cfg.arm} ({cfg.tuning}, {fits} training{'s' if fits > 1 else ''}; {method.family}/{method.name})"
            f" on a {base}"
            f" at label noise {cfg.label_noise:g} on {cfg.data.dataset}; {len(settings)} test settings")


def cost(cfg: BenchConfig, ecfg: BenchEvalConfig, settings, device: torch.device) -> Estimate:
    """One trial's training seconds on `device`, priced by the arm's family (its Method.cost on the
    arm's config), times the trainings of a tuned trial (one per grid value, then the tested one).
    The family prices its whole training set, the held-out images included (a slight
    overestimate). Not priced: the evaluation (corruptions, FGSM and CW-L2 with their draws), nor
    an arm whose family makes no projection."""
    method = method_of(cfg)
    if method.cost is None:
        return no_projection(f"arm {cfg.arm}: its family's method {method.family}/{method.name} makes no projection")
    spec = ARM_SPECS[cfg.arm]
    grid = getattr(cfg, spec.grid) if cfg.tuning == "tuned" else ()
    family = method.cost(arm_config(cfg, grid[0] if grid else knob_default(cfg)), None, [], device)
    fits = len(grid) + 1
    if fits == 1 or family.missing:
        return family
    return Estimate(family.seconds * fits, family.core_seconds * fits,
                    [f"{part} (x {fits} trainings: the tuning grid, then the tested model)" for part in family.parts],
                    family.used, family.missing)


def final_rows(rows: list[dict]) -> list[dict]:
    """The headline is the clean test row."""
    return [r for r in rows if r.get("shift") == "clean"] or rows


FORMS = ("Nearest faithful forms: SE-SNN/VIB make the MLP's hidden layers stochastic (no CNN form); NINR, L2, "
         "dropout and CDT train with Adam, not the poster's SGD; App. E's noise sits on the shared base (a ResNet "
         "only on the paper preset's CIFAR-10).")
PRESET_NOTES = {
    "smoke": "smoke: 4 optimiser steps per model, 30 test images, a fixed NIN sigma instead of the phase probes: "
             "shows that every arm runs end to end, nothing about the methods.",
    "quick": "quick: digits at 8 px, 40 epochs per model, CW-L2 on 100 test images; separates arms only where they "
             "differ by more than the seed spread of a 1,047-image training set. " + FORMS,
    "paper": "paper: MNIST and Fashion-MNIST at 28 px with the MLP, CIFAR-10 at 32 px with the zoo's CIFAR-style "
             "ResNet18; CIFAR-10 leaves out " + "; ".join(f"{a} ({why})" for a, why in RESNET_LEFT_OUT.items())
             + ". " + FORMS,
}

METHOD = Method(
    "noise_bench", "noise_bench", preset_configs, lambda cfg: load_dataset(cfg.data), train, evaluate, check_setting,
    setting_columns=SETTING_COLUMNS, summary_columns=("arm", "tuning", "label_noise", "shift", "strength"),
    final_rows=final_rows, describe=describe, cost=cost, diverging={"lr": 1e30}, preset_notes=PRESET_NOTES)

METHODS = [METHOD]

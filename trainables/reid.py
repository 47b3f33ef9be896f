"""Person re-identification building blocks (SE-SNN paper Sec. 4.3, Table 4, App. B.1).

- ``market1501_eval``: the standard Market-1501 protocol (Zheng et al. 2015). For each query the
  gallery is ranked by distance; gallery images of the query's identity taken by the query's
  camera, and junk images (person id -1), are removed from its ranking; distractors (0000) stay as
  wrong matches. CMC rank-k is the share of queries whose first correct match is within the first
  k, and mAP the mean over queries of the average precision. A query with no correct match left is
  skipped (none in Market-1501).
- ``similarity_label_noise``: the paper's label noise. A clean model's feature of every training
  image; a randomly chosen share of the images takes the identity of its nearest image (Euclidean
  distance, as the paper says; cosine is a choice) that has another identity, "imitating human
  annotation errors".
- ``build_reid_model``: the identity classifier, a torchvision ResNet (ResNet-50 in the paper) whose
  pooled feature (2048-d for ResNet-50) feeds a new linear layer with one output per training
  identity; ImageNet weights only from a local file, never downloaded. ``small_cnn`` is a tiny
  backbone for tests and CPU runs.
- ``ReidConfig``: the paper's two-stage schedule (App. B.1) and every default it leaves open.
- The study itself (last section): SE-SNN's re-identification with label noise, the `sesnn_reid`
  Method (B/H/S/F/SE-SNN, two stages, the last unit stochastic; Table 4, Fig. 3b/c).

Plain PyTorch/NumPy; this module never imports ray.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.checks import ConfigError, check_choice, check_int, check_range
from trainables.data import MARKET1501_JUNK
from trainables.injection import stream_seed
from trainables.supervised import OPTIMIZERS

DISTANCES = ("euclidean", "cosine")
# "hits": AP = mean of the precision at each correct match (torchreid's eval_market1501, open-reid,
# fast-reid; equal to sklearn's average_precision_score without ties). "trapezoid": the
# benchmark's own MATLAB compute_AP.m, recall steps weighted by the mean of the precision before
# and at each hit (starting from 1). The paper does not say which code it used.
AP_RULES = ("hits", "trapezoid")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "small_cnn")
RANKS = (1, 5, 10)  # the CMC ranks of Table 4
# Inputs are RGB in [0, 1]; the network normalises them with ImageNet's statistics, which the
# ImageNet weights it fine-tunes expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCK = 1024  # rows of a distance matrix computed at once, so memory stays near block x N


@dataclass(frozen=True)
class ReidConfig:
    """The re-identification run's schedule and the choices the paper leaves open.

    Stage 1 fine-tunes the (ImageNet-initialised) identity classifier; stage 2 keeps its weights,
    turns the last unit of the final residual block into a stochastic layer with a new randomly
    initialised sigma layer, and trains that layer and the classifier only (App. B.1). The
    regulariser's margin b = 4 and weight 1e-2 are SE-SNN's own fields, not repeated here. The paper
    fine-tunes ImageNet weights: ``weights=None`` (random init) departs from it; its 2019 code would
    have had torchvision's original ResNet-50 file (IMAGENET1K_V1, resnet50-0676ba61.pth)."""

    backbone: str = "resnet50"
    weights: str | None = None  # a local torchvision state-dict file (the paper: ImageNet weights); None: random
    stage1_iterations: int = 60_000
    stage1_lr: float = 3.5e-4
    stage2_iterations: int = 20_000
    # The paper calls it "a lower learning rate" yet writes 5e-4 > 3.5e-4; taken as written.
    stage2_lr: float = 5e-4
    batch_size: int = 32
    optimizer: str = "adam"
    weight_decay: float = 0.0  # not stated
    label_noise: float = 0.0  # share of training images relabelled (Table 4: 0.1, 0.2, 0.5)
    noise_metric: str = "euclidean"  # feature distance that finds the most similar image (the paper: Euclidean)
    distance: str = "euclidean"  # query-gallery distance on the pooled features (not stated)
    ap_rule: str = "hits"  # how AP is summed (AP_RULES; not stated)

    def __post_init__(self):
        check_choice("backbone", self.backbone, BACKBONES)
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise ConfigError(f"weights={self.weights!r} is not allowed; allowed: None or a state-dict file path")
        for name in ("stage1_iterations", "stage2_iterations"):
            check_int(name, getattr(self, name), 0)
        check_int("batch_size", self.batch_size, 1)
        for name in ("stage1_lr", "stage2_lr"):
            check_range(name, getattr(self, name), 0.0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_noise_fraction(self.label_noise)
        check_choice("noise_metric", self.noise_metric, DISTANCES)
        check_choice("distance", self.distance, DISTANCES)
        check_choice("ap_rule", self.ap_rule, AP_RULES)


def check_noise_fraction(fraction, field: str = "label_noise") -> None:
    """A share of relabelled images in [0, 1): relabelling every image leaves no clean identity."""
    check_range(field, fraction, 0.0, 1.0)
    if fraction == 1.0:
        raise ConfigError(f"{field}=1.0 relabels every image; allowed: [0, 1)")


# ---------------------------------------------------------------------------------------------
# Distances and the Market-1501 evaluation


def feature_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """(len(a), len(b)) float64 distances between rows: Euclidean, or cosine distance 1 - cos."""
    check_choice("metric", metric, DISTANCES)
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if metric == "cosine":
        a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
        return 1.0 - a @ b.T
    # |a|^2 + |b|^2 - 2ab through one matrix product; float64 keeps the rounding far below any real gap.
    squared = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2.0 * a @ b.T
    return squared.clamp_min_(0.0).sqrt_()


def market1501_eval(distmat, q_pids, g_pids, q_camids, g_camids, ranks=RANKS, ap_rule: str = "hits") -> dict:
    """CMC at ``ranks`` and mAP by the Market-1501 protocol (module docstring) from a
    (queries, gallery) distance matrix; ties keep gallery order. Returns
    ``{"map", "rank<k>" per k, "valid_queries"}``, fractions in [0, 1].

    Written here rather than imported: the only PyPI "torchreid" (0.2.5) is an unofficial repackage
    whose ``import torchreid`` pulls in gdown, cv2, tensorboard, h5py and imageio without declaring
    them, and its eval_market1501 leaves junk images to its loader (checked 2026-12 with
    ``pip install --dry-run`` and its sdist). The rule is the same as its eval_market1501."""
    check_choice("ap_rule", ap_rule, AP_RULES)
    if not ranks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ranks):
        raise ConfigError(f"ranks={ranks!r} is not allowed; allowed: a non-empty sequence of integers >= 1")
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(v).astype(np.int64) for v in (q_pids, g_pids, q_camids, g_camids))
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)) or len(q_camids) != len(q_pids) \
            or len(g_camids) != len(g_pids):
        raise ValueError(f"distmat {distmat.shape} does not match {len(q_pids)} queries x {len(g_pids)} gallery images")
    order = np.argsort(distmat, axis=1, kind="stable")
    firsts, aps = [], []
    for i in range(len(q_pids)):
        pid, cam = g_pids[order[i]], g_camids[order[i]]
        kept = (pid != MARKET1501_JUNK) & ~((pid == q_pids[i]) & (cam == q_camids[i]))
        at = np.flatnonzero(pid[kept] == q_pids[i])  # 0-based positions of the correct matches
        if len(at) == 0:
            continue
        precision = np.arange(1, len(at) + 1) / (at + 1)
        if ap_rule == "trapezoid":
            before = np.where(at == 0, 1.0, np.arange(len(at)) / np.maximum(at, 1))
            precision = (before + precision) / 2
        firsts.append(at[0])
        aps.append(precision.mean())
    if not aps:
        raise ValueError("no query has a correct match left in the gallery; cannot evaluate")
    firsts = np.array(firsts)
    return {"map": float(np.mean(aps)), **{f"rank{k}": float(np.mean(firsts < k)) for k in ranks},
            "valid_queries": len(aps)}


# ---------------------------------------------------------------------------------------------
# Similarity-based label noise


def similarity_label_noise(features: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int,
                           metric: str = "euclidean") -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, flipped mask). round(fraction * N) training images, drawn uniformly without
    replacement by ``seed``, take the clean label of their nearest image (by ``metric`` on
    ``features``, ties to the lower index) whose clean label differs; every other label is kept.
    Every chosen image changes identity, so the mask marks exactly the chosen ones."""
    check_noise_fraction(fraction)
    check_choice("noise_metric", metric, DISTANCES)
    check_int("seed", seed, 0)
    features = torch.as_tensor(features)  # distances on the features' device (a GPU does 50% of Market in seconds)
    labels_cpu = torch.as_tensor(labels).cpu().long()
    if features.ndim != 2 or len(features) != len(labels_cpu):
        raise ValueError(f"features {tuple(features.shape)} do not match {len(labels_cpu)} labels")
    if labels_cpu.unique().numel() < 2:
        raise ValueError("similarity label noise needs at least two identities")
    n = len(labels_cpu)
    count = math.floor(fraction * n + 0.5)
    rng = np.random.default_rng(stream_seed(seed, "reid_label_noise"))
    chosen = torch.from_numpy(np.sort(rng.choice(n, size=count, replace=False))).long()
    noisy = labels_cpu.clone()
    for start in range(0, count, _BLOCK):
        rows = chosen[start:start + _BLOCK]
        d = feature_distances(features[rows.to(features.device)], features, metric).cpu()
        d[labels_cpu[rows, None] == labels_cpu[None, :]] = math.inf  # own identity (and itself) excluded
        noisy[rows] = labels_cpu[d.argmin(1)]
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[chosen] = True
    device = torch.as_tensor(labels).device
    return noisy.to(device), flipped.to(device)


# ---------------------------------------------------------------------------------------------
# The identity classifier


class ReidNet(nn.Module):
    """Backbone -> pooled feature -> linear identity classifier. ``features`` is the retrieval
    feature (the pooled 2048-d vector for ResNet-50); inputs are RGB in [0, 1]. For a ResNet the
    backbone is torchvision's model with ``fc`` set to Identity, so ``backbone.layer4[-1]`` (the
    unit SE-SNN makes stochastic) is where torchvision has it."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_identities: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.fc = nn.Linear(feature_dim, num_identities)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) pooled features of images (N, 3, H, W) in [0, 1]."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@torch.no_grad()
def extract_features(model: ReidNet, images: torch.Tensor, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """(N, feature_dim) float32 CPU features of uint8 images (N, 3, H, W), in eval mode (batch norm
    on its running statistics, so an image's feature does not depend on its batch); the model's
    train/eval mode is restored afterwards."""
    check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    try:
        parts = [model.features(images[i:i + batch_size].to(device).float().div_(255)).float().cpu()
                 for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.feature_dim)


def small_backbone() -> nn.Module:
    """Two strided conv-ReLU layers and global average pooling to 32 features: tests and CPU runs."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def build_reid_model(backbone: str, num_identities: int, weights: str | None = None) -> ReidNet:
    """The identity classifier with a fresh fc for ``num_identities`` (from the global RNG).
    ``weights``: a local state-dict file for the backbone (torchvision's ImageNet file for a ResNet;
    its 1000-way ``fc`` entries are dropped), loaded strictly; None keeps the random init."""
    check_choice("backbone", backbone, BACKBONES)
    check_int("num_identities", num_identities, 2)
    if backbone == "small_cnn":
        trunk, dim = small_backbone(), 32
    else:
        import torchvision  # here, not at the top: it imports torch._dynamo (bench/results/startup_cpu.txt)
        trunk = torchvision.models.get_model(backbone, weights=None)
        dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
    if weights is not None:
        load_backbone_weights(trunk, weights, backbone)
    return ReidNet(trunk, dim, num_identities)


def load_backbone_weights(trunk: nn.Module, path: str, backbone: str) -> None:
    """Load a state-dict file into the backbone without its classifier (``fc.*``); a missing
    file or one that does not fit the backbone is a ConfigError naming the field."""
    allowed = f"None or a local state-dict file of torchvision's {backbone}"
    if not Path(path).is_file():
        raise ConfigError(f"weights={path!r}: no such file (nothing is downloaded); allowed: {allowed}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        trunk.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"weights={path!r} does not fit backbone={backbone!r} ({detail}); "
                          f"allowed: {allowed}") from exc


# =============================================================================================
# SE-SNN's re-identification study with label noise (Table 4, Fig. 3b/c; App. A/B.1)
#
# The `sesnn_reid` Method (family sesnn; listed in trainables/sesnn.py's METHODS). Every run
# follows the paper's two stages, whatever its method, so the methods differ only in what they add:
#   noise  label_noise > 0: the similarity-based noise of `similarity_label_noise` on the features
#          of a model trained on the CLEAN labels with the stage-1 schedule (its own seed stream:
#          every method of a seed sees the same noisy labels), or with noise_features="initial"
#          the features of the stage-1 network before training (the paper: "ResNet-50 trained on
#          the clean data"; "initial" is a cheaper choice of ours);
#   stage 1  the whole identity classifier on the noisy labels: cross-entropy (B, F, SE-SNN) or
#          the bootstrap loss (H, S), lr stage1_lr;
#   stage 2  the last unit of the backbone (ResNet: layer4[-1]; small_cnn: its last conv) is kept
#          as mu; a NEW randomly initialised layer of the unit's shape (the residual branch of a
#          fresh block of the same type, or a fresh conv) beside it is SE-SNN's sigma layer,
#          sigma = softplus(.) + sigma_floor, and z = mu + eps * sigma goes through the unit's
#          ReLU; the deterministic baselines get the same layer as a parallel layer added to mu
#          (the paper's parameter-matched baseline; parallel_layer=False: none). Only the unit,
#          the new layer and the classifier train (lr stage2_lr); the layers before the unit are
#          frozen, batch norm there on its running statistics. SE-SNN adds omega * Eq. 6 over the
#          layer's C x H x W units, b = log 4 (App. A's "margin b is set as 4", read as log 4 as
#          App. B.1's grid {log 1, log 4, log 16} and search_spaces/sesnn.py read it), omega 1e-2.
#          F (Patrini et al.): the corruption matrix is estimated from the stage-1 network's
#          softmax on the training images (anchor = argmax over all of a class's probabilities,
#          anchor_percentile=100, as the paper says for ReID), and stage 2 trains on the
#          forward-corrected loss: a retraining from the stage-1 weights, not from scratch (a
#          choice: Patrini et al. retrain a fresh network).
# Test time passes mu only (no draw: eval mode), features pooled after the unit, Market-1501
# protocol (market1501_eval). CleanNet (Table 4's C) is NOT built: it needs a hand-cleaned 10%
# reference subset and Lee et al.'s own model; a documented gap.
# =============================================================================================

import time  # noqa: E402  (the study section keeps its imports with it)
from typing import Callable  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from trainables.common import (STATUS_OK, Method, Progress, TrainResult, check_device,  # noqa: E402
                               configs_from_preset, device_name, loss_tail, params_digest, resolve_device)
from trainables.data import MarketConfig, ReidData, ReidProxyConfig, load_market1501, load_reid_proxy  # noqa: E402
from trainables.noise import make_generator  # noqa: E402
from trainables.supervised import SCHEDULERS, train_supervised  # noqa: E402

REID_DATASETS = ("market1501", "proxy")
REID_MODELS = ("deterministic", "sesnn")
REID_LOSSES = ("ce", "bootstrap_soft", "bootstrap_hard", "forward")
NOISE_FEATURES = ("clean", "initial")
REID_FEATURES = ("mu",)  # the test-time feature: the paper passes mu only


@dataclass(frozen=True)
class ReidStudyConfig:
    """One run of the re-identification label-noise study: data, schedule (ReidConfig), method."""

    dataset: str = "market1501"  # market1501 (from a local root) | proxy (embedded digits; ReidProxyConfig)
    market: MarketConfig = MarketConfig()
    proxy: ReidProxyConfig = ReidProxyConfig()
    reid: ReidConfig = ReidConfig()
    model: str = "deterministic"  # deterministic | sesnn (stage 2's last unit stochastic)
    parallel_layer: bool = True  # deterministic: stage 2 adds a parallel layer of the sigma layer's shape
    aggregation: str = "sample"  # Eq. 6 for label noise (App. A); neuron (Eq. 5) / both (Eq. 7) as choices
    omega: float = 1e-2  # App. A: "a loss weight 10^-2"
    margin: float = math.log(4)  # b = log 4 (App. A's "4", read as App. B.1's log 4)
    sigma_floor: float = 1e-6  # added to softplus so log sigma stays finite
    loss: str = "ce"  # ce (B, SE-SNN) | bootstrap_hard (H) | bootstrap_soft (S) | forward (F)
    soft_beta: float = 0.95  # Reed et al.
    hard_beta: float = 0.8  # Reed et al.
    anchor_percentile: float = 100.0  # forward: 100 = argmax over all of a class's probabilities (the paper for ReID)
    noise_features: str = "clean"  # clean: a model trained on clean labels (the paper) | initial: the untrained net
    scheduler: str = "none"  # the paper names Adam and two learning rates, no schedule
    extreme_images: int = 8  # Fig. 3c: this many highest- and lowest-sigma training images kept
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_choice("dataset", self.dataset, REID_DATASETS)
        check_choice("model", self.model, REID_MODELS)
        if not isinstance(self.parallel_layer, bool):
            raise ConfigError(f"parallel_layer={self.parallel_layer!r} is not allowed; allowed: True, False")
        check_choice("aggregation", self.aggregation, ("neuron", "sample", "both"))
        check_range("omega", self.omega, 0.0)
        check_range("margin", self.margin, -math.inf)
        check_range("sigma_floor", self.sigma_floor, 0.0, low_open=True)
        check_choice("loss", self.loss, REID_LOSSES)
        for name in ("soft_beta", "hard_beta"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("anchor_percentile", self.anchor_percentile, 0.0, 100.0, low_open=True)
        check_choice("noise_features", self.noise_features, NOISE_FEATURES)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_int("extreme_images", self.extreme_images, 1)
        check_int("seed", self.seed, 0)
        check_device(self.device)
        if self.model == "sesnn" and self.reid.stage2_iterations == 0:
            raise ConfigError("stage2_iterations=0 with model='sesnn' trains no stochastic layer; allowed: >= 1")


@dataclass(frozen=True)
class ReidEvalConfig:
    """How features are extracted for retrieval (deterministic: mu only, eval mode)."""

    eval_batch_size: int = 256

    def __post_init__(self):
        check_int("eval_batch_size", self.eval_batch_size, 1)


# ---------------------------------------------------------------------------------------------
# Stage 2's network: the last unit made stochastic (or given a parallel layer)


def _branch(unit: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A unit's output before its identity shortcut and final ReLU: a conv's output, or the
    residual branch of a torchvision BasicBlock / Bottleneck."""
    if isinstance(unit, nn.Conv2d):
        return unit(h)
    out = unit.relu(unit.bn1(unit.conv1(h)))
    if hasattr(unit, "conv3"):  # Bottleneck
        out = unit.relu(unit.bn2(unit.conv2(out)))
        return unit.bn3(unit.conv3(out))
    return unit.bn2(unit.conv2(out))


def _preactivation(unit: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The unit's pre-activation: relu(_preactivation(unit, h)) is what the unit passes on."""
    if isinstance(unit, nn.Conv2d):
        return unit(h)
    return _branch(unit, h) + (h if unit.downsample is None else unit.downsample(h))


def _fresh_like(unit: nn.Module) -> nn.Module:
    """A randomly initialised layer of the unit's shape (from the global RNG)."""
    if isinstance(unit, nn.Conv2d):
        return nn.Conv2d(unit.in_channels, unit.out_channels, unit.kernel_size, unit.stride, unit.padding,
                         bias=unit.bias is not None)
    return type(unit)(unit.conv1.in_channels, unit.conv1.out_channels)  # last block: stride 1, no downsample


def split_backbone(backbone: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(layers before the last unit, the last unit, what follows its ReLU: pooling) of a
    `build_reid_model` backbone, sharing its modules."""
    if isinstance(backbone, nn.Sequential):  # small_cnn: conv, relu, conv, relu, pool, flatten
        last = max(i for i, m in enumerate(backbone) if isinstance(m, nn.Conv2d))
        return backbone[:last], backbone[last], backbone[last + 2:]
    trunk = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool, backbone.layer1,
                          backbone.layer2, backbone.layer3, *backbone.layer4[:-1])
    return trunk, backbone.layer4[-1], nn.Sequential(backbone.avgpool, nn.Flatten())


class StochasticUnit(nn.Module):
    """Stage 2's backbone: frozen trunk -> last unit as mu (+ a parallel layer, or SE-SNN's sigma
    layer) -> ReLU -> pooling. SE-SNN samples z = mu + eps * sigma in training mode only; in eval
    mode it passes mu (the paper's test time). `last` keeps the last forward's (mu, sigma)."""

    def __init__(self, backbone: nn.Module, kind: str, floor: float):
        super().__init__()
        self.trunk, self.unit, self.tail = split_backbone(backbone)
        self.extra = _fresh_like(self.unit) if kind != "none" else None
        self.kind, self.floor = kind, floor
        self.generator: torch.Generator | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        for p in self.trunk.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: batch norm on its running statistics, which stay as stage 1 left them
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.trunk(x)
        mu = _preactivation(self.unit, h)
        if self.kind == "parallel":
            mu = mu + _branch(self.extra, h)
        elif self.kind == "sesnn":
            sigma = F.softplus(_branch(self.extra, h)) + self.floor
            self.last = (mu, sigma)
            if self.training:
                mu = mu + sigma * torch.randn(mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype)
        return self.tail(torch.relu(mu))


def to_stage2(model: ReidNet, cfg: ReidStudyConfig) -> ReidNet:
    """The stage-1 network with its backbone wrapped in a StochasticUnit (the new layer from the
    global RNG); the classifier and the trunk's weights are the same tensors."""
    kind = "sesnn" if cfg.model == "sesnn" else ("parallel" if cfg.parallel_layer else "none")
    model.backbone = StochasticUnit(model.backbone, kind, cfg.sigma_floor).to(model.fc.weight.device)
    return model


# ---------------------------------------------------------------------------------------------
# Data, training, evaluation


def load_reid_data(cfg: ReidStudyConfig) -> ReidData:
    return load_market1501(cfg.market) if cfg.dataset == "market1501" else load_reid_proxy(cfg.proxy)


def _phases(cfg: ReidStudyConfig) -> list[str]:
    r = cfg.reid
    out = ["clean"] if r.label_noise > 0 and cfg.noise_features == "clean" and r.stage1_iterations else []
    return out + (["stage1"] if r.stage1_iterations else []) + (["stage2"] if r.stage2_iterations else [])


def _stage1_model(cfg: ReidStudyConfig, data: ReidData, phase: str, device) -> ReidNet:
    torch.manual_seed(stream_seed(cfg.seed, "reid", phase))
    return build_reid_model(cfg.reid.backbone, data.num_identities, cfg.reid.weights).to(device)


@torch.no_grad()
def _train_probs(model: ReidNet, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Softmax of the (deterministic, eval-mode) network on uint8 images."""
    was = model.training
    model.eval()
    out = torch.cat([F.softmax(model(x[i:i + batch].float().div(255)), 1) for i in range(0, len(x), batch)])
    model.train(was)
    return out


def train_reid(cfg: ReidStudyConfig, data: ReidData, callback: Callable[[Progress], object] | None = None,
               state: dict | None = None) -> TrainResult:
    """The noise model (if any), stage 1 and stage 2 (section comment), resuming in the phase the
    checkpoint was taken in: the checkpoint carries the noisy labels, the corruption matrix and the
    epochs and losses of the phases before."""
    from trainables.sesnn import estimate_transition, max_entropy, task_loss  # here: sesnn.py lists this Method

    device = resolve_device(cfg.device)
    start = time.perf_counter()
    r = cfg.reid
    x, clean = data.train.images.to(device), data.labels.to(device)
    phases = _phases(cfg)
    steps = {"clean": r.stage1_iterations, "stage1": r.stage1_iterations, "stage2": r.stage2_iterations}
    total = sum(steps[p] for p in phases) or 1
    carry = dict(state["carry"]) if state else {"epochs": 0, "histories": {}}
    at = phases.index(state["phase"]) if state else 0
    model, res, stopped = None, None, False
    for phase in phases[at:]:
        resume = state if state is not None and phase == state["phase"] else None
        if phase in ("clean", "stage1"):
            model = _stage1_model(cfg, data, phase, device)
        if phase != "clean" and "noisy" not in carry:
            if r.label_noise == 0:
                carry["noisy"], carry["flipped"] = clean.cpu(), torch.zeros(len(clean), dtype=torch.bool)
            else:
                source = res.model if res is not None and "clean" in carry["histories"] else \
                    _stage1_model(cfg, data, "stage1", device)  # "initial": the untrained stage-1 network
                feats = extract_features(source, data.train.images, 256, device).to(device)
                carry["noisy"], carry["flipped"] = similarity_label_noise(feats, data.labels, r.label_noise, cfg.seed,
                                                                          r.noise_metric)
                if phase == "stage1":
                    model = _stage1_model(cfg, data, "stage1", device)  # the same init whichever source was used
        if phase == "stage2":
            if model is None:  # resumed in stage 2, or no stage 1: the stage-1 network's shape
                model = _stage1_model(cfg, data, "stage1", device)
            if cfg.loss == "forward" and "transition" not in carry:
                probs = _train_probs(model, x, 256).cpu().double().numpy()
                carry["transition"] = torch.as_tensor(estimate_transition(probs, cfg.anchor_percentile),
                                                      dtype=torch.float32)
            if "trunk_digest" not in carry:
                carry["trunk_digest"] = params_digest(split_backbone(model.backbone)[0])
            torch.manual_seed(stream_seed(cfg.seed, "reid", "stage2_init"))
            model = to_stage2(model, cfg)
        y = clean if phase == "clean" else carry["noisy"].to(device)
        transition = carry.get("transition").to(device) if phase == "stage2" and "transition" in carry else None
        gen = make_generator(stream_seed(cfg.seed, "reid", phase, "noise"), device)
        if phase == "stage2":
            model.backbone.generator = gen

        def batch_loss(m: ReidNet, xb: torch.Tensor, yb: torch.Tensor, phase=phase, transition=transition):
            logits = m(xb.float().div(255))
            if phase == "clean":
                return F.cross_entropy(logits, yb)
            loss = task_loss(cfg, logits, yb, transition)
            if phase == "stage2" and cfg.model == "sesnn":
                loss = loss + cfg.omega * max_entropy(torch.log(m.backbone.last[1]).flatten(1), cfg.margin,
                                                      cfg.aggregation)
            return loss

        done_before = sum(steps[p] for p in phases[:phases.index(phase)])
        snapshot = {k: v for k, v in carry.items()}

        def report(p: Progress, phase=phase, snapshot=snapshot, done_before=done_before):
            nonlocal stopped
            if callback is None:
                return None
            answer = callback(Progress(p.epoch + snapshot["epochs"], p.loss,
                                       lambda: p.state() | {"phase": phase, "carry": snapshot},
                                       (done_before + p.done * steps[phase]) / total))
            stopped = stopped or answer is True
            return answer

        lr = r.stage2_lr if phase == "stage2" else r.stage1_lr
        res = train_supervised(model, x, y, seed=stream_seed(cfg.seed, "reid", phase), lr=lr,
                               batch_size=r.batch_size, epochs=1, steps=steps[phase], scheduler=cfg.scheduler,
                               batch_loss=batch_loss, generators={"reid_noise": gen}, callback=report, state=resume,
                               optimizer=r.optimizer, weight_decay=r.weight_decay)
        carry = carry | {"epochs": carry["epochs"] + res.epochs_done,
                         "histories": carry["histories"] | {phase: list(res.history)}}
        if res.status != STATUS_OK or stopped:
            break
    return _finish_reid(cfg, data, res, carry, x, start)


def _finish_reid(cfg: ReidStudyConfig, data: ReidData, res: TrainResult, carry: dict, x: torch.Tensor,
                 start: float) -> TrainResult:
    """The run's columns (label noise, losses per stage, Fig. 3b's mean sigma of clean and noisy
    training images) and Fig. 3c's artefacts (the highest- and lowest-sigma training images)."""
    nan = float("nan")
    model, hist = res.model, carry["histories"]
    last = hist.get("stage2") or hist.get("stage1") or []
    flipped = carry.get("flipped", torch.zeros(len(x), dtype=torch.bool))
    info = {"device_name": device_name(x.device), "label_noise_realised": float(flipped.float().mean()),
            "stage1_final_loss": float(hist["stage1"][-1]) if hist.get("stage1") else nan,
            "initial_loss": float(last[0]) if last else nan, "final_loss": float(last[-1]) if last else nan,
            **dict(zip(("loss_tail_change", "loss_tail_share"), loss_tail(last))),
            "sigma_clean": nan, "sigma_noisy": nan, "hinge_active_sample": nan, "trunk_unchanged": None}
    artefacts = {"noisy_labels": carry["noisy"].numpy(), "train_flipped": flipped.numpy()} if "noisy" in carry else {}
    if "transition" in carry:
        artefacts["transition"] = carry["transition"].numpy()
    if isinstance(model.backbone, StochasticUnit):
        info["trunk_unchanged"] = params_digest(model.backbone.trunk) == carry["trunk_digest"]
    if isinstance(model.backbone, StochasticUnit) and model.backbone.kind == "sesnn" and res.status == STATUS_OK:
        model.eval()
        sigmas, logs = [], []
        with torch.no_grad():
            for i in range(0, len(x), 256):
                model(x[i:i + 256].float().div(255))
                sigmas.append(model.backbone.last[1].flatten(1).mean(1).float().cpu())
                logs.append(torch.log(model.backbone.last[1]).flatten(1).mean(1).float().cpu())
        sigma, log_sigma = torch.cat(sigmas), torch.cat(logs)
        # Eq. 6's per-image hinge (b - mean log sigma)^+: where every image's is active, the
        # regulariser pushes every image alike and cannot single out the noisy ones
        info["hinge_active_sample"] = float((log_sigma < cfg.margin).float().mean())
        if (~flipped).any():
            info["sigma_clean"] = float(sigma[~flipped].mean())
        if flipped.any():
            info["sigma_noisy"] = float(sigma[flipped].mean())
        k = min(cfg.extreme_images, len(sigma))
        order = torch.argsort(sigma, descending=True, stable=True)
        high, low = order[:k], order.flip(0)[:k]
        artefacts |= {"train_sigma": sigma.numpy(), "train_log_sigma": log_sigma.numpy(),
                      "sigma_high_index": high.numpy(), "sigma_low_index": low.numpy(),
                      "sigma_high_images": data.train.images[high].numpy(),
                      "sigma_low_images": data.train.images[low].numpy()}
    model.eval()
    info["params_digest"] = params_digest(model)
    history = hist.get("stage1", []) + hist.get("stage2", [])
    return TrainResult(model, res.status, carry["epochs"], history, time.perf_counter() - start, res.message,
                       artefacts, info)


def check_reid_setting(setting) -> dict:
    """A test setting is {"features": "mu"}: retrieval on the mean feature (the paper's test time)."""
    if not isinstance(setting, dict):
        raise ConfigError(f"test setting={setting!r} is not allowed; allowed: a dict with key features")
    unknown = sorted(set(setting) - {"features"})
    if unknown:
        raise ConfigError(f"test setting key {unknown[0]!r} is not allowed; allowed: features")
    features = setting.get("features", "mu")
    check_choice("features", features, REID_FEATURES)
    return {"features": features}


def evaluate_reid(model: ReidNet, data: ReidData, settings, cfg: ReidStudyConfig, ecfg: ReidEvalConfig,
                  eval_seed: int = 0) -> list[dict]:
    """One row per setting: Market-1501 CMC rank-1/5/10 and mAP of query against gallery on the
    mean features (eval mode: no draw, so two evaluations are bit-identical)."""
    device = next(model.parameters()).device
    rows = []
    for s in (check_reid_setting(s) for s in settings):
        t0 = time.perf_counter()
        q = extract_features(model, data.query.images, ecfg.eval_batch_size, device)
        g = extract_features(model, data.gallery.images, ecfg.eval_batch_size, device)
        scores = market1501_eval(feature_distances(q, g, cfg.reid.distance), data.query.pids, data.gallery.pids,
                                 data.query.camids, data.gallery.camids, RANKS, cfg.reid.ap_rule)
        rows.append(s | scores | {"query_images": len(q), "gallery_images": len(g),
                                  "train_identities": data.num_identities, "eval_seconds": time.perf_counter() - t0})
    return rows


REID_PRESETS: dict[str, dict] = {
    # Market-1501 from a local root, ResNet-50, the paper's 60k + 20k iterations (and 60k for the clean
    # model the noise is drawn from). weights=None starts from random weights; --set weights=FILE for
    # torchvision's ImageNet ResNet-50 (the paper's start).
    "paper": {"dataset": "market1501", "backbone": "resnet50"},
    # The PROXY (ReidProxyConfig): mnist5k digits 0-5 train, 6-9 query/gallery, 28 px, small_cnn.
    "quick": {"dataset": "proxy", "backbone": "small_cnn", "proxy_dataset": "mnist5k", "proxy_image_size": 28,
              "stage1_iterations": 1500, "stage2_iterations": 750},  # stage 2: 10 epochs, so its loss tail is measured
    # Seconds: the proxy on digits at 8 px, 8 images per identity.
    "smoke": {"dataset": "proxy", "backbone": "small_cnn", "proxy_dataset": "digits", "proxy_image_size": 8,
              "proxy_train_limit": 8, "proxy_queries": 3, "stage1_iterations": 6, "stage2_iterations": 6,
              "batch_size": 16, "extreme_images": 2},
}

_CLEANNET = ("CleanNet (Table 4's C) is not built: it needs a hand-cleaned 10% reference subset and Lee et al.'s "
             "model, a documented gap")
REID_PRESET_NOTES = {
    "paper": "note: Market-1501 is read from a local root (never downloaded); weights=None trains ResNet-50 from "
             "random weights, not the paper's ImageNet start (--set weights=FILE); the noise model is a "
             f"second 60k-iteration stage 1 on clean labels per trial; {_CLEANNET}",
    "quick": "note: --preset quick is a PROXY, not Market-1501: identities are mnist5k digit classes (0-5 train, 6-9 "
             "query/gallery) with two synthetic cameras that are labels only, and a small CNN, not ResNet-50; it "
             "shows whether the pipeline runs and how the methods order on unseen-identity retrieval under "
             "similarity label noise, not person re-identification, Fig. 3c's occlusions or Forward's failure with "
             f"< 20 images per identity (here 400); {_CLEANNET}",
    "smoke": "note: --preset smoke checks that the pipeline runs (a handful of digits, a few steps); its numbers "
             "mean nothing",
}


def reid_configs(preset: str, overrides: dict | None = None) -> tuple[ReidStudyConfig, ReidEvalConfig]:
    return configs_from_preset(REID_PRESETS, ReidStudyConfig(), ReidEvalConfig, preset, overrides)


def describe_reid(cfg: ReidStudyConfig, ecfg: ReidEvalConfig, settings) -> str:
    model = f"SE-SNN (omega {cfg.omega:g}, b {cfg.margin:.3g})" if cfg.model == "sesnn" else "deterministic"
    data = "Market-1501" if cfg.dataset == "market1501" else f"the {cfg.proxy.proxy_dataset} proxy"
    return (f"{model} {cfg.reid.backbone}, loss {cfg.loss}, label noise {cfg.reid.label_noise:g} on {data}; "
            f"{cfg.reid.stage1_iterations} + {cfg.reid.stage2_iterations} iterations; {len(settings)} test settings")


REID_METHOD = Method(
    "sesnn_reid", "sesnn", reid_configs, load_reid_data, train_reid, evaluate_reid, check_reid_setting,
    setting_columns={"features": "features"}, summary_columns=("model", "loss", "label_noise", "features"),
    describe=describe_reid, diverging={"stage1_lr": 1e30}, preset_notes=REID_PRESET_NOTES)

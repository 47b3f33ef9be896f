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

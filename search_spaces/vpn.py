"""VPN experiments (papers/variational-pi-noise.txt): Tables I-II, Table IV and Fig. 4.

    python -m tuner.run vpn_table --preset quick --seeds 3     # base models x baselines and generators
    python -m tuner.run vpn_frozen --preset quick              # generators on frozen base models
    python -m tuner.run vpn_noise_size --preset quick          # m, the draws per training example

The paper's tables average 5 runs: `--seeds 5` on the paper preset.
"""

from __future__ import annotations

from search_spaces.base import Experiment, Space, grid
from trainables.vpn import METHODS  # noqa: F401 (registered with this family)

BASELINES = ["none", "rotation", "translation", "color_jitter", "blur", "pixel_noise"]
GENERATORS = ["dnn3", "resnet18"]
# The paper's row names (Tables I, II, IV): the one source. A trial writes its point's name as the
# rows' `label` column; analysis adds " (No Noise)" to a generator's rows scored by f alone.
BASELINE_LABELS = {"none": "Baseline", "rotation": "Random Rotation", "translation": "Random Translation",
                   "color_jitter": "Color Jitter", "blur": "Gaussian Blur", "pixel_noise": "Random Noise"}
GENERATOR_LABELS = {"dnn3": "DNN3", "resnet18": "ResNet18"}


def label(point: dict) -> str:
    """The paper's row name of a training point: its baseline, or its generator."""
    generator = point.get("generator", "none")
    if generator == "none":
        augmentation = point.get("augmentation", "none")
        return BASELINE_LABELS.get(augmentation, str(augmentation))
    weight = point.get("clean_loss_weight", 0.0)
    return GENERATOR_LABELS.get(generator, str(generator)) + (f" (λ={weight:g})" if weight else "")


# Per data set of the paper: image geometry, and the base models with their epochs (40 shallow, 100 ResNets).
PAPER_DATA = {
    "fashion_mnist": {"image_size": 28, "channels": 1},
    "cifar10": {"image_size": 32, "channels": 3},
    "tiny_imagenet": {"image_size": 64, "channels": 3, "batch_size": 128},
}
PAPER_BASES = {
    "fashion_mnist": ["softmax_regression", "dnn3", "resnet18", "resnet34"],
    "cifar10": ["softmax_regression", "dnn3", "resnet18", "resnet34", "vit_small"],
    "tiny_imagenet": ["resnet18", "resnet34", "resnet50", "vit_small"],
}


def _epochs(base: str) -> int:
    return 100 if base.startswith("resnet") else 40


def _bases(preset: str) -> list[dict]:
    """Training points of the data set x base model (with epochs on the paper preset)."""
    if preset == "paper":
        return [{"dataset": ds, **PAPER_DATA[ds], "base": b, "epochs": _epochs(b)}
                for ds, bases in PAPER_BASES.items() for b in bases]
    return [{"base": b} for b in (["softmax_regression", "dnn3"] if preset == "quick" else ["dnn3"])]


def _tests(point: dict) -> list[dict]:
    """A generator's trial is scored by Algorithm 2 and by f alone ("No Noise"); a baseline by f."""
    if point.get("generator", "none") == "none":
        return [{"inference": "clean"}]
    return [{"inference": "vpn"}, {"inference": "clean"}]


def vpn_table(preset: str) -> Space:
    """Tables I-II: base models x {six baselines, two generators (joint), generators without noise}."""
    augmentations = BASELINES if preset != "smoke" else ["none", "pixel_noise"]
    generators = GENERATORS if preset != "smoke" else ["dnn3"]
    train = [b | {"augmentation": a} for b in _bases(preset) for a in augmentations]
    train += [b | {"generator": g} for b in _bases(preset) for g in generators]
    if preset == "quick":  # Eq. 13 as the paper writes it, L = L_base + lambda L_VPN with lambda 1, beside 0
        train += [b | {"generator": "dnn3", "clean_loss_weight": 1.0} for b in _bases(preset)]
    return Space(train, _tests, label=label)


def vpn_frozen(preset: str) -> Space:
    """Table IV: each generator trained on a trained, frozen base model, beside that baseline."""
    generators = GENERATORS if preset != "smoke" else ["dnn3"]
    train = [b | {"augmentation": "none"} for b in _bases(preset)]
    train += [b | {"generator": g, "mode": "frozen"} for b in _bases(preset) for g in generators]
    return Space(train, _tests, label=label)


def vpn_noise_size(preset: str) -> Space:
    """Fig. 4: m, the reparameterised draws per training example, with the DNN3 generator."""
    draws = [1, 2, 4, 8, 16] if preset != "smoke" else [1, 2]
    bases = [b for b in _bases(preset) if b["base"] == "dnn3"] or _bases(preset)[:1]
    return Space([b | {"generator": "dnn3"} | p for b in bases for p in grid(noise_draws=draws)], _tests,
                 label=label)


EXPERIMENTS = [
    Experiment("vpn_table", "VPN Tables I-II: base models x baselines and generators (joint)", "vpn", vpn_table),
    Experiment("vpn_frozen", "VPN Table IV: generators on frozen, trained base models", "vpn", vpn_frozen),
    Experiment("vpn_noise_size", "VPN Fig. 4: draws per training example m", "vpn", vpn_noise_size),
]

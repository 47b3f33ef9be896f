"""Patterned label noise (SE-SNN's label-noise study): each class is flipped to one fixed other class.

The pattern is drawn per seed (it changes across runs and is fixed within one); each training
label is flipped to its class's target with probability p. Shared by the SE-SNN family and by
noise_bench, which trains every method on the same noisy labels.
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.injection import stream_seed


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

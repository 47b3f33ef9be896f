"""Training-time augmentations, the baselines noise methods are compared with.

Geometric and photometric ones are torchvision `transforms.v2`, run on the device on the batch
tensor. A v2 transform draws its parameters once per call, so it is called per image (each image
gets its own angle, shift, factors); parameters come from torch's global RNG, which the shared
supervised loop saves in checkpoints. `pixel_noise` is the VPN paper's "Random" baseline: standard
Gaussian noise added to a random fraction of the pixels of each image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.checks import check_choice, check_int, check_range

AUGMENTATIONS = ("none", "rotation", "translation", "color_jitter", "blur", "pixel_noise")


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation and its strengths (the papers leave the strengths open)."""

    augmentation: str = "none"  # one of AUGMENTATIONS
    rotation_degrees: float = 15.0  # rotation: angle uniform in [-d, d]
    translate_fraction: float = 0.1  # translation: shift up to this fraction of the side, each axis
    jitter_strength: float = 0.4  # color_jitter: brightness and contrast factors in [1-s, 1+s]
    blur_kernel: int = 3  # blur: Gaussian kernel side (odd)
    blur_sigma_max: float = 2.0  # blur: sigma uniform in [0.1, max]
    pixel_noise_fraction: float = 0.1  # pixel_noise: share of pixels that get N(0, 1) added

    def __post_init__(self):
        check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        check_range("rotation_degrees", self.rotation_degrees, 0.0, 180.0)
        check_range("translate_fraction", self.translate_fraction, 0.0, 1.0)
        check_range("jitter_strength", self.jitter_strength, 0.0, 1.0)
        check_int("blur_kernel", self.blur_kernel, 1)
        if self.blur_kernel % 2 == 0:
            check_choice("blur_kernel", self.blur_kernel, (1, 3, 5, 7, 9))
        check_range("blur_sigma_max", self.blur_sigma_max, 0.1)
        check_range("pixel_noise_fraction", self.pixel_noise_fraction, 0.0, 1.0)


def transform(cfg: AugmentConfig, channels: int):
    """The per-image v2 transform of `cfg`, or None for none/pixel_noise."""
    from torchvision.transforms import v2  # imported when used: see models.archs()
    a = cfg.augmentation
    if a == "rotation":
        return v2.RandomRotation(cfg.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR)
    if a == "translation":
        # whole-pixel shifts (torchvision rounds them): at 8 px and 0.1, -1, 0 or +1 pixel
        return v2.RandomAffine(0.0, translate=(cfg.translate_fraction, cfg.translate_fraction))
    if a == "color_jitter":  # saturation and hue only exist for colour images
        s = cfg.jitter_strength
        return v2.ColorJitter(s, s, s if channels == 3 else 0.0, min(0.5, s / 4) if channels == 3 else 0.0)
    if a == "blur":
        return v2.GaussianBlur(cfg.blur_kernel, (0.1, cfg.blur_sigma_max))
    return None


def augment(cfg: AugmentConfig, x: torch.Tensor) -> torch.Tensor:
    """A new batch (N, C, H, W): each image augmented independently; `x` is left as it is."""
    if cfg.augmentation == "none":
        return x
    if cfg.augmentation == "pixel_noise":
        chosen = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) < cfg.pixel_noise_fraction
        return x + chosen * torch.randn(x.shape, device=x.device)
    t = transform(cfg, x.shape[1])
    return torch.stack([t(image) for image in x])

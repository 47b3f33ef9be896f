"""The model zoo: torchvision classifiers by name, plus a small CNN for laptop runs.

Any torchvision classification model is available through `torchvision.models.get_model`
(weights=None: nothing is downloaded). `stem="cifar"` replaces an ImageNet stem (7x7 stride-2
convolution and max-pool) by a 3x3 stride-1 convolution, the usual ResNet variant for 32 px
images; `stem="imagenet"` keeps torchvision's layers and only adapts the input channels.
"""

from __future__ import annotations

import torchvision
from torch import nn

from trainables.checks import ConfigError, check_choice

ARCHS = ("small_cnn", "resnet18", "resnet34", "resnet50", "vgg11", "vgg16")
MIN_IMAGE_SIZE = {"small_cnn": 4, "vgg11": 32, "vgg16": 32}  # vgg: 5 max-pools; ResNets pool adaptively
STEMS = ("imagenet", "cifar")


def small_cnn(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Two conv-ReLU-pool blocks and a linear layer: seconds per epoch on CPU for local runs."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, num_classes))


def build_model(arch: str, channels: int, num_classes: int, image_size: int, stem: str = "imagenet") -> nn.Module:
    """A freshly initialised classifier (from the global RNG) for images (channels, size, size)."""
    check_choice("arch", arch, ARCHS)
    check_choice("stem", stem, STEMS)
    if image_size < MIN_IMAGE_SIZE.get(arch, 1):
        raise ConfigError(f"image_size={image_size} is too small for arch={arch!r}; "
                          f"allowed: image_size >= {MIN_IMAGE_SIZE[arch]}")
    if arch == "small_cnn":
        return small_cnn(channels, num_classes, image_size)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if arch.startswith("vgg"):
        if channels != 3:
            model.features[0] = nn.Conv2d(channels, 64, 3, padding=1)
        return model
    if stem == "cifar":
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    return model

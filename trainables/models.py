"""The model zoo: every torchvision classifier by name, plus small models for laptop runs.

Besides torchvision's classifiers: `small_cnn`, `softmax_regression` (one linear layer on the
flattened image), `dnn3` (the d-1024-1024-C MLP of the VPN paper), `mlp` (an MLP of any hidden
widths, `hidden`: noise_bench's shared base model) and `vit_small` (torchvision's
VisionTransformer with a patch size to choose, 6 layers of width 192: the size the VPN paper's
small-image ViT leaves open).

Any classification model of `torchvision.models.list_models(module=torchvision.models)` is
available through `torchvision.models.get_model` (weights=None: nothing is downloaded), so a
sweep can cover the paper's many architectures, not a hand-picked few. Inputs other than RGB get
their first convolution rebuilt for `channels`. `stem="cifar"` is the usual small-image variant:
ResNet-style models (a `conv1` and a `maxpool`) get a 3x3 stride-1 first convolution and no
max-pool; other models get their first convolution's stride set to 1; VGG is left as it is
(3x3 stride 1 already). `stem="imagenet"` keeps torchvision's layers. A model that cannot take the
image size is refused when it is built (one probe forward pass), not in the middle of a sweep.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from trainables.checks import ConfigError, check_choice

STEMS = ("imagenet", "cifar")


LOCAL_ARCHS = ("small_cnn", "softmax_regression", "dnn3", "vit_small", "mlp")


@functools.lru_cache(maxsize=1)
def archs() -> tuple[str, ...]:
    """The local models and every torchvision classification model."""
    import torchvision  # here, not at the top: it imports torch._dynamo (bench/results/startup_cpu.txt)
    return (*LOCAL_ARCHS, *torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str, field: str = "arch") -> None:
    """A local model is checked without importing torchvision (the drivers of most sweeps never need it)."""
    if arch not in LOCAL_ARCHS:
        check_choice(field, arch, archs())


def check_widths(field: str, widths) -> None:
    """Refuse anything but a tuple of integers >= 1 (hidden widths)."""
    if not isinstance(widths, tuple) or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                for w in widths):
        raise ConfigError(f"{field}={widths!r} is not allowed; allowed: a tuple of integers >= 1")


def mlp(in_features: int, out_features: int, hidden: tuple[int, ...] = ()) -> nn.Sequential:
    """Flatten, then Linear-ReLU per hidden width, then a Linear to `out_features`."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, out_features))


def vit_small(channels: int, num_classes: int, image_size: int, patch_size: int) -> nn.Module:
    """torchvision's VisionTransformer sized for 28-64 px images."""
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1 or image_size % patch_size:
        raise ConfigError(f"patch_size={patch_size!r} does not divide image_size={image_size}; allowed: "
                          f"{', '.join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)}")
    import torchvision
    model = torchvision.models.VisionTransformer(image_size, patch_size, num_layers=6, num_heads=3,
                                                 hidden_dim=192, mlp_dim=384, num_classes=num_classes)
    if channels != 3:
        model.conv_proj = nn.Conv2d(channels, 192, patch_size, patch_size)
    return model


def small_cnn(channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Two conv-ReLU-pool blocks and a linear layer: seconds per epoch on CPU for local runs."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, num_classes))


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, module) of the model's first Conv2d in registration order."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    raise ConfigError("arch has no Conv2d to adapt; allowed: a convolutional model or a ViT")


def _rebuild(conv: nn.Conv2d, channels: int, stride=None, kernel=None) -> nn.Conv2d:
    kernel = kernel or conv.kernel_size
    padding = tuple(k // 2 for k in kernel) if kernel != conv.kernel_size else conv.padding
    return nn.Conv2d(channels, conv.out_channels, kernel, stride or conv.stride, padding,
                     bias=conv.bias is not None, groups=1)


def build_model(arch: str, channels: int, num_classes: int, image_size: int, stem: str = "imagenet",
                patch_size: int = 4, hidden: tuple[int, ...] = (128, 128)) -> nn.Module:
    """A freshly initialised classifier (from the global RNG) for images (channels, size, size);
    `patch_size` is vit_small's, `hidden` the widths of `mlp`."""
    check_arch(arch)
    check_choice("stem", stem, STEMS)
    if arch in ("softmax_regression", "dnn3", "mlp"):
        widths = {"softmax_regression": (), "dnn3": (1024, 1024)}.get(arch, hidden)
        check_widths("hidden", widths)
        return mlp(channels * image_size ** 2, num_classes, tuple(widths))
    if arch == "vit_small":
        model = vit_small(channels, num_classes, image_size, patch_size)
        _probe(model, arch, channels, image_size)
        return model
    if arch == "small_cnn":
        if image_size < 4:
            raise ConfigError(f"image_size={image_size} is too small for arch='small_cnn'; allowed: image_size >= 4")
        return small_cnn(channels, num_classes, image_size)
    kwargs = {"image_size": image_size} if arch.startswith("vit_") else {}
    try:
        import torchvision
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"arch={arch!r} cannot be built for image_size={image_size}: {exc}") from exc
    if arch.startswith("vit_"):
        if channels != 3:
            model.conv_proj = nn.Conv2d(channels, model.conv_proj.out_channels, model.conv_proj.kernel_size,
                                        model.conv_proj.stride)
    elif hasattr(model, "conv1") and hasattr(model, "maxpool") and isinstance(model.conv1, nn.Conv2d):
        if stem == "cifar":  # ResNet family
            model.conv1 = _rebuild(model.conv1, channels, stride=(1, 1), kernel=(3, 3))
            model.maxpool = nn.Identity()
        elif channels != 3:
            model.conv1 = _rebuild(model.conv1, channels)
    else:
        parent, name, conv = _first_conv(model)
        is_vgg = arch.startswith("vgg")
        if channels != 3 or (stem == "cifar" and not is_vgg):
            setattr(parent, name, _rebuild(conv, channels, stride=(1, 1) if stem == "cifar" and not is_vgg else None))
    _probe(model, arch, channels, image_size)
    return model


def _probe(model: nn.Module, arch: str, channels: int, image_size: int) -> None:
    """One eval-mode forward pass on zeros (no random numbers drawn): a size the model cannot take
    is a ConfigError naming the arch and the size."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"image_size={image_size} is too small for arch={arch!r} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); allowed: a larger image_size "
                          "or another arch") from exc
    finally:
        model.train(was_training)

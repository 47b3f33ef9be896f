"""Test-time input corruptions at a stated strength, for any family's robustness rows.

Images are float (N, C, H, W) in [0, 1] and stay there. Strength 0 is the identity for every
corruption. Noise, blur, contrast and rotation are torchvision `transforms.v2` functionals;
impulse noise (salt and pepper) has no v2 op and is written here; FGSM is the Adversarial
Robustness Toolbox's `FastGradientMethod` (L-inf, clipped to [0, 1]), imported only when used.

| corruption | strength means | allowed |
|---|---|---|
| clean | (none) | 0 |
| gaussian_noise | std of additive N(0, s^2) noise, then clipped | >= 0 |
| impulse_noise | share of pixels set to 0 or 1 (half each) | [0, 1] |
| blur | std in pixels of a Gaussian kernel (side 2*ceil(3s)+1, at most the image side) | >= 0 |
| contrast | 1 - contrast factor: 0 keeps the image, 1 makes it its mean grey | [0, 1] |
| rotation | degrees, bilinear, zero fill | >= 0 |
| fgsm | L-inf budget eps of one signed-gradient step on the model's cross-entropy | >= 0 |

`eot_fgsm` is the same step along the expected gradient over several forward passes of a model
whose forward is random (Athalye et al. 2018's expectation over transformation): ART's FGSM
takes the gradient of one pass, which understates the attack on a stochastic network.

`eot_cw_l2` is ART's untargeted `CarliniL2Method` (Carlini & Wagner's L2 attack, with ART's line
search) run on `DrawMean(model, draws)`, a module whose forward is the mean over `draws` forward
passes: every prediction and every class gradient the attack asks for is then over the same K
draws, and the gradient of the mean logits is the expected gradient over the draws (EOT). ART's
own EoT preprocessors draw input transformations and return N x K outputs, which its CW attack
cannot read; the model's own randomness needs this wrapper instead. Given the generator the
model draws from, DrawMean restores its state before every forward, so every call sees the same K
draws (common random numbers) and the attack's objective is a deterministic function of the input:
ART's line search and binary search compare losses across calls, and on fresh draws each
comparison is between two noisy samples (see the README's CW caution for what that costs).
The model must then draw the same noise for an image wherever it sits in the batch (ART calls
the model on subsets of the batch): an SE-SNN does with `SNN.set_noise(..., shared=True)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checks import ConfigError, check_choice, check_range

CW_OUTPUTS = ("logits", "probs")  # what DrawMean averages: logits, or softmax (read back as log mean softmax)
CORRUPTIONS = ("clean", "gaussian_noise", "impulse_noise", "blur", "contrast", "rotation", "fgsm")
UNIT_STRENGTH = ("impulse_noise", "contrast")  # strength is a share, at most 1
# Three strengths per corruption on [0, 1] images, from mild to where a plain digits MLP is far down:
# the NINR comparison's grid, shared with noise_bench so both test under the same shifts.
THREE_STRENGTHS = {
    "gaussian_noise": [0.1, 0.2, 0.4],
    "impulse_noise": [0.05, 0.1, 0.2],
    "blur": [0.5, 1.0, 1.5],
    "contrast": [0.3, 0.6, 0.9],
    "rotation": [10.0, 20.0, 40.0],
    "fgsm": [0.02, 0.05, 0.1],
}


def check_corruption(name, strength) -> tuple[str, float]:
    """(name, strength) if allowed, else one ConfigError naming the field and the allowed values."""
    check_choice("corruption", name, CORRUPTIONS)
    check_range("strength", strength, 0.0, 1.0 if name in UNIT_STRENGTH else math.inf)
    if name == "clean" and strength != 0:
        raise ConfigError(f"strength={strength!r} with corruption='clean'; allowed: 0")
    return name, float(strength)


def corrupt(x: torch.Tensor, name: str, strength: float, seed: int, model: nn.Module | None = None,
            y: torch.Tensor | None = None) -> torch.Tensor:
    """x under corruption `name` at `strength`; random corruptions are seeded by `seed`. FGSM
    needs the model (ART runs it in eval mode; noise a family switches on itself, such as NINR's
    test-time noise, stays as the caller set it) and the true labels."""
    name, strength = check_corruption(name, strength)
    if strength == 0:
        return x
    from torchvision.transforms import v2  # imported when used: see models.archs()
    if name == "gaussian_noise":
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)  # v2's noise draws from the global RNG: forked, so it is seeded here only
            return v2.functional.gaussian_noise(x, mean=0.0, sigma=strength, clip=True)
    if name == "impulse_noise":
        gen = torch.Generator(x.device).manual_seed(seed)
        u = torch.rand(x.shape[0], 1, *x.shape[2:], generator=gen, device=x.device).expand_as(x)
        salt = torch.rand(x.shape[0], 1, *x.shape[2:], generator=gen, device=x.device).expand_as(x) < 0.5
        return torch.where(u < strength, salt.to(x.dtype), x)
    if name == "blur":
        side = min(2 * math.ceil(3 * strength) + 1, x.shape[-1] if x.shape[-1] % 2 else x.shape[-1] - 1)
        return v2.functional.gaussian_blur(x, kernel_size=[side, side], sigma=[strength, strength])
    if name == "contrast":
        return v2.functional.adjust_contrast(x, 1.0 - strength).clamp(0, 1)
    if name == "rotation":
        return v2.functional.rotate(x, strength, interpolation=v2.InterpolationMode.BILINEAR)
    if model is None or y is None:
        raise ConfigError("corruption='fgsm' needs the model and the labels")
    return fgsm(model, x, y, strength)


def eot_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, draws: int = 1) -> torch.Tensor:
    """x + eps * sign(mean over `draws` forward passes of d CE / dx), clipped to [0, 1]. Only the
    input's gradient is taken (the model's .grad fields are left alone); each pass draws the
    model's own noise, whatever mode the caller left it in."""
    x0 = x.detach().requires_grad_(True)
    grad = torch.zeros_like(x0)
    for _ in range(draws):
        (g,) = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
        grad += g
    return (x.detach() + eps * torch.sign(grad / draws)).clamp(0, 1)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """ART's FastGradientMethod on a PyTorch model (L-inf, one step, inputs clipped to [0, 1])."""
    import numpy as np
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=classes,
                            clip_values=(0.0, 1.0), device_type="gpu" if x.device.type == "cuda" else "cpu")
    adv = FastGradientMethod(clf, eps=eps, norm=np.inf, batch_size=len(x)).generate(
        x.detach().cpu().numpy(), y=F.one_hot(y.cpu(), classes).numpy())
    return torch.from_numpy(adv).to(x.device, x.dtype)


class DrawMean(nn.Module):
    """The mean over `draws` forward passes of a model whose forward is random (each pass draws
    the model's own noise): of its logits (`output="logits"`: linear, so an attack's gradient is the
    expected gradient over the draws), or the log of its mean softmax (`"probs"`: the predictive
    distribution a sampled model tests with, as logits). With `generator` (the one the model draws
    its noise from), that generator's state at construction is restored before every forward: every
    call averages the same K draws (K different draws, the same ones each call)."""

    def __init__(self, model: nn.Module, draws: int = 1, output: str = "logits",
                 generator: torch.Generator | None = None):
        super().__init__()
        check_choice("output", output, CW_OUTPUTS)
        self.model, self.draws, self.output = model, int(draws), output
        self.generator, self.state = generator, None if generator is None else generator.get_state()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is not None:
            self.generator.set_state(self.state)
        outs = torch.stack([self.model(x) for _ in range(self.draws)])
        if self.output == "logits":
            return outs.mean(0)
        return torch.log(F.softmax(outs, -1).mean(0))


def worst_case(x0: torch.Tensor, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    """Per image, the stronger of two attacks on x0, each given as (attacked inputs, whether the
    model still gets each right): the one the model gets wrong; where both break it, the smaller L2
    perturbation (CW's aim); where neither does, the first's input. Returns (inputs, right)."""
    (xa, ra), (xb, rb) = a, b
    la, lb = (xa - x0).flatten(1).norm(dim=1), (xb - x0).flatten(1).norm(dim=1)
    take_b = (ra & ~rb) | (~ra & ~rb & (lb < la))
    return torch.where(take_b.view(-1, *([1] * (x0.dim() - 1))), xb, xa), ra & rb


def eot_cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, draws: int = 1, output: str = "logits",
              confidence: float = 0.0, learning_rate: float = 0.01, binary_search_steps: int = 10,
              max_iter: int = 10, initial_const: float = 0.01, max_halving: int = 5, max_doubling: int = 5,
              batch_size: int = 128, generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted CW-L2 (ART's CarliniL2Method; its defaults here) against the true labels `y`, on
    DrawMean(model, draws, output, generator): with `generator`, every model call of the attack sees
    the same K draws from it. Inputs in [0, 1]. An input for which no adversarial was found
    comes back unchanged. The model's .grad fields are left alone (its parameters are frozen while
    ART takes its class gradients) and its noise mode is the caller's."""
    import numpy as np
    from art.attacks.evasion import CarliniL2Method
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    wrapped = DrawMean(model, draws, output, generator)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        clf = PyTorchClassifier(wrapped, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=classes, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.device.type == "cuda" else "cpu")
        attack = CarliniL2Method(clf, confidence=confidence, targeted=False, learning_rate=learning_rate,
                                 binary_search_steps=binary_search_steps, max_iter=max_iter,
                                 initial_const=initial_const, max_halving=max_halving, max_doubling=max_doubling,
                                 batch_size=batch_size, verbose=False)
        adv = attack.generate(x.detach().cpu().numpy().astype(np.float32), y=F.one_hot(y.cpu(), classes).numpy())
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return torch.from_numpy(adv).to(x.device, x.dtype)

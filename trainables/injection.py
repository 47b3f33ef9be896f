"""Noise injection into any torch model through forward hooks, so library models stay unmodified.

t = f(.) + alpha * z after an activation module (the EBM paper's Eq. 1, Appendix E), with z from
a seeded generator. Used by the Appendix E classifiers; any family that perturbs activations of
a model-zoo network can use it.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from trainables.checks import check_choice, check_range
from trainables.noise import DISTRIBUTIONS, NoiseParams, fill_

ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                    nn.Mish, nn.Sigmoid, nn.Tanh)


def stream_seed(*parts) -> int:
    """A 63-bit seed per named stream, so shuffling, training noise and each test setting are independent."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class ActivationNoise:
    """Forward hooks adding alpha*z after every module of `types`; a module called twice (ResNet's
    shared `relu`) gets fresh noise on each call. Active in eval mode too: test noise is the point."""

    def __init__(self, model: nn.Module, params: NoiseParams = NoiseParams(), types=ACTIVATION_TYPES):
        self.params, self.distribution, self.alpha, self.generator, self.calls = params, "gaussian", 0.0, None, 0
        self.shared = False
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, types)]

    def set(self, distribution: str, alpha: float, generator: torch.Generator | None, shared: bool = False) -> None:
        """Noise law, scale and generator; `shared`: one draw per activation for the whole batch
        (broadcast over its images), so an image's noise does not depend on which images share its
        batch: what an attack with fixed draws needs (corruptions.DrawMean)."""
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_range("alpha", alpha, 0.0)
        self.distribution, self.alpha, self.generator, self.shared = distribution, float(alpha), generator, shared

    def _hook(self, module, inputs, output):
        self.calls += 1
        if self.alpha == 0:
            return None
        shape = (1, *output.shape[1:]) if self.shared else output.shape
        z = fill_(output.new_empty(shape), self.distribution, self.params, self.generator)
        return output + self.alpha * z  # a new tensor, so inplace ReLUs are fine

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

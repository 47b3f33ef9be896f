"""A slow reference for the EBM's sampling inference, written from the paper's equations.

activation-noise-ebm Eq. 1 and Eq. 9: each class y has its own autoencoder f(.|y); during
inference the activation of every layer l in the placement is perturbed, t_l = f_l(W_l t_{l-1}
+ b_l) + alpha * z_l, with z_l drawn fresh for every neuron, example and forward pass; the energy
of one pass is E(x|y, z) = ||f(x|y, z) - x||^2, the n-draw energy is its mean over n passes, and
the prediction is argmin_y. Plain nn.Modules (`trainables.ebm.Autoencoder`), Python loops over
classes, images, draws and layers; nothing of the fused bank, its blocks or its generators.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import distributions as D

# Paper Appendix D (PROTOCOLS sec. 1), plus `hidden` (every layer but the output): written out
# here, not imported, so a wrong table in the code under test cannot agree with itself.
REFERENCE_PLACEMENTS = {"full": (1, 2, 3, 4, 5, 6), "odd": (1, 3, 5), "even": (2, 4, 6), "enc": (1, 2, 3),
                        "dec": (4, 5, 6), "hidden": (1, 2, 3, 4, 5)}


def paper_law(distribution: str) -> D.Distribution:
    """The laws of Table 3 at the paper's parameters, as torch.distributions objects."""
    return {
        "gaussian": D.Normal(0.0, 1.0),
        "cauchy": D.Cauchy(0.0, 1.0),
        "uniform": D.Uniform(-2.0, 2.0),  # symmetric, width 4
        "chi": D.TransformedDistribution(D.Chi2(1.0), [D.transforms.PowerTransform(0.5)]),
        "lognormal": D.LogNormal(0.0, 1.0),
        "student_t": D.StudentT(2.0),
        "exponential": D.Exponential(1.0),
    }[distribution]


def energies(autoencoders: Sequence, x: torch.Tensor, placement: str, alpha: float, draws: int,
             noise: Callable[[int, int, int, int, torch.Size], torch.Tensor]) -> torch.Tensor:
    """E(x_b | y = c, z) for every class c, image b and draw d: a (C, B, draws) float64 tensor.

    noise(c, layer, b, d, shape) gives z for class c's layer (1-based) on image b in draw d."""
    layers_with_noise = REFERENCE_PLACEMENTS[placement] if alpha > 0 else ()
    out = torch.zeros(len(autoencoders), len(x), draws, dtype=torch.float64)
    with torch.no_grad():
        for c, ae in enumerate(autoencoders):
            layers = [*ae.encoder, *ae.decoder]
            for b in range(len(x)):
                image = x[b:b + 1]
                for d in range(draws):
                    h = image
                    for layer_index, (layer, act) in enumerate(zip(layers, ae.acts), start=1):
                        h = act(layer(h))
                        if layer_index in layers_with_noise:
                            h = h + alpha * noise(c, layer_index, b, d, h.shape[1:])
                    out[c, b, d] = float(((h - image) ** 2).sum())
    return out


def law_noise(distribution: str, seed: int) -> Callable:
    """Fresh iid draws of z from the paper's law, from the reference's own random stream."""
    law, gen = paper_law(distribution), torch.Generator().manual_seed(seed)

    def draw(c, layer, b, d, shape):
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed also queues a CUDA seeding call that
            # formats a stack trace each time, which dominated this reference's run time.
            torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))
            return law.sample(shape)

    return draw

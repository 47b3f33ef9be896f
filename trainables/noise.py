"""Noise laws: the seven laws of the EBM paper and seeded sampling from them, for any family.

Eq. 1 of the activation-noise paper: t = f(Wx + b) + alpha * z, with z drawn fresh for every
neuron, example and forward pass. The laws are the ones of its Fig. 5 / Table 3, *not*
standardised: alpha scales the raw variable, so e.g. lognormal noise has a positive mean.

`torch.distributions` defines each law (`law()`, used by the tests and for moments), but its
`sample()` only draws from the global RNG. NoiseTune needs a seeded `torch.Generator` on the
model's device (reproducible, and independent of whatever else uses the global RNG), so
`fill_` draws from the same laws through the generator-aware in-place samplers
(`normal_`, `cauchy_`, ...) and, for chi and Student-t, through exact transforms of normals
and a Marsaglia-Tsang gamma sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import distributions as D

from trainables.checks import ConfigError, check_choice, check_range

DISTRIBUTIONS = ("gaussian", "cauchy", "uniform", "chi", "lognormal", "student_t", "exponential")
SYMMETRIC = frozenset({"gaussian", "cauchy", "uniform", "student_t"})


@dataclass(frozen=True)
class NoiseParams:
    """Parameters of the seven laws (paper Table 3 defaults). Shared by train and test noise."""

    gaussian_mu: float = 0.0
    gaussian_sigma: float = 1.0
    cauchy_loc: float = 0.0
    cauchy_scale: float = 1.0
    uniform_width: float = 4.0  # symmetric U(-w/2, w/2)
    chi_k: float = 1.0
    lognormal_mu: float = 0.0
    lognormal_sigma: float = 1.0
    student_t_nu: float = 2.0
    exponential_rate: float = 1.0

    def __post_init__(self):
        for name in ("gaussian_mu", "cauchy_loc", "lognormal_mu"):
            check_range(name, getattr(self, name), -math.inf)
        for name in ("gaussian_sigma", "cauchy_scale", "uniform_width", "chi_k",
                     "lognormal_sigma", "student_t_nu", "exponential_rate"):
            check_range(name, getattr(self, name), 0.0, low_open=True)


def law(distribution: str, params: NoiseParams = NoiseParams()) -> D.Distribution:
    """The law of z as a torch.distributions object (for tests, moments and documentation)."""
    check_choice("distribution", distribution, DISTRIBUTIONS)
    p = params
    if distribution == "gaussian":
        return D.Normal(p.gaussian_mu, p.gaussian_sigma)
    if distribution == "cauchy":
        return D.Cauchy(p.cauchy_loc, p.cauchy_scale)
    if distribution == "uniform":
        return D.Uniform(-p.uniform_width / 2, p.uniform_width / 2)
    if distribution == "chi":  # chi = sqrt(chi-square)
        return D.TransformedDistribution(D.Chi2(p.chi_k), [D.transforms.PowerTransform(0.5)])
    if distribution == "lognormal":
        return D.LogNormal(p.lognormal_mu, p.lognormal_sigma)
    if distribution == "student_t":
        return D.StudentT(p.student_t_nu)
    return D.Exponential(p.exponential_rate)


def _standard_gamma(shape, concentration: float, generator, device) -> torch.Tensor:
    """Gamma(concentration, 1) by Marsaglia-Tsang (exact rejection), drawn from `generator`."""
    boost = concentration < 1.0  # Gamma(a) = Gamma(a + 1) * U^(1/a)
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    numel = math.prod(shape)
    out = torch.empty(numel, device=device)
    todo = torch.arange(numel, device=device)
    while todo.numel():
        m = todo.numel()
        x = torch.empty(m, device=device).normal_(generator=generator)
        u = torch.empty(m, device=device).uniform_(generator=generator)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.empty(numel, device=device).uniform_(generator=generator)
        out *= u.clamp_min(torch.finfo(out.dtype).tiny) ** (1.0 / concentration)
    return out.view(shape)


def fill_(out: torch.Tensor, distribution: str, params: NoiseParams, generator) -> torch.Tensor:
    """Overwrite `out` with iid draws of z from `generator` (on out's device), and return it."""
    p = params
    if distribution == "gaussian":
        return out.normal_(p.gaussian_mu, p.gaussian_sigma, generator=generator)
    if distribution == "cauchy":
        return out.cauchy_(p.cauchy_loc, p.cauchy_scale, generator=generator)
    if distribution == "uniform":
        return out.uniform_(-p.uniform_width / 2, p.uniform_width / 2, generator=generator)
    if distribution == "lognormal":
        return out.log_normal_(p.lognormal_mu, p.lognormal_sigma, generator=generator)
    if distribution == "exponential":
        return out.exponential_(p.exponential_rate, generator=generator)
    if distribution == "chi":  # chi_k = sqrt(2 * Gamma(k/2))
        g = _standard_gamma(out.shape, p.chi_k / 2, generator, out.device)
        return out.copy_(torch.sqrt(2 * g))
    if distribution == "student_t":  # t = N / sqrt(chi2_nu / nu), chi2_nu = 2 Gamma(nu/2)
        g = _standard_gamma(out.shape, p.student_t_nu / 2, generator, out.device)
        out.normal_(generator=generator)
        return out.div_(torch.sqrt(2 * g / p.student_t_nu))
    raise ConfigError(f"distribution={distribution!r} is not allowed; allowed: {', '.join(DISTRIBUTIONS)}")


def sample(shape, distribution: str, params: NoiseParams = NoiseParams(), generator=None,
           device="cpu") -> torch.Tensor:
    """A fresh tensor of iid draws of z."""
    return fill_(torch.empty(shape, device=device), distribution, params, generator)


def make_generator(seed: int, device) -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed` (a 63-bit key)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return g

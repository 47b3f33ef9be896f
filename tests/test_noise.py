"""The seven laws of z against scipy's, placements, seeding, and refusals of bad values."""

import math

import pytest
import torch
from scipy import stats

from trainables.checks import ConfigError
from trainables.ebm import PLACEMENTS, NoiseSpec
from trainables.noise import DISTRIBUTIONS, NoiseParams, law, make_generator, sample

# scipy's parametrisation of each law at the paper's defaults (Table 3 / PROTOCOLS).
SCIPY_LAWS = {
    "gaussian": stats.norm(0, 1),
    "cauchy": stats.cauchy(0, 1),
    "uniform": stats.uniform(-2, 4),
    "chi": stats.chi(1),
    "lognormal": stats.lognorm(1),
    "student_t": stats.t(2),
    "exponential": stats.expon(scale=1),
}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_samples_follow_their_law(distribution):
    z = sample((20_000,), distribution, NoiseParams(), make_generator(1234, "cpu"))
    assert stats.kstest(z.numpy(), SCIPY_LAWS[distribution].cdf).pvalue > 1e-3


@pytest.mark.parametrize("distribution,params,reference", [
    ("chi", NoiseParams(chi_k=3.5), stats.chi(3.5)),
    ("chi", NoiseParams(chi_k=0.4), stats.chi(0.4)),
    ("student_t", NoiseParams(student_t_nu=0.7), stats.t(0.7)),
    ("student_t", NoiseParams(student_t_nu=7.0), stats.t(7.0)),
    ("gaussian", NoiseParams(gaussian_mu=1.0, gaussian_sigma=0.5), stats.norm(1.0, 0.5)),
    ("uniform", NoiseParams(uniform_width=1.0), stats.uniform(-0.5, 1.0)),
    ("lognormal", NoiseParams(lognormal_sigma=0.25), stats.lognorm(0.25)),
    ("exponential", NoiseParams(exponential_rate=3.0), stats.expon(scale=1 / 3)),
    ("cauchy", NoiseParams(cauchy_scale=2.0), stats.cauchy(0, 2)),
])
def test_non_default_parameters_follow_their_law(distribution, params, reference):
    z = sample((20_000,), distribution, params, make_generator(7, "cpu"))
    assert stats.kstest(z.numpy(), reference.cdf).pvalue > 1e-3


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_torch_law_matches_scipy(distribution):
    """law() is the documented torch.distributions object of the same variable."""
    grid = torch.tensor([0.1, 0.5, 1.0, 1.7], dtype=torch.float64)
    ours = law(distribution).log_prob(grid).numpy()
    assert ours == pytest.approx(SCIPY_LAWS[distribution].logpdf(grid.numpy()), abs=1e-5)


def test_a_seeded_generator_reproduces_and_differs_by_seed():
    a = sample((1000,), "student_t", NoiseParams(), make_generator(3, "cpu"))
    b = sample((1000,), "student_t", NoiseParams(), make_generator(3, "cpu"))
    c = sample((1000,), "student_t", NoiseParams(), make_generator(4, "cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_rng_is_untouched():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sample((100,), "chi", NoiseParams(), make_generator(1, "cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_placements_cover_the_paper():
    assert PLACEMENTS == {"full": (1, 2, 3, 4, 5, 6), "odd": (1, 3, 5), "even": (2, 4, 6),
                          "enc": (1, 2, 3), "dec": (4, 5, 6), "hidden": (1, 2, 3, 4, 5)}
    assert NoiseSpec("gaussian", 0.5, "odd").layers == (1, 3, 5)
    assert NoiseSpec("gaussian", 0.0, "odd").layers == ()


@pytest.mark.parametrize("kwargs,message", [
    (dict(distribution="gauss"), r"distribution='gauss'.*did you mean 'gaussian'.*allowed: gaussian, cauchy"),
    (dict(placement="middle"), r"placement='middle'.*allowed: full, odd, even, enc, dec"),
    (dict(alpha=-0.1), r"alpha=-0.1 is out of range; allowed: \[0.0, inf\]"),
    (dict(alpha=math.nan), r"alpha=nan is out of range"),
    (dict(alpha="0.5"), r"alpha='0.5' is not a number"),
])
def test_bad_noise_spec_is_refused_with_field_and_choices(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NoiseSpec(**kwargs)


@pytest.mark.parametrize("field", ["gaussian_sigma", "cauchy_scale", "uniform_width", "chi_k",
                                   "lognormal_sigma", "student_t_nu", "exponential_rate"])
def test_non_positive_law_parameters_are_refused(field):
    with pytest.raises(ConfigError, match=rf"{field}=0.0 is out of range; allowed: \(0.0, inf\]"):
        NoiseParams(**{field: 0.0})

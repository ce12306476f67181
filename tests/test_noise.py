"""Loss weightings, sigma samplers and evaluation grids."""

import math

import numpy as np
import pytest
import torch

from mulde.network import EnergyMLP
from mulde.noise import (
    GaussianWeighting,
    ImportanceSampler,
    evaluation_levels,
    make_weighting,
    sample_log_uniform,
)
from mulde.score_matching import dsm_loss


def test_sigma2_weighting_values():
    weighting = make_weighting("sigma2")
    values = weighting(torch.tensor([0.33, 0.2, 1.0], dtype=torch.float64))
    assert values.tolist() == pytest.approx([0.1089, 0.04, 1.0])


def test_gaussian_weighting_values():
    weighting = make_weighting("gaussian")
    at_centre, at_low = weighting(torch.tensor([0.33, 0.2], dtype=torch.float64))
    assert at_centre.item() == pytest.approx(0.1089)
    assert at_low.item() == pytest.approx(0.04 * math.exp(-0.0169 / 0.01125))
    assert at_low.item() == pytest.approx(0.00891, abs=1e-5)


def test_gaussian_weighting_peaks_near_sigma0():
    sigma = torch.linspace(1e-3, 1.0, 100_001, dtype=torch.float64)
    weighting = GaussianWeighting(sigma0=0.33, s=0.075)
    peak = sigma[weighting(sigma).argmax()].item()
    # The sigma^2 factor moves the peak slightly above sigma0: the maximum of
    # sigma^2 exp(-(sigma - sigma0)^2 / 2s^2) solves sigma^2 - sigma0 sigma - 2s^2 = 0.
    expected = (0.33 + math.sqrt(0.33**2 + 8 * 0.075**2)) / 2
    assert peak == pytest.approx(expected, abs=1e-4)
    assert 0.33 < peak < 0.33 + 0.075 / 2


def test_weighting_custom_callable_is_used():
    def weighting(sigma):
        return torch.ones_like(sigma)

    assert make_weighting(weighting) is weighting


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weighting": "cosine"}, "Unknown weighting 'cosine'"),
        ({"weighting": "gaussian", "s": 0.0}, "s=0.0 must be > 0"),
        ({"weighting": "gaussian", "s": -1.0}, "s=-1.0 must be > 0"),
        ({"weighting": "gaussian", "sigma0": -0.1}, "sigma0=-0.1"),
    ],
)
def test_weighting_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_weighting(**kwargs)


def test_log_uniform_draws_cover_range_evenly_in_log():
    generator = torch.Generator().manual_seed(0)
    sigma = sample_log_uniform(200_000, 1e-3, 1.0, generator).double()
    assert sigma.min() >= 1e-3
    assert sigma.max() <= 1.0
    # Each decade holds a third of the draws.
    counts = np.histogram(np.log10(sigma.numpy()), bins=[-3, -2, -1, 0])[0]
    assert counts / sigma.numel() == pytest.approx([1 / 3] * 3, abs=0.005)


def test_importance_sampler_ratio_is_p_over_q():
    weighting = make_weighting("gaussian")
    sampler = ImportanceSampler(weighting, 1e-3, 1.0)
    generator = torch.Generator().manual_seed(0)
    sigma, ratio = sampler.sample(100_000, generator)
    # E_q[p/q] = 1 for any proposal that covers the range.
    assert ratio.double().mean().item() == pytest.approx(1.0, abs=0.03)
    # Draws concentrate where sigma * lambda is large: most fall in [0.2, 0.5].
    inside = ((sigma > 0.2) & (sigma < 0.5)).double().mean().item()
    assert inside > 0.8


def _loss_draws(importance: bool, n: int = 40_000):
    """Per-sample losses of a fixed random network under one sigma estimator."""
    torch.manual_seed(0)
    net = EnergyMLP(4, (32, 32))
    net.reset_parameters(torch.Generator().manual_seed(0))
    data = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2 if importance else 3)
    weighting = make_weighting("gaussian")
    if importance:
        sigma, ratio = ImportanceSampler(weighting, 1e-3, 1.0).sample(n, generator)
        weight = ratio * weighting(sigma)
    else:
        sigma = sample_log_uniform(n, 1e-3, 1.0, generator)
        weight = weighting(sigma)
    parts = dsm_loss(net, data, sigma, weight, beta=0.0, generator=generator)
    return parts.per_sample.detach().double()


def test_importance_sampling_same_mean_lower_variance():
    plain = _loss_draws(importance=False)
    weighted = _loss_draws(importance=True)
    standard_error = math.sqrt(
        plain.var().item() / plain.numel() + weighted.var().item() / weighted.numel()
    )
    assert abs(plain.mean().item() - weighted.mean().item()) < 3 * standard_error
    assert weighted.var().item() < 0.5 * plain.var().item()


def test_evaluation_levels_grids():
    linear = evaluation_levels("linear", 16, 1e-3, 1.0)
    log = evaluation_levels("log", 4, 1e-3, 1.0)
    explicit = evaluation_levels([0.2, 0.3], 16, 1e-3, 1.0)
    assert linear.shape == (16,)
    assert linear[0] == pytest.approx(1e-3)
    assert linear[-1] == pytest.approx(1.0)
    assert np.diff(linear) == pytest.approx(np.full(15, 0.999 / 15))
    assert log == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert explicit.tolist() == [0.2, 0.3]


@pytest.mark.parametrize("grid", ["cubic", [], [0.1, -0.2], [float("nan")]])
def test_evaluation_levels_bad_grid_raises(grid):
    with pytest.raises(ValueError, match="level grid|positive finite"):
        evaluation_levels(grid, 16, 1e-3, 1.0)

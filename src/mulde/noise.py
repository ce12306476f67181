"""Noise levels: loss weightings, training distributions of sigma, evaluation grids.

Symbols
-------
x        clean feature vector, standardised per feature (zero mean, unit variance
         on the training data), so sigma is in units of per-feature standard
         deviations
sigma    noise level, the standard deviation of the Gaussian blur
x_noisy  x + sigma * eps with eps ~ N(0, I)
f        the energy network, f(x, sigma) ~ -log q_sigma(x)
p        the density of the training draws of sigma: log-uniform on
         [sigma_low, sigma_high], p(sigma) = 1 / (sigma * log(sigma_high / sigma_low))
lambda   loss weighting lambda(sigma) of the denoising score matching term
q        proposal density of sigma when importance sampling is on
L        number of evaluation levels
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

Weighting = Callable[[torch.Tensor], torch.Tensor]

WEIGHTINGS = ("sigma2", "gaussian")
GRIDS = ("linear", "log")


def check_sigma_range(sigma_low: float, sigma_high: float) -> None:
    """Raise ValueError unless 0 < sigma_low < sigma_high, both finite."""
    if not (math.isfinite(sigma_low) and math.isfinite(sigma_high)):
        raise ValueError(
            f"sigma_low={sigma_low} and sigma_high={sigma_high} must be finite numbers."
        )
    if sigma_low <= 0:
        raise ValueError(
            f"sigma_low={sigma_low} must be > 0: sigma is drawn log-uniformly, "
            "so its range cannot include 0. Use a small positive value such as 1e-3."
        )
    if sigma_low >= sigma_high:
        raise ValueError(
            f"sigma_low={sigma_low} must be smaller than sigma_high={sigma_high}."
        )


def sigma2_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = sigma^2, the weighting of MULDE as published."""
    return sigma**2


@dataclass(frozen=True)
class GaussianWeighting:
    """lambda(sigma) = sigma^2 * exp(-(sigma - sigma0)^2 / (2 s^2)).

    Concentrates training on noise levels near ``sigma0``.
    """

    sigma0: float = 0.33
    s: float = 0.075

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma0) or self.sigma0 <= 0:
            raise ValueError(f"sigma0={self.sigma0} must be a positive finite number.")
        if not math.isfinite(self.s) or self.s <= 0:
            raise ValueError(
                f"s={self.s} must be > 0: it is the width of the Gaussian weighting "
                "around sigma0 (the default is 0.075)."
            )

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**2 * torch.exp(-((sigma - self.sigma0) ** 2) / (2 * self.s**2))


def make_weighting(
    weighting: str | Weighting, sigma0: float = 0.33, s: float = 0.075
) -> Weighting:
    """Return lambda(sigma) for a weighting name or a user callable.

    Parameters
    ----------
    weighting : {"sigma2", "gaussian"} or callable
        A callable maps a tensor of sigmas to a tensor of non-negative weights of
        the same shape.
    sigma0, s : float
        Centre and width of the ``"gaussian"`` weighting; ignored otherwise.
    """
    if callable(weighting):
        return weighting
    if weighting == "sigma2":
        return sigma2_weighting
    if weighting == "gaussian":
        return GaussianWeighting(sigma0, s)
    raise ValueError(
        f"Unknown weighting {weighting!r}. Use one of {', '.join(WEIGHTINGS)}, "
        "or pass a callable lambda(sigma)."
    )


def check_weighting(
    weighting: Weighting, sigma_low: float, sigma_high: float, name: str
) -> None:
    """Raise ValueError unless ``weighting`` can train on [sigma_low, sigma_high].

    It is evaluated in float32, as in training, on 1,025 levels spaced evenly in
    log(sigma). It must return one finite, non-negative weight per level, and not
    0 at all of them. ``name`` describes the weighting in the message.
    """
    sigma = torch.exp(
        torch.linspace(math.log(sigma_low), math.log(sigma_high), 1025)
    ).float()
    weights = torch.as_tensor(weighting(sigma))
    if weights.shape != sigma.shape:
        raise ValueError(
            f"The weighting {name} returned shape {tuple(weights.shape)} for "
            f"{sigma.shape[0]} sigmas; it must return one weight per sigma."
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"The weighting {name} returned negative or non-finite weights on "
            f"[{sigma_low}, {sigma_high}]; weights must be finite and >= 0."
        )
    if not (weights > 0).any():
        raise ValueError(
            f"The weighting {name} is 0 at every sigma in [{sigma_low}, "
            f"{sigma_high}], so the score-matching loss would be 0; for the "
            "gaussian weighting, move sigma0 inside the range or widen s."
        )


def sample_log_uniform(
    n: int, sigma_low: float, sigma_high: float, generator: torch.Generator
) -> torch.Tensor:
    """Draw n noise levels log-uniformly from [sigma_low, sigma_high], shape (n,)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    log_low, log_high = math.log(sigma_low), math.log(sigma_high)
    return torch.exp(log_low + u * (log_high - log_low)).float()


class ImportanceSampler:
    """Draws sigma from a proposal q close to p(sigma) * lambda(sigma).

    The proposal lives on u = log(sigma): a histogram of p * lambda over ``n_bins``
    equal bins of u, mixed with a share ``floor`` of the log-uniform density so
    that q > 0 wherever p > 0. Each draw carries the weight
    p(sigma) * lambda(sigma) / q(sigma), so the mean of ``weight * loss(sigma)``
    over draws from q has the same expectation as the mean of
    ``lambda(sigma) * loss(sigma)`` over log-uniform draws (the plain estimator).
    The density of the histogram is exact, so the estimator is unbiased.
    """

    def __init__(
        self,
        weighting: Weighting,
        sigma_low: float,
        sigma_high: float,
        n_bins: int = 256,
        floor: float = 0.05,
    ) -> None:
        check_sigma_range(sigma_low, sigma_high)
        if not 0 < floor <= 1:
            raise ValueError(f"floor={floor} must be in (0, 1].")
        self.weighting = weighting
        self.log_low = math.log(sigma_low)
        self.log_high = math.log(sigma_high)
        self.n_bins = n_bins
        self.floor = floor
        width = self.log_high - self.log_low

        # p * lambda per bin, integrated with the midpoint rule on a fine sub-grid.
        fine = torch.linspace(self.log_low, self.log_high, n_bins * 16 + 1)
        mid = (fine[:-1] + fine[1:]) / 2
        mass = weighting(torch.exp(mid).double()).double().clamp_min(0)
        mass = mass.reshape(n_bins, 16).sum(dim=1)
        if not torch.isfinite(mass).all() or mass.sum() <= 0:
            raise ValueError(
                "The weighting is zero or not finite everywhere on "
                f"[{sigma_low}, {sigma_high}]; importance sampling needs a weighting "
                "with positive mass in the sigma range."
            )
        bin_prob = (1 - floor) * mass / mass.sum() + floor / n_bins
        self.bin_prob = bin_prob  # (n_bins,), sums to 1
        self.bin_width = width / n_bins
        # Density of u under q on each bin, and of u under p (uniform in u).
        self.q_density = bin_prob / self.bin_width
        self.p_density = 1.0 / width

    def sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sigma of shape (n,) and the importance ratio p/q of shape (n,)."""
        bins = torch.multinomial(
            self.bin_prob, n, replacement=True, generator=generator
        )
        offset = torch.rand(n, generator=generator, dtype=torch.float64)
        u = self.log_low + (bins.double() + offset) * self.bin_width
        ratio = self.p_density / self.q_density[bins]
        return torch.exp(u).float(), ratio.float()


def evaluation_levels(
    grid: str | list[float] | tuple[float, ...] | np.ndarray,
    n_levels: int,
    sigma_low: float,
    sigma_high: float,
) -> np.ndarray:
    """Noise levels at which f is evaluated, float64 array of shape (L,).

    ``"linear"`` spaces L levels evenly between sigma_low and sigma_high (what the
    reference MULDE code evaluates), ``"log"`` spaces them evenly in log(sigma);
    an explicit sequence is used as given. Training always draws sigma
    log-uniformly, whatever the evaluation grid.
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(
                f"Unknown level grid {grid!r}. Use 'linear', 'log' or a list of "
                "positive noise levels."
            )
        if n_levels < 1:
            raise ValueError(f"n_levels={n_levels} must be at least 1.")
        if grid == "linear":
            return np.linspace(sigma_low, sigma_high, n_levels)
        return np.geomspace(sigma_low, sigma_high, n_levels)
    levels = np.asarray(grid, dtype=np.float64).ravel()
    if levels.size == 0 or not np.all(np.isfinite(levels)) or np.any(levels <= 0):
        raise ValueError(
            f"Explicit evaluation levels {levels.tolist()} must be a non-empty list "
            "of positive finite noise levels."
        )
    return levels

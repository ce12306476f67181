"""A plain implementation of the MULDE maths, the yardstick for the speed-ups.

This is a re-implementation written for these benchmarks in the style of typical
research code, not the public reference MULDE code. It computes the same
quantities as mulde with the same network (it loads an EnergyMLP's weights) but
takes the direct route everywhere:

- training: one forward on the noisy batch, the input gradient through autograd's
  double backward, and a second forward on the clean batch for the regulariser;
- scoring: a Python loop over the L levels, each a full forward over the batch at
  one sigma, and the score norms always computed with autograd, also when only
  the energies are needed;
- float32 only.

Per sample and level the loss is
lambda(sigma) * ||grad_x f(x + sigma eps, sigma) - eps / sigma||^2
+ beta * f(x, sigma)^2, with lambda(sigma) = sigma^2 and sigma drawn
log-uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class BaselineEnergyNet(nn.Module):
    """MLP f(x, sigma) on the concatenation [x, log sigma], GELU activations."""

    def __init__(self, n_features: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = n_features + 1
        for width in hidden_sizes:
            layers += [nn.Linear(width_in, width), nn.GELU()]
            width_in = width
        layers.append(nn.Linear(width_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x, torch.log(sigma).view(-1, 1)], dim=1)
        return self.net(inputs).view(-1)


def from_energy_mlp(energy_mlp: nn.Module, n_features: int) -> BaselineEnergyNet:
    """Build a BaselineEnergyNet with the weights of a GELU mulde EnergyMLP."""
    linears = [m for m in energy_mlp.modules() if isinstance(m, nn.Linear)]
    hidden_sizes = [linear.out_features for linear in linears[:-1]]
    baseline = BaselineEnergyNet(n_features, hidden_sizes)
    baseline_linears = [m for m in baseline.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for target, source in zip(baseline_linears, linears, strict=True):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    return baseline


def train_step(
    net: BaselineEnergyNet,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    sigma_low: float = 1e-3,
    sigma_high: float = 1.0,
    beta: float = 0.1,
) -> float:
    """Run one Adam step on the batch x and return the loss."""
    n = x.shape[0]
    log_sigma = torch.empty(n).uniform_(math.log(sigma_low), math.log(sigma_high))
    sigma = torch.exp(log_sigma)
    eps = torch.randn_like(x)
    x_noisy = x + sigma.view(-1, 1) * eps
    x_noisy.requires_grad_(True)

    energy = net(x_noisy, sigma)
    grad = torch.autograd.grad(energy.sum(), x_noisy, create_graph=True)[0]
    target = eps / sigma.view(-1, 1)
    score_matching = sigma**2 * ((grad - target) ** 2).sum(dim=1)
    regulariser = beta * net(x, sigma) ** 2
    loss = (score_matching + regulariser).mean()

    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def score(
    net: BaselineEnergyNet,
    x: torch.Tensor,
    levels: Sequence[float],
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Energies and score norms ||sigma grad_x f||^2 of shape (n, L) each."""
    energies = np.zeros((x.shape[0], len(levels)), dtype=np.float32)
    norms = np.zeros((x.shape[0], len(levels)), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        for index, level in enumerate(levels):
            inputs = chunk.clone().requires_grad_(True)
            sigma = torch.full((chunk.shape[0],), float(level))
            energy = net(inputs, sigma)
            grad = torch.autograd.grad(energy.sum(), inputs)[0]
            stop = start + chunk.shape[0]
            energies[start:stop, index] = energy.detach().numpy()
            norms[start:stop, index] = ((level * grad) ** 2).sum(dim=1).numpy()
    return energies, norms

"""Multiscale denoising score matching loss and multiscale evaluation of f."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mulde.network import EnergyMLP


@dataclass
class LossParts:
    """Batch means of the loss and of its two terms (0-d tensors, not synced).

    ``per_sample`` holds the loss of each sample, shape (n,).
    """

    total: torch.Tensor
    score_matching: torch.Tensor
    regulariser: torch.Tensor
    per_sample: torch.Tensor


def dsm_loss(
    net: EnergyMLP,
    x: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    generator: torch.Generator | None,
) -> LossParts:
    """Denoising score matching loss with the clean-data regulariser.

    Per sample: lambda * ||grad f(x_noisy) - (x_noisy - x) / sigma^2||^2
    + beta * f(x, sigma)^2.

    Parameters
    ----------
    x : tensor of shape (n, d)
        Clean standardised features.
    sigma : tensor of shape (n,)
        Noise level of each sample.
    weight : tensor of shape (n,)
        lambda(sigma), times the importance ratio p/q when sigma comes from a
        proposal q.
    beta : float
        Weight of the regulariser on the energies of clean data at the same sigma.

    The gradient is taken with respect to x_noisy only. With eps ~ N(0, I) the
    target (x_noisy - x) / sigma^2 equals eps / sigma, so the term is computed as
    weight / sigma^2 * ||sigma * grad - eps||^2, which avoids dividing by small
    sigma twice.
    """
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    sigma_col = sigma.unsqueeze(1)  # (n, 1)
    x_noisy = x + sigma_col * eps

    if net.supports_explicit_gradient:
        # Same values as the autograd branch. x_noisy needs no gradient here, so the
        # backward pass skips the product that would return dLoss/dx_noisy.
        pre_activation = net.first_layer(x_noisy, sigma)
        energy_noisy, delta = net.energy_and_gradient_from_first_layer(pre_activation)
        grad = net.project_input_gradient(delta)
    else:
        x_noisy.requires_grad_(True)
        energy_noisy = net(x_noisy, sigma)
        (grad,) = torch.autograd.grad(energy_noisy.sum(), x_noisy, create_graph=True)
    residual = (sigma_col * grad.float() - eps).square().sum(dim=1)  # (n,)
    score_matching_each = weight / sigma.square() * residual  # (n,)

    if beta > 0:
        regulariser_each = beta * net(x, sigma).float().square()  # (n,)
    else:
        regulariser_each = torch.zeros_like(score_matching_each)
    per_sample = score_matching_each + regulariser_each
    return LossParts(
        per_sample.mean(),
        score_matching_each.mean(),
        regulariser_each.mean(),
        per_sample,
    )


def multiscale_energies(
    net: EnergyMLP,
    x: torch.Tensor,
    levels: torch.Tensor,
    *,
    score_norms: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Energies f(x, sigma_l) for all L levels in one batched pass.

    The sample part of the first layer, W_x x + b, is computed once per sample and
    shared by the L levels. With ``score_norms`` the backward pass runs by hand in
    inference mode where the network allows it, and with autograd otherwise.

    Parameters
    ----------
    x : tensor of shape (n, d)
    levels : tensor of shape (L,)
    score_norms : bool
        Also return ||sigma_l * grad_x f(x, sigma_l)||^2. Energies alone run
        without building any autograd graph.

    Returns
    -------
    energies : tensor of shape (n, L), float32
    norms : tensor of shape (n, L), float32, or None
    """
    n = x.shape[0]
    n_levels = levels.shape[0]

    if not score_norms:
        with torch.inference_mode():
            pre_activation = first_layer_all_levels(net, x, levels)
            energies = net.energy_from_first_layer(pre_activation).float()
        return energies.reshape(n, n_levels), None

    if net.supports_explicit_gradient:
        with torch.inference_mode():
            pre_activation = first_layer_all_levels(net, x, levels)
            energies, delta = net.energy_and_gradient_from_first_layer(pre_activation)
            grad = net.project_input_gradient(delta)
    else:
        with torch.no_grad():
            pre_activation = first_layer_all_levels(net, x, levels)
        with torch.enable_grad():
            pre_activation.requires_grad_(True)
            energies = net.energy_from_first_layer(pre_activation)
            # Gradients with respect to z1 only: no weight gradients are built.
            (delta,) = torch.autograd.grad(energies.sum(), pre_activation)
        with torch.no_grad():
            grad = net.project_input_gradient(delta)
    squared = grad.float().square().sum(dim=1).reshape(n, n_levels)
    norms = squared * levels.float().square()
    return energies.detach().float().reshape(n, n_levels), norms


def first_layer_all_levels(
    net: EnergyMLP, x: torch.Tensor, levels: torch.Tensor
) -> torch.Tensor:
    """First-layer pre-activations of every (sample, level) pair, (n * L, h1).

    Row i * L + l belongs to sample i at level l.
    """
    shared = net.feature_projection(x)  # (n, h1)
    per_level = net.sigma_projection(levels).to(shared.dtype)  # (L, h1)
    pairs = shared.unsqueeze(1) + per_level.unsqueeze(0)  # (n, L, h1)
    return pairs.reshape(-1, shared.shape[1])

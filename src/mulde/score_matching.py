"""Multiscale denoising score matching loss and multiscale evaluation of f."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mulde.network import EnergyMLP, activation_backward, activation_curvature


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


# Width of the widest hidden layer from which training takes the written-out
# backward. On 2 cores with AMX in bfloat16 it trained 6% faster than autograd's
# at 4096 x 4096 and 9% at 1024 x 1024, but 8% slower at 512 x 512. At that size
# oneDNN runs the transposed weight-gradient products at full speed, and the
# feature-major elementwise passes cost more.
WRITTEN_OUT_MIN_WIDTH = 1024


def select_backward(net: EnergyMLP):
    """Return the loss-and-backward function that MULDE's training uses for ``net``.

    :func:`dsm_loss_backward` for networks it supports whose widest hidden layer
    has at least ``WRITTEN_OUT_MIN_WIDTH`` units, else
    :func:`autograd_dsm_loss_backward`. Both take the same arguments and give
    the same gradients.
    """
    linears, _ = net.linears_and_activations()
    widest = max(linear.out_features for linear in linears[:-1])
    if explicit_training_supported(net) and widest >= WRITTEN_OUT_MIN_WIDTH:
        return dsm_loss_backward
    return autograd_dsm_loss_backward


def dsm_loss_backward(
    net: EnergyMLP,
    x: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    generator: torch.Generator | None,
) -> LossParts:
    """:func:`dsm_loss`, with its parameter gradients accumulated into ``.grad``.

    Takes the same arguments and draws the same noise as :func:`dsm_loss`, and
    has the effect of ``dsm_loss(...).total.backward()``. Where
    :func:`explicit_training_supported` holds, the whole backward pass, through
    the input gradient and the regulariser, is written out; otherwise autograd
    runs it. The returned tensors carry no graph.
    """
    if not explicit_training_supported(net):
        return autograd_dsm_loss_backward(net, x, sigma, weight, beta, generator)
    device_type = x.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else x.dtype
    )
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        return _explicit_dsm_backward(net, x, sigma, weight, beta, eps, dtype)


def autograd_dsm_loss_backward(
    net: EnergyMLP,
    x: torch.Tensor,
    sigma: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    generator: torch.Generator | None,
) -> LossParts:
    """:func:`dsm_loss_backward` with autograd's backward pass over :func:`dsm_loss`."""
    parts = dsm_loss(net, x, sigma, weight, beta, generator)
    parts.total.backward()
    return LossParts(
        parts.total.detach(),
        parts.score_matching.detach(),
        parts.regulariser.detach(),
        parts.per_sample.detach(),
    )


def explicit_training_supported(net: EnergyMLP) -> bool:
    """True when :func:`dsm_loss_backward` can run its written-out backward pass.

    That needs :attr:`EnergyMLP.supports_explicit_gradient` and no tanh GELU.
    """
    if not net.supports_explicit_gradient:
        return False
    return all(
        getattr(module, "approximate", "none") == "none"
        for module in net.linears_and_activations()[1]
    )


def _explicit_dsm_backward(net, x, sigma, weight, beta, eps, dtype) -> LossParts:
    """Compute the loss and its gradients with every product written out.

    Activations are kept feature-major, (width, columns), so that every weight
    gradient is a product whose left operand is row-major: with oneDNN in
    bfloat16 that runs about twice as fast as autograd's weight gradients,
    whose left operand is a transposed view. Columns 0..n-1 hold the noisy
    samples and, when beta > 0, columns n..2n-1 the clean ones, so that both
    share each forward product.
    """
    linears, activations = net.linears_and_activations()
    weights = [linear.weight.to(dtype) for linear in linears]
    biases = [linear.bias.to(dtype).unsqueeze(1) for linear in linears]
    # Row-major copies of the hidden weights' transposes, for the same reason.
    transposed = [weight.t() for weight in weights]
    for k in range(1, len(weights) - 1):
        transposed[k] = transposed[k].contiguous()
    wide = torch.promote_types(dtype, torch.float32)  # for the loss and sums
    n, d = x.shape
    n_hidden = len(activations)
    sigma_col = sigma.unsqueeze(1)
    x_noisy = x + sigma_col * eps
    inputs = torch.cat([x_noisy, x]) if beta > 0 else x_noisy
    code = torch.log(sigma).repeat(inputs.shape[0] // n).unsqueeze(1)
    ones = torch.ones_like(code)
    # [x, log sigma, 1]: the first layer's bias is part of its product, which
    # saves writing the bias into the (h_1, m) output first.
    u = torch.cat([inputs, code.to(inputs.dtype), ones], dim=1).to(dtype)
    first = torch.cat([weights[0], biases[0]], dim=1)  # (h_1, d + 2)

    # Forward pass: z_k = W_k a_{k-1} + b_k and a_k = act(z_k).
    pre_activations, hiddens = [], []
    hidden = u.t()
    for k in range(n_hidden):
        if k == 0:
            pre_activations.append(first @ hidden)
        else:
            pre_activations.append(torch.addmm(biases[k], weights[k], hidden))
        hidden = activations[k](pre_activations[-1])
        hiddens.append(hidden)
    energy = torch.addmm(biases[-1], weights[-1], hidden)[0]  # (m,)

    # Input gradient of the noisy columns: delta_k = act'(z_k) * s_k, where
    # s_k = W_{k+1}^T delta_{k+1} and, for the last layer, the output weight.
    output_column = weights[-1].t()  # (h_last, 1)
    deltas = [None] * n_hidden
    s_values = [None] * n_hidden
    s = output_expanded = output_column.expand(-1, n).contiguous()
    for k in range(n_hidden - 1, -1, -1):
        s_values[k] = s
        deltas[k] = activation_backward(activations[k], s, pre_activations[k][:, :n])
        s = transposed[k] @ deltas[k]
    s_values[-1] = output_column  # the same values, broadcast
    grad = s[:d].t().to(wide)  # (n, d): the log(sigma) row is dropped

    residual = sigma_col * grad - eps
    scale = weight / sigma.square()
    score_matching_each = scale * residual.square().sum(dim=1)
    if beta > 0:
        clean_energy = energy[n:].to(wide)
        regulariser_each = beta * clean_energy.square()
    else:
        regulariser_each = torch.zeros_like(score_matching_each)
    per_sample = score_matching_each + regulariser_each

    # Backward through the input gradient, from the mean of the loss. Each
    # delta_k = act'(z_k) * s_k passes its adjoint to s_k and, through
    # act''(z_k), to z_k; s_k = W_{k+1}^T delta_{k+1} passes it to W_{k+1}.
    grad_bar = ((2 / n) * scale * sigma).unsqueeze(1) * residual  # (n, d)
    grad_bar = grad_bar.t().to(dtype)  # (d, n)
    first_weight_bar = deltas[0] @ grad_bar.t()  # (h_1, d)
    delta_bar = weights[0][:, :d] @ grad_bar  # (h_1, n)
    weight_bars = [None] * n_hidden
    curvature_terms = []
    for k in range(n_hidden):
        z_noisy = pre_activations[k][:, :n]
        s_bar = activation_backward(activations[k], delta_bar, z_noisy)
        term = activation_curvature(activations[k], z_noisy)
        curvature_terms.append(term.mul_(delta_bar).mul_(s_values[k]))
        if k + 1 < n_hidden:
            weight_bars[k + 1] = deltas[k + 1] @ s_bar.t()
            delta_bar = weights[k + 1] @ s_bar
        else:
            output_weight_bar = s_bar.sum(dim=1).to(wide)

    # Backward through the forward pass of all columns. The energies enter the
    # loss through the regulariser only, so their adjoint is 0 on noisy columns.
    energy_bar = torch.zeros(1, u.shape[0], dtype=dtype, device=x.device)
    if beta > 0:
        energy_bar[0, n:] = (2 * beta / n) * clean_energy
    output_weight_bar += (energy_bar @ hiddens[-1].t()).to(wide)[0]
    output_bias_bar = energy_bar.to(wide).sum(dim=1)
    bias_bars = [None] * n_hidden
    hidden_bar = None  # the adjoint of a_k, set for k below the last layer
    for k in range(n_hidden - 1, -1, -1):
        if k == n_hidden - 1:
            # The adjoint of a_last is w_out^T times the energies' adjoint.
            z_bar = torch.empty_like(pre_activations[k])
            z_bar[:, :n] = curvature_terms[k]
            if beta > 0:
                clean = activation_backward(
                    activations[k], output_expanded, pre_activations[k][:, n:]
                )
                torch.mul(clean, energy_bar[:, n:], out=z_bar[:, n:])
        else:
            z_bar = activation_backward(activations[k], hidden_bar, pre_activations[k])
            z_bar[:, :n] += curvature_terms[k]
        if k == 0:
            first_bar = (z_bar @ u).to(wide)  # (h_1, d + 2)
            first_bar[:, :d] += first_weight_bar.to(wide)
            weight_bars[0], bias_bars[0] = first_bar[:, :-1], first_bar[:, -1]
            break
        bias_bars[k] = z_bar.sum(dim=1).to(wide)
        weight_bars[k].addmm_(z_bar, hiddens[k - 1].t())
        hidden_bar = transposed[k] @ z_bar

    gradients = [*zip(weight_bars, bias_bars, strict=True)]
    gradients.append((output_weight_bar.unsqueeze(0), output_bias_bar))
    for linear, (weight_bar, bias_bar) in zip(linears, gradients, strict=True):
        for parameter, value in ((linear.weight, weight_bar), (linear.bias, bias_bar)):
            # Contiguous: fused Adam reads .grad with the layout of the parameter.
            value = value.to(parameter.dtype).contiguous()
            if parameter.grad is None:
                parameter.grad = value
            else:
                parameter.grad += value
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

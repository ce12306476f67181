"""The energy network f(x, sigma) and the choice of device and precision."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus}


class EnergyMLP(nn.Module):
    """MLP energy f(x, sigma) ~ -log q_sigma(x); higher energy means less likely.

    The input is the feature vector concatenated with log(sigma), so that levels
    spread over three decades get evenly spaced codes.

    Parameters
    ----------
    n_features : int
        Dimension d of the feature vectors.
    hidden_sizes : sequence of int
        Width of each hidden layer; the reference MULDE network uses two of 4096.
    activation : {"gelu", "silu", "softplus"}
        Smooth activations only: the loss differentiates f twice.
    layer_norm : bool
        Apply LayerNorm after each hidden linear layer.
    dropout : float
        Dropout probability after each hidden activation.
    """

    def __init__(
        self,
        n_features: int,
        hidden_sizes: Sequence[int] = (4096, 4096),
        activation: str = "gelu",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}."
            )
        layers: list[nn.Module] = []
        width_in = n_features + 1
        for width in hidden_sizes:
            layers.append(nn.Linear(width_in, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, 1))
        self.layers = nn.Sequential(*layers)
        # Low-precision copies of the weights for inference; see
        # :meth:`inference_weights`. A plain attribute, so not in the state_dict.
        self._weight_copies: dict[int, tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise like nn.Linear's default, drawing from ``generator``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(
                    module.weight, a=math.sqrt(5), generator=generator
                )
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Energies of shape (n,) for x of shape (n, d) and sigma of shape (n,)."""
        return self.energy_from_first_layer(self.first_layer(x, sigma))

    def first_layer(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activation z1 = W [x, log sigma] + b, shape (n, h1)."""
        code = torch.log(sigma).unsqueeze(1).to(x.dtype)  # (n, 1)
        return self.layers[0](torch.cat([x, code], dim=1))

    # The first layer sees [x, log sigma], so its pre-activation splits into
    # W_x x + b, which depends on the sample only, and w_sigma * log(sigma), which
    # depends on the level only. Multiscale scoring computes W_x x once per sample
    # instead of once per sample and level; this pays when d is large.

    def feature_projection(self, x: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activation without the sigma term, W_x x + b, (n, h1)."""
        first = self.layers[0]
        return F.linear(x, first.weight[:, : x.shape[1]], first.bias)

    def sigma_projection(self, sigma: torch.Tensor) -> torch.Tensor:
        """Sigma term of the first-layer pre-activation, w_sigma * log(sigma).

        Shape (m, h1) for sigma of shape (m,).
        """
        weight = self.layers[0].weight[:, -1]
        return torch.log(sigma).unsqueeze(1).to(weight.dtype) * weight

    def project_input_gradient(self, delta: torch.Tensor) -> torch.Tensor:
        """Input gradient W_x^T delta, shape (m, d), from delta = df/dz1 (m, h1).

        The product runs with the whole weight and drops the log(sigma) column of
        the result: in training, a slice of the weight would cost a zero-filled
        weight-sized gradient in the backward pass.
        """
        return (delta @ self.layers[0].weight)[:, :-1]

    def energy_from_first_layer(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """Energies of shape (m,) from first-layer pre-activations of shape (m, h1).

        Without autograd and under bfloat16 autocast, a plain stack of layers runs
        with cached bfloat16 weights (see :meth:`inference_weights`). On the CPU,
        each hidden product then runs with its GELU as one oneDNN call.
        """
        if self.low_precision_inference_dtype() is None:
            return self.layers[1:](pre_activation).squeeze(1)
        linears, activations = self.linears_and_activations()
        hidden = activations[0](pre_activation)
        for linear, activation in zip(linears[1:-1], activations[1:], strict=True):
            hidden = self.inference_linear(linear, hidden, activation)
        return self.inference_linear(linears[-1], hidden).squeeze(1)

    def linears_and_activations(self) -> tuple[list[nn.Linear], list[nn.Module]]:
        """Return the linear layers and the activations of :attr:`layers`, in order."""
        linears = [m for m in self.layers if isinstance(m, nn.Linear)]
        activations = [
            m for m in self.layers if isinstance(m, tuple(ACTIVATIONS.values()))
        ]
        return linears, activations

    def low_precision_inference_dtype(self) -> torch.dtype | None:
        """Autocast dtype when inference may use :meth:`inference_weights`, else None.

        That is: autograd off, autocast on for the device of the weights with a
        dtype other than float32, and a plain stack of layers.
        """
        if torch.is_grad_enabled() or not self.supports_explicit_gradient:
            return None
        device_type = self.layers[0].weight.device.type
        if not torch.is_autocast_enabled(device_type):
            return None
        dtype = torch.get_autocast_dtype(device_type)
        return None if dtype == torch.float32 else dtype

    def inference_weights(
        self, linear: nn.Linear, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of ``linear`` cast to ``dtype``, cast once per update.

        Autocast casts the float32 weights again in every autocast region. At
        the reference size (4096 x 4096) on a 2-core CPU with AMX, that took 11
        ms of a 136 ms energies call for 4,096 (sample, level) pairs. The copies
        are kept until the parameters change. The cache key contains their
        storage addresses and their version counters, which every in-place
        update (optimiser steps, ``load_state_dict``) increments.
        """
        weight, bias = linear.weight, linear.bias
        key = (
            dtype,
            weight.device,
            weight.data_ptr(),
            weight._version,
            bias.data_ptr(),
            bias._version,
        )
        cached = self._weight_copies.get(id(linear))
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, weight.detach().to(dtype), bias.detach().to(dtype))
            self._weight_copies[id(linear)] = cached
        return cached[1], cached[2]

    def inference_linear(
        self,
        linear: nn.Linear,
        hidden: torch.Tensor,
        activation: nn.Module | None = None,
    ) -> torch.Tensor:
        """``activation(linear(hidden))`` with the weights of :meth:`inference_weights`.

        Only for use where :meth:`low_precision_inference_dtype` is not None.
        """
        dtype = self.low_precision_inference_dtype()
        weight, bias = self.inference_weights(linear, dtype)
        hidden = hidden.to(dtype)
        if (
            isinstance(activation, nn.GELU)
            and activation.approximate == "none"
            and fused_linear_gelu_available(hidden.device)
        ):
            # oneDNN applies the GELU to each output tile while it is in cache,
            # which saves a read and a write of the (m, h) output.
            return torch.ops.mkldnn._linear_pointwise(
                hidden, weight, bias, "gelu", [], "none"
            )
        output = F.linear(hidden, weight, bias)
        return output if activation is None else activation(output)

    @property
    def supports_explicit_gradient(self) -> bool:
        """True when :meth:`energy_and_gradient_from_first_layer` can run.

        It needs a plain stack of linear layers and GELU, SiLU or Softplus
        activations. LayerNorm, and dropout while training, take the autograd path.
        """
        for module in self.layers:
            if isinstance(module, nn.Dropout):
                if self.training and module.p > 0:
                    return False
            elif not isinstance(module, (nn.Linear, *ACTIVATIONS.values())):
                return False
        return True

    def energy_and_gradient_from_first_layer(
        self, pre_activation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (m,) and df/dz1 (m, h1) from first-layer pre-activations z1.

        The backward pass through the MLP is written out, so the gradient is an
        ordinary function of the weights: autograd differentiates it once in
        training (no double backward) and nothing is recorded in inference mode.
        Requires :attr:`supports_explicit_gradient`.
        """
        linears, activations = self.linears_and_activations()
        low_precision = self.low_precision_inference_dtype()
        if low_precision is None:
            weights = [(linear.weight, linear.bias) for linear in linears]
        else:
            weights = [self.inference_weights(m, low_precision) for m in linears]
            weights[0] = (linears[0].weight, linears[0].bias)

        pre_activations = [pre_activation]
        hidden = activations[0](pre_activation)
        for (weight, bias), activation in zip(
            weights[1:-1], activations[1:], strict=True
        ):
            pre_activations.append(F.linear(hidden, weight, bias))
            hidden = activation(pre_activations[-1])
        energy = F.linear(hidden, *weights[-1]).squeeze(1)

        # df/dh for the last hidden layer is the output weight row, for every sample.
        # A contiguous copy, because the activation kernels are not vectorised on
        # a stride-0 (expanded) input.
        weight = weights[-1][0].to(hidden.dtype)
        grad = weight.expand(hidden.shape[0], -1).contiguous()
        for index in range(len(activations) - 1, -1, -1):
            z = pre_activations[index]
            grad = activation_backward(activations[index], grad.to(z.dtype), z)
            if index > 0:
                grad = grad @ weights[index][0]
        return energy, grad


def activation_backward(
    module: nn.Module, grad: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """grad * activation'(z), differentiable again, for the modules in ACTIVATIONS.

    GELU and Softplus use the ATen kernels of autograd's own backward, which have
    derivatives. ATen's silu_backward has none (torch 2.13), so SiLU's is written
    out as s * (1 + z * (1 - s)) with s = sigmoid(z).
    """
    if isinstance(module, nn.GELU):
        if module.approximate == "none" and torch.is_grad_enabled():
            return GeluBackward.apply(grad, z)
        return torch.ops.aten.gelu_backward(grad, z, approximate=module.approximate)
    if isinstance(module, nn.SiLU):
        if not torch.is_grad_enabled():
            return torch.ops.aten.silu_backward(grad, z)
        s = torch.sigmoid(z)
        return grad * s * (1 + z * (1 - s))
    if isinstance(module, nn.Softplus):
        return torch.ops.aten.softplus_backward(grad, z, module.beta, module.threshold)
    raise TypeError(f"No explicit derivative for activation {module!r}.")


# GELU''(z) = phi(z) * (2 - z^2), phi the standard normal density; with
# u = -z^2 / 2 that is 2 / sqrt(2 pi) * exp(u) * (1 + u).
_GELU_SECOND_DERIVATIVE_SCALE = 2 / math.sqrt(2 * math.pi)


class GeluBackward(torch.autograd.Function):
    """grad * GELU'(z) for the exact GELU, with a short backward pass.

    The forward pass is ATen's gelu_backward kernel. Autograd's own derivative of
    that kernel (gelu_double_backward, torch 2.13) runs ten elementwise passes
    over the (n, h) tensors in the profiler. The backward here computes the same
    derivatives in eight: seven for the derivative with respect to z and one
    gelu_backward call for the incoming gradient.
    """

    @staticmethod
    def forward(ctx, grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad, z)
        return torch.ops.aten.gelu_backward(grad, z)

    @staticmethod
    @once_differentiable
    def backward(ctx, output_grad: torch.Tensor):
        grad, z = ctx.saved_tensors
        grad_of_grad = grad_of_z = None
        if ctx.needs_input_grad[0]:
            grad_of_grad = torch.ops.aten.gelu_backward(output_grad, z)
        if ctx.needs_input_grad[1]:
            u = z.square().mul_(-0.5)
            grad_of_z = torch.exp(u)
            grad_of_z.addcmul_(grad_of_z, u)  # exp(u) * (1 + u)
            grad_of_z.mul_(grad).mul_(output_grad)
            grad_of_z.mul_(_GELU_SECOND_DERIVATIVE_SCALE)
        return grad_of_grad, grad_of_z


@cache
def fused_linear_gelu_available(device: torch.device) -> bool:
    """True when oneDNN can run a linear layer with its GELU on ``device``.

    The op is torch.ops.mkldnn._linear_pointwise, a private op that inductor
    uses for its CPU fusions (torch 2.13). It is checked once on a small input.
    """
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        hidden = torch.ones(2, 3, dtype=torch.bfloat16)
        weight = torch.ones(4, 3, dtype=torch.bfloat16)
        bias = torch.zeros(4, dtype=torch.bfloat16)
        output = torch.ops.mkldnn._linear_pointwise(
            hidden, weight, bias, "gelu", [], "none"
        )
    except (AttributeError, RuntimeError, NotImplementedError) as error:
        logger.debug("fused linear and GELU not available: %s", error)
        return False
    expected = F.gelu(F.linear(hidden, weight, bias))
    return output.shape == expected.shape and bool(torch.allclose(output, expected))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"Invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device={device!r} is not supported; use 'auto', 'cpu', 'cuda' or "
            "'cuda:N'."
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return resolved


@cache
def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Linux /proc/cpuinfo flag amx_bf16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype for the matrix products: bfloat16 or float32.

    ``"auto"`` takes bfloat16 only where hardware runs it fast: CUDA devices that
    support it and CPUs with AMX. On other CPUs bfloat16 matrix products are
    emulated and far slower than float32. Master weights stay float32 always.
    """
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(
            f"Unknown precision {precision!r}; use 'auto', 'float32' or 'bfloat16'."
        )
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """Return a torch dtype's name without the module, such as ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def autocast(
    device: torch.device, dtype: torch.dtype
) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype``, or a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def activation_curvature(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Return activation''(z) for the exact GELU, SiLU and Softplus.

    GELU: phi(z) (2 - z^2) with phi the standard normal density. SiLU:
    s (1 - s) (2 + z (1 - 2 s)) with s = sigmoid(z). Softplus with slope b:
    b s (1 - s) with s = sigmoid(b z), and 0 where b z exceeds the threshold,
    where torch's Softplus is the identity.
    """
    if isinstance(module, nn.GELU) and module.approximate == "none":
        u = z.square().mul_(-0.5)
        curvature = torch.exp(u)
        curvature.addcmul_(curvature, u)  # exp(u) * (1 + u)
        return curvature.mul_(_GELU_SECOND_DERIVATIVE_SCALE)
    if isinstance(module, nn.SiLU):
        s = torch.sigmoid(z)
        spread = s * (1 - s)
        return spread * (2 + z * (1 - 2 * s))
    if isinstance(module, nn.Softplus):
        scaled = z * module.beta
        s = torch.sigmoid(scaled)
        curvature = s * (1 - s) * module.beta
        return curvature.masked_fill_(scaled > module.threshold, 0)
    raise TypeError(f"No explicit second derivative for activation {module!r}.")

"""The energy network f(x, sigma) and the choice of device and precision."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn

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
        code = torch.log(sigma).unsqueeze(1).to(x.dtype)  # (n, 1)
        return self.layers(torch.cat([x, code], dim=1)).squeeze(1)


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


def autocast(
    device: torch.device, dtype: torch.dtype
) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype``, or a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

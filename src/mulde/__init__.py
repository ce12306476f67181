"""mulde: video anomaly detection by multiscale denoising score matching."""

__version__ = "0.1.0"

from mulde.detector import MULDE  # noqa: E402

__all__ = ["MULDE", "__version__"]

"""Turn the L-vector of multiscale energies into one anomaly score."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

AGGREGATIONS = ("gmm", "max", "mean", "median", "level")


class LevelAggregator:
    """Anomaly score from multiscale energies; higher means more anomalous.

    The L-vectors are first standardised with the training mean and standard
    deviation of each level. Energies at neighbouring levels are almost
    collinear, so ``"gmm"`` fits its full-covariance mixture in float64 on the
    standardised vectors with ``reg_covar`` added to each covariance diagonal;
    its score is the negative log-likelihood. ``"max"``, ``"mean"`` and
    ``"median"`` reduce the standardised levels; ``"level"`` takes one of them.

    Parameters
    ----------
    method : {"gmm", "max", "mean", "median", "level"}
    n_components : int
        Mixture components for ``"gmm"``.
    reg_covar : float
        Added to the diagonal of each mixture covariance, in units of the
        standardised levels.
    level_index : int or None
        Level used by ``"level"``.
    random_state : int
        Seed of the mixture's initialisation.
    """

    def __init__(
        self,
        method: str = "gmm",
        n_components: int = 1,
        reg_covar: float = 1e-3,
        level_index: int | None = None,
        random_state: int = 0,
    ) -> None:
        if method not in AGGREGATIONS:
            raise ValueError(
                f"Unknown aggregation {method!r}; use one of {', '.join(AGGREGATIONS)}."
            )
        if method == "level" and level_index is None:
            raise ValueError("aggregation='level' needs level_index, the level to use.")
        self.method = method
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.level_index = level_index
        self.random_state = random_state

    def fit(self, levels: np.ndarray) -> LevelAggregator:
        """Fit on training multiscale energies of shape (n, L)."""
        levels = np.asarray(levels, dtype=np.float64)
        n_levels = levels.shape[1]
        if (
            self.level_index is not None
            and not -n_levels <= self.level_index < n_levels
        ):
            raise ValueError(
                f"level_index={self.level_index} is out of range for {n_levels} levels."
            )
        self.mean_ = levels.mean(axis=0)
        scale = levels.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        if self.method == "gmm":
            n_components = min(self.n_components, levels.shape[0])
            self.mixture_ = GaussianMixture(
                n_components=n_components,
                covariance_type="full",
                reg_covar=self.reg_covar,
                random_state=self.random_state,
                n_init=1,
                max_iter=200,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.mixture_.fit(self._standardise(levels))
        return self

    def _standardise(self, levels: np.ndarray) -> np.ndarray:
        return (np.asarray(levels, dtype=np.float64) - self.mean_) / self.scale_

    def score(self, levels: np.ndarray) -> np.ndarray:
        """Anomaly scores of shape (n,) for multiscale energies of shape (n, L)."""
        z = self._standardise(levels)
        if self.method == "gmm":
            return -self.mixture_.score_samples(z)
        if self.method == "max":
            return z.max(axis=1)
        if self.method == "mean":
            return z.mean(axis=1)
        if self.method == "median":
            return np.median(z, axis=1)
        return z[:, self.level_index]

    def state(self) -> dict[str, np.ndarray]:
        """Fitted arrays, for saving."""
        arrays = {"level_mean": self.mean_, "level_scale": self.scale_}
        if self.method == "gmm":
            arrays |= {
                "gmm_weights": self.mixture_.weights_,
                "gmm_means": self.mixture_.means_,
                "gmm_covariances": self.mixture_.covariances_,
                "gmm_precisions_cholesky": self.mixture_.precisions_cholesky_,
            }
        return arrays

    def load_state(
        self, arrays: dict[str, np.ndarray], width: int | None = None
    ) -> LevelAggregator:
        """Restore the arrays returned by :meth:`state`.

        Raises ValueError when the arrays are not those that this method saves,
        or, given ``width`` (the length of a level vector), do not have it.
        """
        expected = {"level_mean", "level_scale"}
        if self.method == "gmm":
            expected |= {
                "gmm_weights",
                "gmm_means",
                "gmm_covariances",
                "gmm_precisions_cholesky",
            }
        if set(arrays) != expected:
            raise ValueError(
                f"arrays {sorted(arrays)} are not those that aggregation "
                f"{self.method!r} saves, {sorted(expected)}"
            )
        for key in ("level_mean", "level_scale"):
            shape = np.shape(arrays[key])
            if (width is not None and shape != (width,)) or not np.isfinite(
                arrays[key]
            ).all():
                raise ValueError(
                    f"{key} has shape {shape} or non-finite values, expected "
                    f"{width} finite values"
                )
        if self.method == "gmm" and width is not None:
            if np.ndim(arrays["gmm_means"]) != 2 or (
                np.shape(arrays["gmm_means"])[1] != width
            ):
                raise ValueError(
                    f"gmm_means has shape {np.shape(arrays['gmm_means'])}, expected "
                    f"(n_components, {width})"
                )
        self.mean_ = arrays["level_mean"]
        self.scale_ = arrays["level_scale"]
        if self.method == "gmm":
            weights = arrays["gmm_weights"]
            mixture = GaussianMixture(
                n_components=weights.shape[0],
                covariance_type="full",
                reg_covar=self.reg_covar,
                random_state=self.random_state,
            )
            mixture.weights_ = weights
            mixture.means_ = arrays["gmm_means"]
            mixture.covariances_ = arrays["gmm_covariances"]
            mixture.precisions_cholesky_ = arrays["gmm_precisions_cholesky"]
            mixture.precisions_ = np.einsum(
                "kij,klj->kil",
                mixture.precisions_cholesky_,
                mixture.precisions_cholesky_,
            )
            mixture.converged_ = True
            mixture.n_iter_ = 0
            mixture.lower_bound_ = np.nan
            mixture.n_features_in_ = mixture.means_.shape[1]
            self.mixture_ = mixture
        return self

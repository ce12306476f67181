"""The MULDE anomaly detector with the scikit-learn / PyOD interface."""

from __future__ import annotations

import logging
import math
import numbers
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from scipy import special
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import validate_data
from tqdm.auto import tqdm

from mulde.aggregate import LevelAggregator
from mulde.network import (
    ACTIVATIONS,
    EnergyMLP,
    autocast,
    resolve_device,
    resolve_precision,
)
from mulde.noise import (
    ImportanceSampler,
    Weighting,
    check_sigma_range,
    check_weighting,
    evaluation_levels,
    make_weighting,
    sample_log_uniform,
)
from mulde.score_matching import dsm_loss, multiscale_energies, select_backward
from mulde.validation import check_value_type

logger = logging.getLogger(__name__)

# Upper bound of n_levels for the built-in grids; scoring costs one network pass
# per sample and level.
MAX_LEVELS = 1024
# Weights between hidden layers beyond which training cannot fit in common
# memory: 2**30 float32 weights take 4 GiB, and Adam keeps gradients and two
# moments besides.
MAX_HIDDEN_WEIGHTS = 2**30
# Standardised inputs are cut to this many training standard deviations, so that
# a far outlier cannot overflow to inf and NaN in the network. Training rows lie
# within a few; inputs of 1e4 gave finite energies and score norms in the tests.
STANDARDISED_LIMIT = 1e4
# Scoring on a CPU runs fastest when one layer's activations for a pass hold about
# this many elements (16 MB in bfloat16). On 2 cores of a Xeon with AMX, energies of
# a 4096 x 4096 network ran 34% faster, and score norms 43%, with 2,048 pairs per
# pass than with 16,384 (benchmarks/detector_speed.py, docs/benchmarks.md).
CPU_ACTIVATION_ELEMENTS = 2**23


def score_pairs_per_pass(
    score_batch_size: int, hidden_sizes, device: torch.device
) -> int:
    """Sample-level pairs per scoring pass: ``score_batch_size``, capped on CPUs.

    On CPUs the cap keeps one layer's activations near CPU_ACTIVATION_ELEMENTS.
    """
    if device.type != "cpu":
        return score_batch_size
    widest = max(int(width) for width in hidden_sizes)
    return min(score_batch_size, max(1, CPU_ACTIVATION_ELEMENTS // widest))


def check_features(X, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return X as a float array of shape (n, d), or raise ValueError naming it.

    float32 and float64 input keeps its dtype, so the standardisation can
    subtract the mean in float64 before the detector computes in float32. Any
    other numeric input becomes float64.
    """
    if scipy.sparse.issparse(X):
        raise ValueError(
            f"{name} is a sparse matrix; the detector needs dense rows, so pass "
            f"{name}.toarray()."
        )
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a numeric array of shape (n_samples, n_features); "
            f"reading it as an array failed: {error}"
        ) from error
    # The messages contain the phrases that scikit-learn's estimator checks
    # look for: "Complex data not supported", "Reshape your data" and others.
    if np.iscomplexobj(array):
        raise ValueError(
            f"Complex data not supported: {name} has complex values; pass real "
            "features, such as the real and imaginary parts as separate columns."
        )
    if array.dtype not in (np.float32, np.float64):
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            # A TypeError stays one, for values such as dicts that are no numbers.
            raise type(error)(
                f"{name} must be a numeric array of shape (n_samples, n_features); "
                f"converting it to float failed: {error}"
            ) from error
    if array.ndim == 1 and n_features is not None:
        raise ValueError(
            f"{name} has shape {array.shape}; expected (n_samples, {n_features}). "
            "Reshape your data with X.reshape(1, -1) for a single sample."
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} has shape {array.shape}; expected a 2-D array "
            "(n_samples, n_features)."
        )
    if array.shape[1] == 0:
        raise ValueError(
            f"{name} has 0 feature(s) (shape={array.shape}) while a minimum of 1 is "
            "required."
        )
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite values, first in rows "
            f"{rows[:5].tolist()}; remove or impute them before fitting or scoring."
        )
    largest = np.abs(array).max(initial=0.0)
    if largest > np.finfo(np.float32).max:
        raise ValueError(
            f"{name} contains values as large as {largest:.3g}, beyond float32, in "
            "which the detector computes; rescale the features before fitting."
        )
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(
            f"{name} has {array.shape[1]} features, but MULDE is expecting "
            f"{n_features} features as input; score features built the same way as "
            "the training ones."
        )
    return array


def make_adam(parameters, learning_rate: float) -> torch.optim.Adam:
    """Build Adam with the reference code's betas (0.5, 0.9) as torch's fused kernel.

    The fused kernel updates each tensor in one pass, where the default foreach
    implementation makes several passes over the parameters and both moments.
    """
    return torch.optim.Adam(parameters, lr=learning_rate, betas=(0.5, 0.9), fused=True)


class MULDE(OutlierMixin, BaseEstimator):
    """Multiscale log-density estimation by denoising score matching.

    A network f(x, sigma) is trained to approximate -log q_sigma(x), the negative
    log-density of the standardised training features blurred by Gaussian noise
    of level sigma, by minimising over sigma ~ log-uniform[sigma_low, sigma_high]
    and eps ~ N(0, I)

        lambda(sigma) * ||grad f(x + sigma eps, sigma) - eps / sigma||^2
        + beta * f(x, sigma)^2.

    Features are standardised with the training mean and standard deviation, so
    sigma is in units of per-feature standard deviations. At scoring time f is
    evaluated at ``n_levels`` noise levels and the resulting L-vector is turned
    into one score by ``aggregation``.

    Sign conventions: :meth:`score_samples` is higher for more normal samples,
    :meth:`decision_function` is higher for more anomalous ones (PyOD), and
    :meth:`predict` returns 1 for anomalies and 0 for normal samples.

    Parameters
    ----------
    hidden_sizes : sequence of int, default=(4096, 4096)
        Widths of the hidden layers of f.
    activation : {"gelu", "silu", "softplus"}, default="gelu"
    layer_norm : bool, default=False
    dropout : float, default=0.0
    weighting : {"sigma2", "gaussian"} or callable, default="sigma2"
        Loss weighting lambda(sigma). ``"sigma2"`` is sigma^2 (MULDE as
        published); ``"gaussian"`` is sigma^2 * exp(-(sigma - sigma0)^2 / (2 s^2)).
        A callable maps a tensor of sigmas to weights; such a detector cannot be
        saved.
    sigma0 : float, default=0.33
        Centre of the ``"gaussian"`` weighting, in standard deviations.
    s : float, default=0.075
        Width of the ``"gaussian"`` weighting.
    importance_sampling : bool, default=False
        Draw sigma from a proposal close to p(sigma) * lambda(sigma) and weight
        each sample by p * lambda / q, instead of drawing log-uniformly and
        weighting by lambda. Same expected loss, lower variance for weightings
        that are nearly zero over most of the range.
    sigma_low, sigma_high : float, default=1e-3, 1.0
        Range of the training noise levels (log-uniform).
    beta : float, default=0.1
        Weight of the regulariser f(x, sigma)^2 on clean data.
    n_levels : int, default=16
        Number L of evaluation levels when ``level_grid`` is a name.
    level_grid : {"linear", "log"} or sequence of float, default="linear"
        Evaluation levels: evenly spaced in sigma (as the reference code
        evaluates), evenly spaced in log(sigma), or explicit.
    aggregation : {"gmm", "max", "mean", "median", "level"}, default="gmm"
        ``"gmm"``: negative log-likelihood under a full-covariance Gaussian
        mixture fitted on the standardised training L-vectors. The others reduce
        the standardised levels; ``"level"`` uses ``level_index``.
    n_components : int, default=1
        Mixture components for ``"gmm"``.
    reg_covar : float, default=1e-3
        Regularisation added to the mixture covariances (standardised units).
    level_index : int or None, default=None
        Level used when ``aggregation="level"``.
    use_score_norms : bool, default=False
        Append ||sigma grad f||^2 at each level to the L-vector that is
        aggregated (2L values per sample).
    epochs : int, default=100
        Passes over the training data; each has ceil(n / batch_size) steps.
    batch_size : int, default=2048
    learning_rate : float, default=1e-4
        Adam learning rate; Adam's betas are (0.5, 0.9) as in the reference.
    validation_fraction : float, default=0.0
        Share of the (normal) training rows held out; their loss is logged.
    contamination : float, default=0.1
        Expected share of anomalies in the training data; sets ``threshold_``.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Matrix-product precision; ``"auto"`` takes bfloat16 on CUDA and on CPUs
        with AMX, float32 elsewhere. Weights are always kept in float32.
    score_batch_size : int, default=16384
        Sample-level pairs per forward pass at scoring time. On CPUs at most
        2**23 / (widest hidden layer) pairs run at once, 2,048 for 4096 units.
    random_state : int or None, default=None
        Seed of every random draw (initialisation, batches, sigma, noise, split,
        mixture). None draws a fresh seed.
    verbose : int, default=0
        0 silent, 1 one log line per epoch, 2 also a progress bar.

    Attributes
    ----------
    mean_, scale_ : ndarray of float64, shape (n_features,)
        Training standardisation, applied in float64.
    feature_names_in_ : ndarray of str, shape (n_features,)
        Column names of a DataFrame passed to :meth:`fit`, if it had them.
    levels_ : ndarray of shape (L,)
        Evaluation noise levels.
    network_ : EnergyMLP
    aggregator_ : LevelAggregator
    decision_scores_ : ndarray of shape (n_train,)
        Anomaly scores of the training rows used for fitting.
    threshold_ : float
        ``decision_function`` value above which :meth:`predict` returns 1.
    history_ : list of dict
        Per-epoch loss parts, validation loss and throughput.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (4096, 4096),
        activation: str = "gelu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        weighting: str | Weighting = "sigma2",
        sigma0: float = 0.33,
        s: float = 0.075,
        importance_sampling: bool = False,
        sigma_low: float = 1e-3,
        sigma_high: float = 1.0,
        beta: float = 0.1,
        n_levels: int = 16,
        level_grid: str | Sequence[float] = "linear",
        aggregation: str = "gmm",
        n_components: int = 1,
        reg_covar: float = 1e-3,
        level_index: int | None = None,
        use_score_norms: bool = False,
        epochs: int = 100,
        batch_size: int = 2048,
        learning_rate: float = 1e-4,
        validation_fraction: float = 0.0,
        contamination: float = 0.1,
        device: str = "auto",
        precision: str = "auto",
        score_batch_size: int = 16384,
        random_state: int | None = None,
        verbose: int = 0,
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.weighting = weighting
        self.sigma0 = sigma0
        self.s = s
        self.importance_sampling = importance_sampling
        self.sigma_low = sigma_low
        self.sigma_high = sigma_high
        self.beta = beta
        self.n_levels = n_levels
        self.level_grid = level_grid
        self.aggregation = aggregation
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.level_index = level_index
        self.use_score_norms = use_score_norms
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.contamination = contamination
        self.device = device
        self.precision = precision
        self.score_batch_size = score_batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        self._check_param_types()
        check_sigma_range(float(self.sigma_low), float(self.sigma_high))
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(
                f"beta={self.beta} must be >= 0; it weights the regulariser "
                "f(x, sigma)^2 (the reference suggests 0.1)."
            )
        # Checked for every weighting, so that config.json never records NaN.
        for name in ("sigma0", "s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(
                    f"{name}={value} must be a positive finite number; it sets "
                    "the gaussian weighting."
                )
        # Raises for an unknown name or an invalid sigma0 or s.
        weighting = make_weighting(self.weighting, self.sigma0, self.s)
        if self.weighting == "gaussian":
            name = f"gaussian(sigma0={self.sigma0}, s={self.s})"
        else:
            name = repr(self.weighting)
        check_weighting(weighting, float(self.sigma_low), float(self.sigma_high), name)
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination={self.contamination} must be in (0, 0.5].")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} must be in [0, 1)."
            )
        for name in ("epochs", "batch_size", "n_components", "score_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        widths = self.hidden_sizes
        if (
            not isinstance(widths, (list, tuple))
            or not widths
            or not all(
                isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1
                for w in widths
            )
        ):
            raise ValueError(
                f"hidden_sizes={widths!r} must be a non-empty list of positive "
                "integer widths, such as [512, 512]."
            )
        # The input layer's size depends on the data, so only the weights after
        # the first hidden layer (output layer included) are counted here.
        weights = sum(
            int(a) * int(b) for a, b in zip(widths, widths[1:], strict=False)
        ) + sum(int(w) for w in widths)
        if weights > MAX_HIDDEN_WEIGHTS:
            raise ValueError(
                f"hidden_sizes={list(widths)!r} need {weights:.3g} weights between "
                f"hidden layers, more than {MAX_HIDDEN_WEIGHTS:.3g}; with Adam's "
                "state that is over 16 GB. Use widths such as [4096, 4096] (the "
                "reference's) or smaller."
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1).")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(
                f"learning_rate={self.learning_rate} must be finite and > 0."
            )
        if not (self.reg_covar > 0 and math.isfinite(self.reg_covar)):
            raise ValueError(f"reg_covar={self.reg_covar} must be finite and > 0.")
        if isinstance(self.level_grid, str) and self.n_levels > MAX_LEVELS:
            raise ValueError(
                f"n_levels={self.n_levels} is more than {MAX_LEVELS}; each level is "
                "one more network pass per sample."
            )
        if self.random_state is not None and (
            not isinstance(self.random_state, numbers.Integral)
            or isinstance(self.random_state, bool)
            or not 0 <= self.random_state < 2**32
        ):
            raise ValueError(
                f"random_state={self.random_state!r} must be None or an integer in "
                "[0, 2**32)."
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; use one of "
                f"{sorted(ACTIVATIONS)}."
            )
        # These raise ValueError naming the bad setting, before any training.
        levels = evaluation_levels(
            self.level_grid, self.n_levels, self.sigma_low, self.sigma_high
        )
        LevelAggregator(
            self.aggregation, self.n_components, self.reg_covar, self.level_index
        )
        if self.aggregation == "level" and not (
            isinstance(self.level_index, numbers.Integral)
            and 0 <= self.level_index < len(levels)
        ):
            raise ValueError(
                f"level_index={self.level_index!r} must be an integer in "
                f"[0, {len(levels)}), one of the evaluation levels."
            )
        resolve_precision(self.precision, torch.device("cpu"))
        resolve_device(self.device)

    def _check_param_types(self) -> None:
        """Name a parameter whose default is a number or flag but whose value is not.

        Parameters read from JSON may arrive as strings such as ``"16"``.
        """
        for name, default in type(self)().get_params().items():
            value = getattr(self, name)
            # None is valid only where it is the default, as for level_index.
            if name == "random_state" or (value is None and default is None):
                continue
            if isinstance(default, (bool, int, float)):
                check_value_type(name, value, type(default), advice=None)

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.default_rng().integers(2**31))
        return int(self.random_state)

    # --------------------------------------------------------------------- fit

    def fit(self, X, y=None) -> MULDE:
        """Fit on normal training features X of shape (n_samples, n_features).

        ``y`` is ignored: no labels are used anywhere in fitting.
        """
        self._check_params()
        # Records feature_names_in_ for a DataFrame, as scikit-learn estimators do.
        # It is set again at the end, so that scoring the training rows as an
        # array below raises no feature-name warning.
        validate_data(self, X, reset=True, skip_check_array=True)
        feature_names = self.__dict__.pop("feature_names_in_", None)
        X = check_features(X)
        if X.shape[0] < 2:
            raise ValueError(
                f"Found array with {X.shape[0]} sample(s) while a minimum of 2 is "
                "required: fitting needs at least 2 training rows."
            )
        seed = self._seed()
        self.seed_ = seed
        self.n_features_in_ = X.shape[1]
        self.device_ = resolve_device(self.device)
        self.compute_dtype_ = resolve_precision(self.precision, self.device_)
        self.levels_ = evaluation_levels(
            self.level_grid, self.n_levels, self.sigma_low, self.sigma_high
        )

        split_rng = np.random.default_rng(seed)
        order = split_rng.permutation(X.shape[0])
        n_val = int(round(self.validation_fraction * X.shape[0]))
        if n_val and X.shape[0] - n_val < 2:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves fewer than 2 "
                f"of {X.shape[0]} rows for training; lower it."
            )
        X_train, X_val = X[np.sort(order[n_val:])], X[np.sort(order[:n_val])]

        # Statistics and standardisation run in float64, so a large common
        # offset (timestamps, for example) is removed before the float32 network
        # receives the rows. A float32 variance also overflows above about 1e19.
        mean = X_train.mean(axis=0, dtype=np.float64)
        scale = X_train.std(axis=0, dtype=np.float64)
        # Squares of values below about 1e-154 underflow to 0, so columns of zero
        # spread get it again after scaling by their largest magnitude. Only those
        # columns are copied, since X_train may fill most of the memory.
        flat = np.flatnonzero(scale == 0)
        if flat.size:
            columns = X_train[:, flat].astype(np.float64)
            magnitude = np.abs(columns).max(axis=0)
            tiny = magnitude > 0
            scale[flat[tiny]] = (columns[:, tiny] / magnitude[tiny]).std(
                axis=0
            ) * magnitude[tiny]
        self.mean_ = mean
        # A feature whose spread is below the rounding of its mean in the input's
        # dtype (or below that dtype's smallest normal number) is constant:
        # dividing by its spread would only amplify rounding. Any larger spread,
        # however small in absolute terms, is scaled to 1.
        precision = np.finfo(X.dtype)
        constant = scale <= np.maximum(precision.tiny, 8 * precision.eps * np.abs(mean))
        self.scale_ = np.where(constant, 1.0, scale)
        if constant.any():
            columns = np.flatnonzero(constant)
            warnings.warn(
                f"{columns.size} of {X.shape[1]} feature columns are constant in the "
                f"training rows (columns {columns[:10].tolist()}), so they cannot "
                "influence any score. Check the feature scale, or drop them.",
                stacklevel=2,
            )

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network_ = EnergyMLP(
                self.n_features_in_,
                tuple(int(w) for w in self.hidden_sizes),
                self.activation,
                self.layer_norm,
                self.dropout,
            )
            generator = torch.Generator().manual_seed(seed)
            self.network_.reset_parameters(generator)
            self.network_.to(self.device_)
            self.history_ = self._train(
                self._to_tensor(X_train), self._to_tensor(X_val), seed
            )

        if self.verbose >= 1:
            # Scoring the training rows at every level takes a while on large
            # sets, with no other line in between.
            logger.info(
                "scoring %d training rows at %d levels for the %s aggregation",
                X_train.shape[0],
                len(self.levels_),
                self.aggregation,
            )
        self.aggregator_ = LevelAggregator(
            self.aggregation,
            self.n_components,
            self.reg_covar,
            self.level_index,
            random_state=seed,
        ).fit(self._level_vectors(X_train))
        self.decision_scores_ = self.decision_function(X_train)
        self.threshold_ = float(
            np.quantile(self.decision_scores_, 1 - self.contamination)
        )
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        if feature_names is not None:
            self.feature_names_in_ = feature_names
        return self

    def _to_tensor(self, X: np.ndarray) -> torch.Tensor:
        """Standardise rows in float64 in blocks and return them as float32.

        Standardised values are cut to +-STANDARDISED_LIMIT, so that a row far
        outside the training data stays finite in the network and scores as
        the extreme outlier it is, instead of turning into inf and NaN.
        """
        out = np.empty(X.shape, dtype=np.float32)
        block = max(1, (1 << 22) // max(X.shape[1], 1))
        for start in range(0, X.shape[0], block):
            rows = X[start : start + block].astype(np.float64)
            out[start : start + block] = np.clip(
                (rows - self.mean_) / self.scale_,
                -STANDARDISED_LIMIT,
                STANDARDISED_LIMIT,
            )
        return torch.as_tensor(out, device=self.device_)

    def _train(self, x_train: torch.Tensor, x_val: torch.Tensor, seed: int) -> list:
        device = self.device_
        weighting = make_weighting(self.weighting, self.sigma0, self.s)
        sampler = (
            ImportanceSampler(weighting, self.sigma_low, self.sigma_high)
            if self.importance_sampling
            else None
        )
        # CPU generator for sigma and batch order, device generator for noise.
        cpu_gen = torch.Generator().manual_seed(seed + 1)
        noise_gen = torch.Generator(device=device).manual_seed(seed + 2)
        optimiser = make_adam(self.network_.parameters(), self.learning_rate)

        def draw_sigma(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            if sampler is None:
                sigma = sample_log_uniform(n, self.sigma_low, self.sigma_high, cpu_gen)
                weight = weighting(sigma)
            else:
                sigma, ratio = sampler.sample(n, cpu_gen)
                weight = ratio * weighting(sigma)
            return sigma.to(device), weight.float().to(device)

        n = x_train.shape[0]
        batch_size = min(self.batch_size, n)
        steps = math.ceil(n / batch_size)
        history = []
        bar = tqdm(
            total=self.epochs * steps,
            desc="training",
            unit="step",
            # None: only on a terminal, see mulde.features.cache.
            disable=True if self.verbose < 2 else None,
            leave=False,
        )
        self.network_.train()
        loss_backward = select_backward(self.network_)
        for epoch in range(1, self.epochs + 1):
            start = time.perf_counter()
            order = torch.randperm(n, generator=cpu_gen).to(device)
            sums = torch.zeros(3, device=device)
            for step in range(steps):
                index = order[step * batch_size : (step + 1) * batch_size]
                sigma, weight = draw_sigma(index.shape[0])
                optimiser.zero_grad(set_to_none=True)
                with autocast(device, self.compute_dtype_):
                    parts = loss_backward(
                        self.network_,
                        x_train[index],
                        sigma,
                        weight,
                        self.beta,
                        noise_gen,
                    )
                optimiser.step()
                sums += torch.stack(
                    [parts.total, parts.score_matching, parts.regulariser]
                ).detach()
                bar.update()
            # One device sync per epoch.
            total, score_matching, regulariser = (sums / steps).tolist()
            if not math.isfinite(total):
                bar.close()
                raise ValueError(
                    f"The training loss became {total} at epoch {epoch}; lower "
                    f"learning_rate (now {self.learning_rate}) or raise sigma_low "
                    f"(now {self.sigma_low})."
                )
            seconds = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "loss": total,
                "score_matching": score_matching,
                "regulariser": regulariser,
                "samples_per_s": n / seconds,
            }
            if x_val.shape[0]:
                record["val_loss"] = self._validation_loss(x_val, draw_sigma, noise_gen)
            history.append(record)
            if self.verbose >= 1:
                logger.info(
                    "epoch %4d/%d  loss %.5g  dsm %.5g  reg %.5g%s  %.0f samples/s",
                    epoch,
                    self.epochs,
                    total,
                    score_matching,
                    regulariser,
                    f"  val {record['val_loss']:.5g}" if "val_loss" in record else "",
                    record["samples_per_s"],
                )
        bar.close()
        self.network_.eval()
        return history

    def _validation_loss(self, x_val, draw_sigma, noise_gen) -> float:
        self.network_.eval()
        total = torch.zeros((), device=self.device_)
        size = min(self.batch_size, x_val.shape[0])
        for start in range(0, x_val.shape[0], size):
            chunk = x_val[start : start + size]
            sigma, weight = draw_sigma(chunk.shape[0])
            with autocast(self.device_, self.compute_dtype_):
                parts = dsm_loss(
                    self.network_, chunk, sigma, weight, self.beta, noise_gen
                )
            total += parts.total.detach() * chunk.shape[0]
        self.network_.train()
        return float(total / x_val.shape[0])

    # ----------------------------------------------------------------- scoring

    def _check_fitted(self, attribute: str = "aggregator_") -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                "This MULDE instance is not fitted yet; call fit(X) or MULDE.load()."
            )

    def multiscale_scores(
        self, X, score_norms: bool = False, levels=None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Energies f(x, sigma_l) at the L evaluation levels, shape (n, L).

        With ``score_norms=True`` also return ||sigma_l grad_x f(x, sigma_l)||^2 of
        shape (n, L). Energies alone build no autograd graph. ``levels`` evaluates
        other noise levels than ``levels_``: a list of levels, or "linear" or
        "log" for as many levels as ``levels_`` on that grid. The aggregator is
        fitted on ``levels_`` only.
        """
        self._check_fitted("network_")
        n_features = self.n_features_in_
        if hasattr(self, "feature_names_in_") or hasattr(X, "columns"):
            # Rejects DataFrame columns that differ from the training ones.
            validate_data(self, X, reset=False, skip_check_array=True)
        X = check_features(X, n_features=n_features)
        x = self._to_tensor(X)
        levels = (
            self.levels_
            if levels is None
            else evaluation_levels(
                levels, len(self.levels_), self.sigma_low, self.sigma_high
            )
        )
        levels = torch.as_tensor(levels, dtype=torch.float32, device=self.device_)
        pairs = score_pairs_per_pass(
            self.score_batch_size, self.hidden_sizes, self.device_
        )
        rows = max(1, pairs // len(levels))
        energies, norms = [], []
        for start in range(0, x.shape[0], rows):
            with autocast(self.device_, self.compute_dtype_):
                e, g = multiscale_energies(
                    self.network_,
                    x[start : start + rows],
                    levels,
                    score_norms=score_norms,
                )
            energies.append(e)
            if g is not None:
                norms.append(g)
        energies_np = (
            torch.cat(energies).cpu().numpy()
            if energies
            else np.zeros((0, len(levels)), np.float32)
        )
        if not score_norms:
            return energies_np
        if norms:
            return energies_np, torch.cat(norms).cpu().numpy()
        return energies_np, np.zeros_like(energies_np)

    def _level_vectors(self, X) -> np.ndarray:
        if self.use_score_norms:
            energies, norms = self.multiscale_scores(X, score_norms=True)
            return np.concatenate([energies, norms], axis=1)
        return self.multiscale_scores(X)

    def decision_function(self, X) -> np.ndarray:
        """Anomaly score of shape (n,): higher means more anomalous."""
        self._check_fitted()
        vectors = self._level_vectors(X)
        if len(vectors) == 0:
            # The mixture rejects an empty array; no samples have no scores.
            return np.zeros(0)
        return self.aggregator_.score(vectors)

    def score_samples(self, X) -> np.ndarray:
        """Normality score of shape (n,): higher means more normal."""
        return -self.decision_function(X)

    def predict(self, X) -> np.ndarray:
        """1 for samples whose anomaly score exceeds ``threshold_``, else 0."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def predict_proba(self, X, method: str = "linear") -> np.ndarray:
        """Outlier probability of shape (n, 2): columns normal, anomalous.

        As in PyOD, the anomaly score is mapped with the training scores
        ``decision_scores_``: ``"linear"`` rescales it by their minimum and
        maximum and clips to [0, 1]; ``"unify"`` standardises it by their mean
        and standard deviation and applies the Gaussian error function, clipped
        at 0 (Kriegel et al., SDM 2011).
        """
        self._check_fitted()
        if method not in ("linear", "unify"):
            raise ValueError(
                f"Unknown method {method!r} for predict_proba; use 'linear' or 'unify'."
            )
        scores = self.decision_function(X)
        train = self.decision_scores_
        if method == "linear":
            spread = train.max() - train.min()
            anomalous = (scores - train.min()) / (spread if spread > 0 else 1.0)
            anomalous = np.clip(anomalous, 0.0, 1.0)
        else:
            spread = train.std()
            z = (scores - train.mean()) / (spread if spread > 0 else 1.0)
            anomalous = np.clip(special.erf(z / np.sqrt(2.0)), 0.0, 1.0)
        return np.stack([1.0 - anomalous, anomalous], axis=1)

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to one safetensors file; see mulde.persistence."""
        from mulde.persistence import save_detector

        return save_detector(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> MULDE:
        """Read a detector written by :meth:`save`; nothing in the file is executed."""
        from mulde.persistence import load_detector

        return load_detector(Path(path), device=device)

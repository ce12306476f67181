"""The MULDE estimator: maths, interface, determinism, persistence, bad input."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from mulde import MULDE

# A network small enough for CPU tests; the maths is the same at any width.
SMALL = {
    "hidden_sizes": (256, 256),
    "batch_size": 256,
    "learning_rate": 1e-3,
    "epochs": 60,
    "random_state": 0,
}


def gaussian_cloud(n, dim, seed):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    factor = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    cov = factor @ factor.T + 0.5 * np.eye(dim)
    return rng.multivariate_normal(mean, cov, size=n), mean, cov


@pytest.fixture(scope="module")
def planted():
    """Gaussian cloud in 4-D with 40 outliers planted 6 standard deviations out."""
    rng = np.random.default_rng(1)
    X_train = rng.normal(size=(1500, 4))
    directions = rng.normal(size=(40, 4))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X_test = np.vstack([rng.normal(size=(300, 4)), 6 * directions])
    y_test = np.r_[np.zeros(300), np.ones(40)]
    return X_train, X_test, y_test


@pytest.fixture(scope="module")
def fitted(planted):
    return MULDE(**SMALL).fit(planted[0])


@pytest.mark.parametrize("dim", [2, 8])
def test_score_matches_analytic_gaussian_score(dim):
    X, mean, cov = gaussian_cloud(4000, dim, seed=dim)
    # beta = 0: the regulariser f(x, sigma)^2 pulls energies towards 0 and, at
    # small sigma, bends the learned score away from the true one (mean cosine
    # 0.80 at sigma = 0.1 in 2-D with beta = 0.1, against 0.99 with beta = 0).
    detector = MULDE(**(SMALL | {"epochs": 150, "beta": 0.0})).fit(X[:3000])

    # The detector works on standardised features: move the Gaussian there.
    scale = detector.scale_.astype(np.float64)
    mean_std = (mean - detector.mean_) / scale
    cov_std = cov / np.outer(scale, scale)
    sigma = 0.1
    x = (X[3000:] - detector.mean_) / scale
    analytic = -(x - mean_std) @ np.linalg.inv(cov_std + sigma**2 * np.eye(dim))

    inputs = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    energy = detector.network_(inputs, torch.full((len(x),), sigma))
    (grad,) = torch.autograd.grad(energy.sum(), inputs)
    learned = -grad.numpy().astype(np.float64)
    cosine = np.sum(learned * analytic, axis=1) / (
        np.linalg.norm(learned, axis=1) * np.linalg.norm(analytic, axis=1)
    )
    assert cosine.mean() >= 0.9


def test_planted_outliers_auc(fitted, planted):
    _, X_test, y_test = planted
    assert roc_auc_score(y_test, fitted.decision_function(X_test)) >= 0.95


def test_sign_convention(fitted, planted):
    _, X_test, y_test = planted
    anomaly = fitted.decision_function(X_test)
    normality = fitted.score_samples(X_test)
    assert np.allclose(normality, -anomaly)
    assert anomaly[y_test == 1].mean() > anomaly[y_test == 0].mean()
    predicted = fitted.predict(X_test)
    assert set(np.unique(predicted)) <= {0, 1}
    assert predicted[y_test == 1].mean() > 0.9
    assert np.array_equal(predicted, (anomaly > fitted.threshold_).astype(int))


def test_fitted_attributes(fitted, planted):
    X_train = planted[0]
    assert fitted.decision_scores_.shape == (len(X_train),)
    assert fitted.levels_.shape == (16,)
    assert fitted.mean_.shape == (4,)
    assert len(fitted.history_) == SMALL["epochs"]
    # 10% contamination by default: about a tenth of training rows lie above.
    share_above = (fitted.decision_scores_ > fitted.threshold_).mean()
    assert share_above == pytest.approx(0.1, abs=0.01)
    assert fitted.multiscale_scores(X_train[:5]).shape == (5, 16)


def test_multiscale_score_norms(fitted, planted):
    energies, norms = fitted.multiscale_scores(planted[1][:7], score_norms=True)
    assert energies.shape == (7, 16)
    assert norms.shape == (7, 16)
    assert np.all(norms >= 0)
    # The energies path without gradients gives the same values. In bfloat16 they
    # may differ by one rounding step, because that path rounds after the fused
    # GELU of each hidden layer and the gradient path before it.
    if fitted.compute_dtype_ == torch.bfloat16:
        tolerance = {"rtol": 2**-7, "atol": 2**-7}
    else:
        tolerance = {"atol": 1e-5}
    assert np.allclose(energies, fitted.multiscale_scores(planted[1][:7]), **tolerance)


def test_same_seed_same_scores(planted):
    X_train, X_test, _ = planted
    params = SMALL | {"epochs": 5}
    first = MULDE(**params).fit(X_train).decision_function(X_test)
    second = MULDE(**params).fit(X_train).decision_function(X_test)
    other = (
        MULDE(**(params | {"random_state": 1})).fit(X_train).decision_function(X_test)
    )
    assert np.array_equal(first, second)
    assert not np.allclose(first, other)


def test_fit_leaves_global_rng_alone(planted):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MULDE(**(SMALL | {"epochs": 1})).fit(planted[0])
    assert torch.equal(torch.rand(3), expected)


def test_save_load_identical_scores(fitted, planted, tmp_path):
    path = fitted.save(tmp_path / "detector.safetensors")
    loaded = MULDE.load(path, device="cpu")
    X_test = planted[1]
    assert np.array_equal(
        loaded.decision_function(X_test), fitted.decision_function(X_test)
    )
    assert np.array_equal(loaded.predict(X_test), fitted.predict(X_test))
    assert loaded.get_params() == fitted.get_params() | {
        "device": "cpu",
        "hidden_sizes": [256, 256],
    }
    assert not list(tmp_path.glob(".*"))


def test_clone_keeps_params_unfitted(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "network_")


@pytest.mark.parametrize(
    "options",
    [
        {"weighting": "gaussian"},
        {"weighting": "gaussian", "importance_sampling": True},
        {"aggregation": "max"},
        {"aggregation": "median"},
        {"aggregation": "level", "level_index": 3},
        {"level_grid": "log", "n_levels": 8},
        {"use_score_norms": True},
        {"validation_fraction": 0.2},
        {"layer_norm": True, "dropout": 0.1},
    ],
)
def test_options_detect_planted_outliers(options, planted):
    X_train, X_test, y_test = planted
    detector = MULDE(**(SMALL | {"epochs": 30} | options)).fit(X_train)
    assert roc_auc_score(y_test, detector.decision_function(X_test)) >= 0.95
    if "validation_fraction" in options:
        assert all("val_loss" in record for record in detector.history_)


@pytest.mark.parametrize(("weighting", "floor"), [("sigma2", 0.93), ("gaussian", 0.93)])
def test_cardio_one_class_auc(cardio_split, weighting, floor):
    X_fit, X_test, y_test = cardio_split
    params = SMALL | {"epochs": 200, "weighting": weighting}
    detector = MULDE(**params).fit(X_fit)
    assert roc_auc_score(y_test, detector.decision_function(X_test)) >= floor


def test_mixture_fit_on_collinear_cardio_levels(cardio_split):
    X_fit, X_test, _ = cardio_split
    detector = MULDE(**(SMALL | {"epochs": 20})).fit(X_fit)
    levels = detector.multiscale_scores(X_fit)
    assert levels.dtype == np.float32
    # Neighbouring levels are nearly collinear.
    correlation = np.corrcoef(levels[:, 10], levels[:, 11])[0, 1]
    assert correlation > 0.99
    scores = detector.decision_function(X_test)
    assert np.all(np.isfinite(scores))
    assert detector.aggregator_.mixture_.covariances_.dtype == np.float64


def test_naive_mixture_on_collinear_levels_is_ill_conditioned(cardio_split):
    X_fit, _, _ = cardio_split
    # float32: bfloat16 rounding adds noise to the levels that makes them less
    # collinear, which is not what this test is about.
    params = SMALL | {"epochs": 20, "precision": "float32"}
    detector = MULDE(**params).fit(X_fit)
    levels = detector.multiscale_scores(X_fit)
    naive = GaussianMixture(covariance_type="full", reg_covar=0.0, random_state=0)
    try:
        naive.fit(levels)
    except ValueError as error:
        assert "ill-defined empirical covariance" in str(error)
    else:
        condition = np.linalg.cond(naive.covariances_[0])
        ours = np.linalg.cond(detector.aggregator_.mixture_.covariances_[0])
        assert condition > 1e3 * ours


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sigma_low": 1.0, "sigma_high": 0.5}, "must be smaller than sigma_high"),
        ({"sigma_low": 0.5, "sigma_high": 0.5}, "must be smaller than sigma_high"),
        ({"sigma_low": 0.0}, "sigma_low=0.0 must be > 0"),
        ({"sigma_low": -1.0}, "sigma_low=-1.0 must be > 0"),
        ({"beta": -0.1}, "beta=-0.1 must be >= 0"),
        ({"weighting": "gaussian", "s": 0.0}, "s=0.0 must be a positive finite"),
        ({"weighting": "triangle"}, "Unknown weighting 'triangle'"),
        ({"epochs": 0}, "epochs=0 must be a positive integer"),
        ({"contamination": 0.9}, "contamination=0.9"),
        ({"aggregation": "mode"}, "Unknown aggregation 'mode'"),
        ({"aggregation": "level"}, "needs level_index"),
        ({"device": "tpu"}, "Invalid device 'tpu'"),
        ({"precision": "fp8"}, "Unknown precision 'fp8'"),
    ],
)
def test_bad_parameters_raise(params, message):
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=message):
        MULDE(**(SMALL | {"epochs": 1} | params)).fit(X)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.array([[1.0, np.nan], [2.0, 3.0]]), "1 NaN or infinite values"),
        (np.array([[1.0, np.inf], [2.0, 3.0]]), "NaN or infinite"),
        (np.ones((1, 3)), "fitting needs at least 2 training rows"),
        (np.array([["a", "b"], ["c", "d"]]), "must be a numeric array"),
        (np.ones(5), "expected a 2-D array"),
    ],
)
def test_bad_training_data_raises(X, message):
    with pytest.raises(ValueError, match=message):
        MULDE(**(SMALL | {"epochs": 1})).fit(X)


def test_wrong_feature_count_at_scoring_raises(fitted):
    with pytest.raises(
        ValueError, match="has 3 features, but MULDE is expecting 4 features"
    ):
        fitted.decision_function(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        fitted.score_samples(np.full((2, 4), np.nan))


def test_unfitted_detector_raises():
    from sklearn.exceptions import NotFittedError

    for method in ("decision_function", "score_samples", "predict"):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(MULDE(), method)(np.ones((2, 3)))


def test_load_corrupt_file_raises(fitted, tmp_path):
    path = fitted.save(tmp_path / "detector.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.safetensors is not a readable"):
        MULDE.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        MULDE.load(garbage)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        MULDE.load(tmp_path / "missing.safetensors")


def test_load_incompatible_version_raises(fitted, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = fitted.save(tmp_path / "detector.safetensors")
    with safe_open(str(path), framework="pt") as reader:
        header = json.loads(reader.metadata()["mulde"])
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    header["format_version"] = 99
    old = tmp_path / "future.safetensors"
    save_file(tensors, str(old), metadata={"mulde": json.dumps(header)})
    with pytest.raises(ValueError, match="version 99.*Refit and save"):
        MULDE.load(old)


def test_callable_weighting_trains_but_cannot_be_saved(planted, tmp_path):
    def flat(sigma):
        return torch.ones_like(sigma) * sigma**2

    detector = MULDE(**(SMALL | {"epochs": 2, "weighting": flat})).fit(planted[0])
    with pytest.raises(ValueError, match="callable weighting cannot be saved"):
        detector.save(tmp_path / "d.safetensors")
    assert not list(tmp_path.iterdir())

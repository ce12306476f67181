"""Detector input that scikit-learn users pass: offsets, DataFrames, levels, labels."""

import numpy as np
import pandas as pd
import pytest

from mulde import MULDE
from mulde.study import load_adbench

TINY = {"hidden_sizes": (16, 16), "epochs": 2, "random_state": 0, "device": "cpu"}


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(300, 3))


def test_large_offset_keeps_scores(X):
    """A common offset of 1e9 is removed in float64 before the float32 network."""
    plain = MULDE(**TINY).fit(X).decision_function(X[:20])
    shifted = MULDE(**TINY).fit(X + 1e9).decision_function(X[:20] + 1e9)
    assert np.unique(shifted).size == 20
    np.testing.assert_allclose(shifted, plain, rtol=1e-5)


def test_constant_column_warns(X):
    X = X.copy()
    X[:, 2] = 2.0**62
    with pytest.warns(UserWarning, match=r"1 of 3 feature columns are constant"):
        MULDE(**TINY).fit(X)


def test_tiny_values_keep_their_spread(X):
    """Values near 1e-300 square to 0, yet are scaled like any other column."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = MULDE(**TINY).fit(X * 1e-300)
    np.testing.assert_allclose(tiny.scale_, X.std(axis=0) * 1e-300, rtol=1e-6)
    plain = MULDE(**TINY).fit(X)
    np.testing.assert_allclose(
        tiny.decision_function(X[:20] * 1e-300),
        plain.decision_function(X[:20]),
        rtol=1e-5,
    )


@pytest.mark.parametrize("aggregation", ["gmm", "max", "mean", "level"])
def test_far_outlier_scores_finite_and_anomalous(X, aggregation):
    extra = {"level_index": 8} if aggregation == "level" else {}
    detector = MULDE(**TINY, aggregation=aggregation, **extra).fit(X * 1e-3)
    rows = np.array([[1e36, 0.0, 0.0], [3e38, -3e38, 3e38], [0.0, 0.0, 0.0]])

    scores = detector.decision_function(rows)
    levels = detector.multiscale_scores(rows)

    assert np.isfinite(scores).all()
    assert np.isfinite(levels).all()
    assert np.isfinite(detector.predict_proba(rows)).all()
    # A 2-epoch network need not grow along every direction, but the row at
    # the float32 limit in every column is beyond any training row.
    assert detector.predict(rows)[1] == 1
    assert detector.predict(rows)[2] == 0


def test_dataframe_records_feature_names(X):
    frame = pd.DataFrame(X, columns=["speed", "x", "y"])
    detector = MULDE(**TINY).fit(frame)
    assert detector.feature_names_in_.tolist() == ["speed", "x", "y"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        from_array = detector.decision_function(X)
    np.testing.assert_array_equal(detector.decision_function(frame), from_array)


def test_dataframe_reordered_columns_rejected(X):
    frame = pd.DataFrame(X, columns=["speed", "x", "y"])
    detector = MULDE(**TINY).fit(frame)
    with pytest.raises(ValueError, match="feature names"):
        detector.decision_function(frame[["y", "x", "speed"]])


@pytest.mark.parametrize("method", ["linear", "unify"])
def test_predict_proba_rows_sum_to_one(X, method):
    detector = MULDE(**TINY).fit(X)
    proba = detector.predict_proba(np.vstack([X[:5], X[:1] + 50.0]), method=method)
    assert proba.shape == (6, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    # A far outlier is the most anomalous row.
    assert proba[-1, 1] == proba[:, 1].max()
    assert proba[-1, 1] > 0.9


def test_predict_proba_unknown_method(X):
    detector = MULDE(**TINY).fit(X)
    with pytest.raises(ValueError, match="'linear' or 'unify'"):
        detector.predict_proba(X, method="rank")


def test_named_grid_for_other_levels(X):
    detector = MULDE(**TINY).fit(X)
    energies = detector.multiscale_scores(X[:4], levels="log")
    assert energies.shape == (4, len(detector.levels_))


def test_study_rejects_fractional_labels(tmp_path):
    y = np.r_[np.zeros(8), np.ones(1), 0.6]
    np.savez(tmp_path / "set.npz", X=np.ones((10, 2)), y=y)
    with pytest.raises(ValueError, match=r"other than 0 \(normal\) and 1.*0\.6"):
        load_adbench(tmp_path)


def test_saved_detector_keeps_feature_names(X, tmp_path):
    frame = pd.DataFrame(X, columns=["speed", "x", "y"])
    path = MULDE(**TINY).fit(frame).save(tmp_path / "model.safetensors")
    loaded = MULDE.load(path)
    assert loaded.feature_names_in_.tolist() == ["speed", "x", "y"]
    with pytest.raises(ValueError, match="feature names"):
        loaded.decision_function(frame[["x", "speed", "y"]])


def test_empty_rows_at_explicit_levels(X):
    detector = MULDE(**TINY).fit(X)
    assert detector.multiscale_scores(X[:0], levels=[0.1]).shape == (0, 1)


def test_huge_hidden_sizes_rejected_before_data():
    from mulde.config import RunConfig

    with pytest.raises(ValueError, match=r"hidden_sizes=\[100000000, 100000000\]"):
        MULDE(hidden_sizes=(100_000_000, 100_000_000))._check_params()
    with pytest.raises(ValueError, match="more than 1.07e"):
        RunConfig.from_dict(
            {"detector": {"hidden_sizes": [100_000, 100_000]}}
        ).validate()


# The array API check needs SCIPY_ARRAY_API set, and skips itself otherwise.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_scikit_learn_estimator_checks_pass():
    from sklearn.utils.estimator_checks import check_estimator

    # predict returns PyOD's 0/1 labels, where these two checks want -1/+1.
    pyod_labels = "predict returns 0/1 (PyOD), not -1/+1 (scikit-learn)"
    check_estimator(
        MULDE(hidden_sizes=(8,), epochs=1, n_levels=4, random_state=0, device="cpu"),
        expected_failed_checks={
            "check_outliers_train": pyod_labels,
            "check_outliers_fit_predict": pyod_labels,
        },
    )

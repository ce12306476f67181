"""Bounded memory of the main job: the PCA sample cap and clips read on lookup."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from mulde import pipeline
from mulde.config import RunConfig
from mulde.features import cache as feature_cache
from mulde.features.cache import ClipFeatureFiles, ClipFeatures, save_clip_features
from mulde.pipeline import (
    _fit_pca,
    _stack,
    fit_models,
    fit_models_with_rows,
    pca_sample_indices,
    row_counts,
    stack_sample,
)

WIDTH = 12


def make_clip(n_rows: int, seed: int) -> ClipFeatures:
    """Return a clip of 10 frames with random velocity, appearance and geometry."""
    rng = np.random.default_rng(seed)
    return ClipFeatures(
        n_frames=10,
        frame_index=np.sort(rng.integers(0, 10, n_rows)).astype(np.int64),
        boxes=rng.random((n_rows, 4), dtype=np.float32),
        groups={
            "velocity": rng.random((n_rows, 2), dtype=np.float32),
            "appearance": rng.normal(size=(n_rows, WIDTH)).astype(np.float32),
            "geometry": rng.random((n_rows, 2), dtype=np.float32),
        },
    )


@pytest.fixture
def clips() -> dict[str, ClipFeatures]:
    # Clip "b" has no rows, as a training clip without motion has.
    return {"a": make_clip(40, 1), "b": make_clip(0, 2), "c": make_clip(70, 3)}


@pytest.fixture
def tiny_config() -> RunConfig:
    config = RunConfig()
    config.scoring.pca_components = 4
    config.detector |= {"hidden_sizes": [8, 8], "epochs": 1, "batch_size": 32}
    config.detector["device"] = "cpu"
    config.verbose = 0
    return config


def save_files(clips: dict[str, ClipFeatures], folder: Path) -> ClipFeatureFiles:
    paths = {}
    for name, clip in clips.items():
        paths[name] = folder / f"{name}.npz"
        save_clip_features(clip, paths[name])
    return ClipFeatureFiles(
        paths,
        n_frames={name: clip.n_frames for name, clip in clips.items()},
        n_rows={name: clip.n_rows for name, clip in clips.items()},
    )


# ------------------------------------------------------------ PCA sample


def test_sample_indices_capped():
    indices = pca_sample_indices(1000, 100, seed=0)

    assert len(indices) == 100
    assert len(np.unique(indices)) == 100
    assert np.all(np.diff(indices) > 0)
    assert indices.min() >= 0
    assert indices.max() < 1000


def test_sample_indices_seeded():
    first = pca_sample_indices(1000, 100, seed=7)

    np.testing.assert_array_equal(pca_sample_indices(1000, 100, seed=7), first)
    assert not np.array_equal(pca_sample_indices(1000, 100, seed=8), first)


@pytest.mark.parametrize("n_rows", [0, 1, 99, 100])
def test_sample_indices_all_rows_under_cap(n_rows):
    np.testing.assert_array_equal(
        pca_sample_indices(n_rows, 100, seed=0), np.arange(n_rows)
    )


def test_sample_indices_reject_zero_cap():
    with pytest.raises(ValueError, match="max_rows=0 must be at least 1"):
        pca_sample_indices(10, 0, seed=0)


def test_stack_sample_matches_concatenation(clips):
    indices = pca_sample_indices(110, 30, seed=0)

    sample = stack_sample(clips, row_counts(clips), ["appearance", "velocity"], indices)

    for group in ("appearance", "velocity"):
        np.testing.assert_array_equal(sample[group], _stack(clips, group)[indices])
    assert set(sample) == {"appearance", "velocity"}


def test_stack_sample_all_rows_equal_stack(clips):
    indices = pca_sample_indices(110, 1000, seed=0)

    sample = stack_sample(clips, row_counts(clips), ["appearance"], indices)

    np.testing.assert_array_equal(sample["appearance"], _stack(clips, "appearance"))
    assert sample["appearance"].flags.c_contiguous


def test_stack_sample_rejects_indices_past_rows(clips):
    with pytest.raises(ValueError, match="The clips have 110 rows in all"):
        stack_sample(clips, row_counts(clips), ["appearance"], np.array([5, 200]))


def test_pca_fitted_on_capped_sample(clips, tiny_config, monkeypatch):
    monkeypatch.setattr(pipeline, "PCA_MAX_ROWS", 50)

    models = fit_models(clips, tiny_config)

    velocity, appearance, geometry = models[0].pca
    assert velocity is None
    assert geometry is None
    assert appearance.n_samples_ == 50
    expected = _fit_pca(
        _stack(clips, "appearance")[pca_sample_indices(110, 50, seed=0)],
        4,
        0,
        "appearance",
    )
    np.testing.assert_array_equal(appearance.components_, expected.components_)
    # The detector is still fitted on every training row.
    assert models[0].detector.decision_scores_.shape == (110,)


def test_pca_sample_follows_run_seed(clips, tiny_config, monkeypatch):
    monkeypatch.setattr(pipeline, "PCA_MAX_ROWS", 50)
    seen = []
    original = pipeline.stack_sample

    def recording_stack_sample(clips, counts, groups, indices):
        seen.append(indices.copy())
        return original(clips, counts, groups, indices)

    monkeypatch.setattr(pipeline, "stack_sample", recording_stack_sample)

    fit_models(clips, tiny_config)
    fit_models(clips, tiny_config)
    tiny_config.seed = 1
    fit_models(clips, tiny_config)

    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])


def test_pca_under_cap_equals_full_stack(clips, tiny_config):
    models, rows = fit_models_with_rows(clips, tiny_config)

    appearance = models[0].pca[1]
    expected = _fit_pca(_stack(clips, "appearance"), 4, 0, "appearance")
    assert appearance.n_samples_ == 110
    np.testing.assert_array_equal(appearance.components_, expected.components_)
    np.testing.assert_array_equal(appearance.mean_, expected.mean_)
    projected = np.concatenate([models[0].transform(c.groups) for c in clips.values()])
    np.testing.assert_array_equal(rows[0], projected)


def test_per_group_rows_one_array_per_model(clips, tiny_config):
    tiny_config.scoring.scoring = "per_group"

    models, rows = fit_models_with_rows(clips, tiny_config)

    assert [model.groups for model in models] == [
        ["velocity"],
        ["appearance"],
        ["geometry"],
    ]
    assert [r.shape for r in rows] == [(110, 2), (110, 4), (110, 2)]


# ------------------------------------------------------ clips read on lookup


def test_files_equal_saved_clips(clips, tmp_path):
    files = save_files(clips, tmp_path)

    assert list(files) == ["a", "b", "c"]
    assert len(files) == 3
    for name, clip in clips.items():
        loaded = files[name]
        assert loaded.n_frames == clip.n_frames
        np.testing.assert_array_equal(loaded.frame_index, clip.frame_index)
        for group, values in clip.groups.items():
            np.testing.assert_array_equal(loaded.groups[group], values)


def test_files_keep_no_clip_loaded(clips, tmp_path):
    files = save_files(clips, tmp_path)

    first = files["a"]
    reference = weakref.ref(first)
    second = files["a"]
    del first
    gc.collect()

    assert reference() is None
    assert second is not files["a"]


def test_files_iteration_loads_each_clip_once(clips, tmp_path, monkeypatch):
    files = save_files(clips, tmp_path)
    loaded: list[Path] = []
    original = feature_cache.load_clip_features

    def counting_load(path):
        loaded.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(feature_cache, "load_clip_features", counting_load)
    alive = []
    for _, clip in files.items():
        alive.append(weakref.ref(clip))
        del clip
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0

    assert loaded == ["a.npz", "b.npz", "c.npz"]


def test_files_counts_read_no_file(clips, tmp_path, monkeypatch):
    files = save_files(clips, tmp_path)

    def failing_load(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(feature_cache, "load_clip_features", failing_load)

    assert files.row_counts() == {"a": 40, "b": 0, "c": 70}
    assert files.frame_counts() == {"a": 10, "b": 10, "c": 10}
    assert row_counts(files) == {"a": 40, "b": 0, "c": 70}


def test_files_reject_changed_file(clips, tmp_path):
    files = save_files(clips, tmp_path)
    save_clip_features(make_clip(5, 9), tmp_path / "a.npz")

    with pytest.raises(ValueError, match=r"a\.npz has 10 frames and 5 rows.*run again"):
        files["a"]


def test_files_name_missing_file(clips, tmp_path):
    files = save_files(clips, tmp_path)
    (tmp_path / "c.npz").unlink()

    with pytest.raises(
        ValueError, match=r"clip c could not be read.*c\.npz.*run again"
    ):
        files["c"]


def test_files_reject_unequal_clip_names(tmp_path):
    with pytest.raises(ValueError, match="must name the same clips"):
        ClipFeatureFiles({"a": tmp_path / "a.npz"}, {"a": 1}, {"b": 1})


def test_fit_on_files_equals_fit_on_dict(clips, tiny_config, tmp_path):
    files = save_files(clips, tmp_path)

    from_dict, dict_rows = fit_models_with_rows(clips, tiny_config)
    from_files, file_rows = fit_models_with_rows(files, tiny_config)

    np.testing.assert_array_equal(file_rows[0], dict_rows[0])
    np.testing.assert_array_equal(
        from_files[0].detector.decision_scores_, from_dict[0].detector.decision_scores_
    )
    dict_scores, dict_levels = pipeline.score_clips(from_dict, clips)
    file_scores, file_levels = pipeline.score_clips(from_dict, files)
    for name in clips:
        np.testing.assert_array_equal(file_scores[name], dict_scores[name])
        np.testing.assert_array_equal(file_levels[name], dict_levels[name])

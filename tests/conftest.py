"""Shared fixtures: paths of the real data sets, and small helpers of many tests.

The data sets are looked for in ../shared/data beside the repository, or in the
folder that the environment variable MULDE_TEST_DATA names. Tests that need a
missing file are skipped.
"""

import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(
    os.environ.get("MULDE_TEST_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
PED2 = DATA / "ped2"
ADBENCH = DATA / "tabular" / "adbench"


@pytest.fixture(scope="session")
def cardio_split():
    """6_cardio one-class split: half the normal rows to fit, the rest to test."""
    path = ADBENCH / "6_cardio.npz"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    data = np.load(path, allow_pickle=False)
    X, y = data["X"], data["y"].astype(int)
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.flatnonzero(y == 0))
    fit_rows = normal[: normal.size // 2]
    test_rows = np.concatenate([normal[normal.size // 2 :], np.flatnonzero(y == 1)])
    return X[fit_rows], X[test_rows], y[test_rows]


@pytest.fixture
def extraction_counter(monkeypatch) -> list[str]:
    """Record the name of every clip that extract_dataset actually extracts."""
    from mulde.features import cache as feature_cache

    extracted: list[str] = []
    original = feature_cache.extract_clip

    def counting_extract_clip(clip, config, backbone, on_frame=None):
        extracted.append(clip.name)
        return original(clip, config, backbone, on_frame=on_frame)

    monkeypatch.setattr(feature_cache, "extract_clip", counting_extract_clip)
    return extracted


def empty_grid_clip(n_frames: int = 3):
    """Grid-mode features of a clip in which no cell was found."""
    from mulde.features.cache import ClipFeatures

    return ClipFeatures(
        n_frames=n_frames,
        frame_index=np.zeros(0, dtype=np.int64),
        boxes=np.zeros((0, 4), dtype=np.float32),
        groups={
            "velocity": np.zeros((0, 2), np.float32),
            "appearance": np.zeros((0, 1280), np.float32),
            "geometry": np.zeros((0, 2), np.float32),
        },
    )

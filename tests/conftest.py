"""Shared fixtures: paths of the real data sets.

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

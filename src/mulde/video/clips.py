"""Clip and dataset records shared by video input, features and the main job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Clip:
    """One video clip: a folder of frames or a video file.

    Parameters
    ----------
    name : str
        Identifier that is unique within its split, for example ``"Test001"`` or
        ``"01"``; used as the cache key and in ``scores.csv``.
    source : Path
        Folder of frame images, or a video file.
    labels : numpy.ndarray of shape (n_frames,) or None
        Frame-level ground truth, 1 = anomalous, for test clips; None for
        training clips.
    """

    name: str
    source: Path
    labels: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class VideoDataset:
    """Normal training clips and labelled test clips of one dataset."""

    name: str
    root: Path
    train: list[Clip]
    test: list[Clip]

"""Dense optical flow with OpenCV DIS and flow histograms per box and per frame.

Flow is in pixels per frame, with x to the right and y down. Directions are binned
by ``atan2(dy, dx)`` into equal sectors, the first centred on +x (rightwards), in
the order of increasing angle, which in image coordinates is clockwise.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAGNITUDE_EDGES",
    "FLOW_PRESETS",
    "FlowEstimator",
    "box_flow_features",
    "flow_statistics",
    "box_flow_dim",
    "flow_statistics_dim",
]

FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# Inner edges of the magnitude histogram in pixels per frame; the first bin starts
# at 0 and the last is open-ended. Walking pedestrians in UCSD Ped2 training clips
# (240x360, 10 frames/s) move up to about 2 px/frame, so the upper bins are for
# faster objects.
DEFAULT_MAGNITUDE_EDGES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.5)

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


class FlowEstimator:
    """Dense optical flow between grayscale frames with OpenCV's DIS method.

    Parameters
    ----------
    preset : str
        ``"ultrafast"``, ``"fast"`` or ``"medium"``, the DIS presets of OpenCV.
    """

    def __init__(self, preset: str = "fast") -> None:
        if preset not in FLOW_PRESETS:
            raise ValueError(
                f"unknown flow preset {preset!r}; "
                f"valid presets: {', '.join(FLOW_PRESETS)}"
            )
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(FLOW_PRESETS[preset])

    def velocity(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Estimate the motion of each pixel of ``current`` since ``previous``.

        The flow is computed from ``current`` to ``previous`` and negated, so it is
        sampled on the pixel grid of ``current``, where that frame's boxes lie.

        Parameters
        ----------
        previous, current : numpy.ndarray of uint8, shape (H, W)
            Consecutive grayscale frames.

        Returns
        -------
        numpy.ndarray of float32, shape (H, W, 2)
            (dx, dy) in pixels per frame.
        """
        backward = self.flow(current, previous)
        np.negative(backward, out=backward)
        return backward

    def flow(self, source: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Compute the flow from ``source`` to ``target``.

        Parameters
        ----------
        source, target : numpy.ndarray of uint8, shape (H, W)
            Grayscale frames of the same size.

        Returns
        -------
        numpy.ndarray of float32, shape (H, W, 2)
            (dx, dy) such that ``source[y, x]`` matches
            ``target[y + dy, x + dx]``.
        """
        if source.shape != target.shape or source.ndim != 2:
            raise ValueError(
                f"flow needs two grayscale frames of equal shape, got {source.shape} "
                f"and {target.shape}"
            )
        return self._dis.calc(source, target, None)


def box_flow_dim(
    n_direction_bins: int = 8, magnitude_edges=DEFAULT_MAGNITUDE_EDGES
) -> int:
    """Return the length of a :func:`box_flow_features` row."""
    return n_direction_bins + len(magnitude_edges) + 1 + 2


def box_flow_features(
    flow: np.ndarray,
    boxes: np.ndarray,
    n_direction_bins: int = 8,
    magnitude_edges=DEFAULT_MAGNITUDE_EDGES,
) -> np.ndarray:
    """Describe the flow inside each box.

    Each row is, in order:

    - ``n_direction_bins`` direction bins, each the sum of the magnitudes of the
      pixels whose direction falls in that bin, divided by the box's pixel count
      (px/frame, so the bins sum to the mean magnitude);
    - ``len(magnitude_edges) + 1`` magnitude bins, the fraction of the box's pixels
      in each bin;
    - the mean and the maximum magnitude (px/frame).

    Parameters
    ----------
    flow : numpy.ndarray of float32, shape (H, W, 2)
        (dx, dy) per pixel.
    boxes : numpy.ndarray, shape (n_boxes, 4)
        (x0, y0, x1, y1) in pixels with exclusive ends, inside the frame.
    n_direction_bins : int
        Number of direction sectors.
    magnitude_edges : sequence of float
        Increasing inner edges of the magnitude bins in px/frame.

    Returns
    -------
    numpy.ndarray of float32, shape (n_boxes, box_flow_dim(...))
    """
    n_magnitude_bins = len(magnitude_edges) + 1
    dim = box_flow_dim(n_direction_bins, magnitude_edges)
    boxes = np.asarray(boxes)
    features = np.zeros((len(boxes), dim), dtype=np.float32)
    if len(boxes) == 0:
        return features
    magnitude, direction_bin, magnitude_bin = _bin_pixels(
        flow, n_direction_bins, magnitude_edges
    )
    int_boxes = _integer_boxes(boxes, flow.shape[:2])
    for row, (x0, y0, x1, y1) in enumerate(int_boxes):
        box_magnitude = magnitude[y0:y1, x0:x1].ravel()
        n_pixels = box_magnitude.size
        if n_pixels == 0:
            continue
        directions = direction_bin[y0:y1, x0:x1].ravel()
        magnitudes = magnitude_bin[y0:y1, x0:x1].ravel()
        features[row, :n_direction_bins] = (
            np.bincount(directions, weights=box_magnitude, minlength=n_direction_bins)
            / n_pixels
        )
        end = n_direction_bins + n_magnitude_bins
        features[row, n_direction_bins:end] = (
            np.bincount(magnitudes, minlength=n_magnitude_bins) / n_pixels
        )
        features[row, end] = box_magnitude.mean()
        features[row, end + 1] = box_magnitude.max()
    return features


def flow_statistics_dim(
    n_direction_bins: int = 8,
    magnitude_edges=DEFAULT_MAGNITUDE_EDGES,
    percentiles=DEFAULT_PERCENTILES,
) -> int:
    """Return the length of a :func:`flow_statistics` vector."""
    return n_direction_bins + len(magnitude_edges) + 1 + 1 + len(percentiles)


def flow_statistics(
    flow: np.ndarray,
    n_direction_bins: int = 8,
    magnitude_edges=DEFAULT_MAGNITUDE_EDGES,
    percentiles=DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Summarise the flow of a whole frame.

    The vector is, in order: the magnitude-weighted direction histogram and the
    magnitude histogram as in :func:`box_flow_features`, the mean magnitude, and
    the requested magnitude percentiles (px/frame).

    Parameters
    ----------
    flow : numpy.ndarray of float32, shape (H, W, 2)
    n_direction_bins : int
    magnitude_edges : sequence of float
    percentiles : sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    numpy.ndarray of float32, shape (flow_statistics_dim(...),)
    """
    magnitude, direction_bin, magnitude_bin = _bin_pixels(
        flow, n_direction_bins, magnitude_edges
    )
    magnitude = magnitude.ravel()
    n_pixels = max(magnitude.size, 1)
    directions = np.bincount(
        direction_bin.ravel(), weights=magnitude, minlength=n_direction_bins
    )
    magnitudes = np.bincount(magnitude_bin.ravel(), minlength=len(magnitude_edges) + 1)
    parts = [
        directions / n_pixels,
        magnitudes / n_pixels,
        [magnitude.mean() if magnitude.size else 0.0],
        np.percentile(magnitude, percentiles)
        if magnitude.size
        else np.zeros(len(percentiles)),
    ]
    return np.concatenate(
        [np.asarray(part, dtype=np.float64) for part in parts]
    ).astype(np.float32)


def _bin_pixels(
    flow: np.ndarray, n_direction_bins: int, magnitude_edges
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per-pixel magnitude, direction bin and magnitude bin, each (H, W)."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape (H, W, 2), got {flow.shape}")
    dx = flow[..., 0]
    dy = flow[..., 1]
    magnitude, angle = cv2.cartToPolar(dx, dy)  # angle in radians in [0, 2*pi)
    sector = 2.0 * np.pi / n_direction_bins
    # Shift by half a sector so that bin 0 is centred on +x.
    direction_bin = (
        np.floor((angle + sector / 2.0) / sector).astype(np.intp) % n_direction_bins
    )
    magnitude_bin = np.searchsorted(
        np.asarray(magnitude_edges, dtype=np.float32), magnitude, side="right"
    )
    return magnitude, direction_bin, magnitude_bin


def _integer_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Round boxes outwards to whole pixels and clip them to the frame."""
    height, width = shape
    int_boxes = np.empty((len(boxes), 4), dtype=np.intp)
    int_boxes[:, 0] = np.clip(np.floor(boxes[:, 0]), 0, width)
    int_boxes[:, 1] = np.clip(np.floor(boxes[:, 1]), 0, height)
    int_boxes[:, 2] = np.clip(np.ceil(boxes[:, 2]), 0, width)
    int_boxes[:, 3] = np.clip(np.ceil(boxes[:, 3]), 0, height)
    return int_boxes

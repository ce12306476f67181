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

# Inner edges of the magnitude histogram in pixels per frame. The first bin starts
# at 0 and the last is open-ended. In the UCSD Ped2 training clips (240x360) the
# "ultrafast" flow on walking pedestrians has a median of 0.7 px/frame and a 90th
# percentile of 1.0 px/frame, so the bins above 1.5 px/frame are for faster objects.
DEFAULT_MAGNITUDE_EDGES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 4.0)

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
# OpenCV's DIS flow raises on smaller images (OpenCV 4.x, dis_flow.cpp).
MIN_FLOW_SIDE = 12


class FlowEstimator:
    """Dense optical flow between grayscale frames with OpenCV's DIS method.

    Parameters
    ----------
    preset : str
        ``"ultrafast"``, ``"fast"`` or ``"medium"``, the DIS presets of OpenCV.
    """

    def __init__(self, preset: str = "medium") -> None:
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
        if min(source.shape) < MIN_FLOW_SIDE:
            height, width = source.shape
            raise ValueError(
                f"frames of {width} x {height} pixels are too small for optical "
                f"flow; each side needs at least {MIN_FLOW_SIDE} pixels"
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
    foreground: np.ndarray | None = None,
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
    foreground : numpy.ndarray of shape (H, W), optional
        Foreground mask (non-zero = object). When given, each box is described
        by its foreground pixels only, or by all its pixels if it has none.

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
    _check_flow(flow)
    int_boxes = _integer_boxes(boxes, flow.shape[:2])
    for row, (x0, y0, x1, y1) in enumerate(int_boxes):
        if x1 <= x0 or y1 <= y0:
            continue
        box_flow = flow[y0:y1, x0:x1]
        if foreground is not None:
            # Only the object's own pixels: the background in its box is static
            # and would dilute its speed by the box's share of background.
            inside = foreground[y0:y1, x0:x1] > 0
            if inside.any():
                box_flow = box_flow[inside][:, None, :]  # (n, 2) -> (n, 1, 2)
        # Binning only the box's pixels is cheaper than binning the whole frame,
        # because boxes usually cover a small part of it.
        box_magnitude, directions, magnitudes = _bin_pixels(
            box_flow, n_direction_bins, magnitude_edges
        )
        n_pixels = box_magnitude.size
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
    n_pixels = max(magnitude.size, 1)
    directions = np.bincount(
        direction_bin, weights=magnitude, minlength=n_direction_bins
    )
    magnitudes = np.bincount(magnitude_bin, minlength=len(magnitude_edges) + 1)
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


def _check_flow(flow: np.ndarray) -> None:
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must have shape (H, W, 2), got {flow.shape}")


def _bin_pixels(
    flow: np.ndarray, n_direction_bins: int, magnitude_edges
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the magnitude, direction bin and magnitude bin of each pixel.

    All three are flat arrays of length H * W.
    """
    _check_flow(flow)
    # (H, W, 2) -> (H * W, 2), contiguous so that cartToPolar gets plain columns.
    pixels = np.ascontiguousarray(flow).reshape(-1, 2)
    dx = np.ascontiguousarray(pixels[:, 0])
    dy = np.ascontiguousarray(pixels[:, 1])
    magnitude, angle = cv2.cartToPolar(dx, dy)  # angle in radians in [0, 2*pi)
    # cartToPolar returns (n, 1) columns for 1-D input; (n, 1) -> (n,).
    magnitude = magnitude.reshape(-1)
    angle = angle.reshape(-1)
    # Shift by half a sector so that bin 0 is centred on +x. Angles are
    # non-negative, so truncation is floor, and the top half sector wraps to 0.
    direction_bin = (angle * (n_direction_bins / (2.0 * np.pi)) + 0.5).astype(np.intp)
    direction_bin[direction_bin >= n_direction_bins] = 0
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

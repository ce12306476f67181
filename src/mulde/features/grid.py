"""Grid-cell features of a clip: one row per foreground cell of each frame.

Each frame is divided into square cells of ``config.grid_cell`` pixels. A cell
becomes a row when at least ``config.grid_min_foreground`` of its pixels are
foreground in the proposer's mask (background subtraction for a fixed camera).
Each row gets three groups:

- ``"velocity"``: the mean and the 90th percentile of the flow magnitude over
  the cell's foreground pixels, in pixels per frame, with the velocity field of
  :func:`mulde.features.objects.iter_velocity`;
- ``"appearance"``: the backbone's last feature map of the whole frame,
  bilinearly interpolated at the cell's centre;
- ``"geometry"``: the cell centre's y / H and x / W.

Cells need no object boundaries, so a fast object beside slow ones keeps its own
speed, where one box around a merged group of people would average them. The
position lets the detector learn that the normal speed in pixels depends on
where the object is in a perspective view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from mulde.features.backbone import Backbone
from mulde.features.cache import ClipFeatures, FeatureConfig, build_backbone
from mulde.features.flow import FlowEstimator
from mulde.features.objects import (
    FrameSource,
    checked_frames,
    consume_in_parallel,
    fitted_proposer,
    iter_velocity,
    zip_results,
)

__all__ = [
    "GRID_GEOMETRY_DIM",
    "GRID_VELOCITY_DIM",
    "cell_velocity",
    "extract_grid_features",
    "foreground_cells",
    "sample_feature_map",
]

GRID_VELOCITY_DIM = 2
GRID_GEOMETRY_DIM = 2
_SPEED_PERCENTILE = 90.0


def foreground_cells(
    mask: np.ndarray, cell: int, min_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Find the grid cells with enough foreground.

    Parameters
    ----------
    mask : numpy.ndarray of shape (H, W)
        Foreground mask, non-zero for foreground.
    cell : int
        Cell side in pixels. Cells at the right and bottom edges may be cut by
        the frame border; their fraction still counts a full cell's area.
    min_fraction : float
        Minimum share of foreground pixels for a cell to be kept.

    Returns
    -------
    rows, columns : numpy.ndarray of int64, shape (n_cells,)
        Cell indices in row-major order.
    """
    counts = _cell_blocks(mask > 0, cell).sum(axis=2)
    # At least one pixel, so that min_fraction == 0 keeps no empty cell.
    needed = max(min_fraction * cell * cell, 1.0)
    rows, columns = np.nonzero(counts >= needed)
    return rows.astype(np.int64), columns.astype(np.int64)


def _cell_blocks(values: np.ndarray, cell: int) -> np.ndarray:
    """Regroup an (H, W) array into (n_rows, n_columns, cell * cell) cell blocks.

    The frame is padded with zeros (False) to whole cells at the right and bottom.
    """
    height, width = values.shape
    n_rows, n_columns = -(-height // cell), -(-width // cell)
    padded = np.zeros((n_rows * cell, n_columns * cell), dtype=values.dtype)
    padded[:height, :width] = values
    blocks = padded.reshape(n_rows, cell, n_columns, cell).transpose(0, 2, 1, 3)
    return blocks.reshape(n_rows, n_columns, cell * cell)


def cell_velocity(
    velocity: np.ndarray,
    mask: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    cell: int,
) -> np.ndarray:
    """Describe the speed of the foreground pixels of each cell.

    Parameters
    ----------
    velocity : numpy.ndarray of float32, shape (H, W, 2)
        (dx, dy) in pixels per frame.
    mask : numpy.ndarray of shape (H, W)
        Foreground mask, non-zero for foreground.
    rows, columns : numpy.ndarray of int
        Cells from :func:`foreground_cells`; each must hold a foreground pixel.
    cell : int
        Cell side in pixels.

    Returns
    -------
    numpy.ndarray of float32, shape (n_cells, 2)
        Mean and 90th percentile of the magnitude, in pixels per frame.
    """
    features = np.zeros((len(rows), GRID_VELOCITY_DIM), dtype=np.float32)
    if len(rows) == 0:
        return features
    magnitude = np.hypot(velocity[..., 0], velocity[..., 1])
    speeds = _cell_blocks(magnitude, cell)[rows, columns]  # (n, cell^2)
    chosen = _cell_blocks(mask > 0, cell)[rows, columns]
    counts = chosen.sum(axis=1)
    features[:, 0] = np.where(chosen, speeds, 0.0).sum(axis=1) / counts

    # The percentile of each cell's foreground speeds, interpolated linearly as
    # numpy.percentile does. Background pixels sort to the end as +inf.
    ordered = np.sort(np.where(chosen, speeds, np.inf), axis=1)
    position = (counts - 1) * (_SPEED_PERCENTILE / 100.0)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, counts - 1)
    index = np.arange(len(rows))
    low_value, high_value = ordered[index, lower], ordered[index, upper]
    features[:, 1] = low_value + (high_value - low_value) * (position - lower)
    return features


def sample_feature_map(
    feature_map: np.ndarray, points_yx: np.ndarray, frame_shape: tuple[int, int]
) -> np.ndarray:
    """Interpolate a feature map bilinearly at pixel positions of its frame.

    Map position (i, j) of an h x w map is taken to describe the centre of tile
    (i, j) when the H x W frame is cut into h x w equal tiles. So pixel (y, x)
    falls at map position (y * h / H - 0.5, x * w / W - 0.5), and positions
    beyond the outer tile centres take the border value.

    Parameters
    ----------
    feature_map : numpy.ndarray of float32, shape (C, h, w)
    points_yx : numpy.ndarray of float, shape (n, 2)
        (y, x) in pixels of the frame.
    frame_shape : tuple of int
        (H, W) of the frame.

    Returns
    -------
    numpy.ndarray of float32, shape (n, C)
    """
    channels, map_height, map_width = feature_map.shape
    if len(points_yx) == 0:
        return np.zeros((0, channels), dtype=np.float32)
    height, width = frame_shape
    y = np.clip(points_yx[:, 0] * map_height / height - 0.5, 0, map_height - 1)
    x = np.clip(points_yx[:, 1] * map_width / width - 0.5, 0, map_width - 1)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    y1 = np.minimum(y0 + 1, map_height - 1)
    x1 = np.minimum(x0 + 1, map_width - 1)
    wy, wx = (y - y0)[:, None], (x - x0)[:, None]
    values = feature_map.transpose(1, 2, 0)  # (h, w, C)
    top = values[y0, x0] * (1 - wx) + values[y0, x1] * wx
    bottom = values[y1, x0] * (1 - wx) + values[y1, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


@dataclass
class _FrameCells:
    """Cells of one frame, before the backbone has seen the frame."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    boxes: np.ndarray  # float32 (n, 4)
    centres: np.ndarray  # float64 (n, 2), (y, x) in pixels
    velocity: np.ndarray  # float32 (n, 2)
    geometry: np.ndarray  # float32 (n, 2)


def _iter_frame_cells(source: FrameSource, config: FeatureConfig) -> Iterator:
    proposer = fitted_proposer(source, config)
    if proposer is None:
        return
    estimator = FlowEstimator(config.flow_preset)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def grays() -> Iterator[np.ndarray]:
        for rgb in checked_frames(source):
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            pending.append((rgb, proposer.foreground(gray)))
            yield gray

    cell = config.grid_cell
    for gray, velocity in iter_velocity(grays(), estimator, config.flow_gap):
        rgb, mask = pending.pop(0)
        height, width = gray.shape
        rows, columns = foreground_cells(mask, cell, config.grid_min_foreground)
        x0, y0 = columns * cell, rows * cell
        boxes = np.stack(
            [x0, y0, np.minimum(x0 + cell, width), np.minimum(y0 + cell, height)],
            axis=1,
        ).astype(np.float32)
        centres = np.stack(
            [(boxes[:, 1] + boxes[:, 3]) / 2.0, (boxes[:, 0] + boxes[:, 2]) / 2.0],
            axis=1,
        ).astype(np.float64)
        yield _FrameCells(
            rgb=rgb,
            boxes=boxes,
            centres=centres,
            velocity=cell_velocity(velocity, mask, rows, columns, cell),
            geometry=(centres / [height, width]).astype(np.float32),
        )


def extract_grid_features(
    source: FrameSource,
    config: FeatureConfig | None = None,
    backbone: Backbone | None = None,
    on_frame: Callable[[], None] | None = None,
) -> ClipFeatures:
    """Extract grid-cell features of one clip.

    Parameters
    ----------
    source : Path, str or callable
        Clip source, see :func:`mulde.features.objects.open_frames`. With a
        proposal method that learns a background, the clip is read twice.
    config : FeatureConfig, optional
        Defaults to ``FeatureConfig(mode="grid")``.
    backbone : Backbone, optional
        Built from ``config`` when omitted.
    on_frame : callable, optional
        Called once per frame after its feature map is sampled.

    Returns
    -------
    ClipFeatures
        Groups "velocity" (n_cells, 2), "appearance" (n_cells, backbone.dim) and
        "geometry" (n_cells, 2); ``boxes`` are the cells, cut at the frame border.
    """
    config = config or FeatureConfig(mode="grid")
    if backbone is None:
        backbone = build_backbone(config)
    done, appearance = consume_in_parallel(
        _iter_frame_cells(source, config),
        config,
        lambda frames, workers: _sample_appearance(
            frames,
            backbone,
            config.batch_size,
            workers,
            on_frame,
            config.grid_backbone_scale,
        ),
    )
    return _assemble(done, appearance, backbone.dim)


def _sample_appearance(
    frames: Iterable[_FrameCells],
    backbone: Backbone,
    batch_size: int,
    workers: int,
    on_frame: Callable[[], None] | None,
    scale: float = 1.0,
) -> tuple[list[_FrameCells], list[np.ndarray]]:
    """Run the backbone on batches of frames and sample each map at its cells.

    ``scale`` resizes each frame before the backbone.
    """

    def sample(batch: list[_FrameCells]) -> list[np.ndarray]:
        images = [item.rgb for item in batch]
        if scale != 1.0:
            # Map positions are relative to the frame, so the cells' pixel
            # centres need no rescaling.
            images = [
                cv2.resize(
                    rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR
                )
                for rgb in images
            ]
        maps = backbone.feature_map(np.stack(images))
        return [
            sample_feature_map(feature_map, item.centres, item.rgb.shape[:2])
            for feature_map, item in zip(maps, batch, strict=True)
        ]

    def batches() -> Iterator[list[_FrameCells]]:
        batch: list[_FrameCells] = []
        for item in frames:
            batch.append(item)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    done: list[_FrameCells] = []
    appearance: list[np.ndarray] = []
    for batch, sampled in zip_results(batches(), sample, workers):
        for item, rows in zip(batch, sampled, strict=True):
            item.rgb = item.rgb[:0]  # the frame is no longer needed
            done.append(item)
            appearance.append(rows)
            if on_frame is not None:
                on_frame()
    return done, appearance


# NOTE: every cell keeps the backbone's full feature vector (1,280 floats for
# EfficientNet-Lite0) until the pipeline's PCA, and the pipeline keeps all clips
# in memory, so very large training sets need a larger grid_cell.
def _assemble(
    frames: list[_FrameCells], appearance: list[np.ndarray], dim: int
) -> ClipFeatures:
    counts = [len(item.boxes) for item in frames]
    if sum(counts) == 0:
        return ClipFeatures(
            n_frames=len(frames),
            frame_index=np.zeros(0, dtype=np.int64),
            boxes=np.zeros((0, 4), dtype=np.float32),
            groups={
                "velocity": np.zeros((0, GRID_VELOCITY_DIM), dtype=np.float32),
                "appearance": np.zeros((0, dim), dtype=np.float32),
                "geometry": np.zeros((0, GRID_GEOMETRY_DIM), dtype=np.float32),
            },
        )
    return ClipFeatures(
        n_frames=len(frames),
        frame_index=np.repeat(np.arange(len(frames), dtype=np.int64), counts),
        boxes=np.concatenate([item.boxes for item in frames]),
        groups={
            "velocity": np.concatenate([item.velocity for item in frames]),
            "appearance": np.concatenate(appearance).astype(np.float32),
            "geometry": np.concatenate([item.geometry for item in frames]),
        },
    )

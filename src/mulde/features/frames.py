"""Frame-centric features of a clip: one row per frame.

Each frame gets two groups:

- ``"appearance"``: the backbone's last feature map of the whole frame, pooled
  over space. ``"meanmax"`` gives the mean and the max per channel (2 * C
  values), and ``"grid2"`` the mean over each cell of a 2x2 grid (4 * C values,
  cells in row-major order);
- ``"motion"``: :func:`mulde.features.flow.flow_statistics` of the frame's
  velocity field (direction and magnitude histograms, mean and percentiles of the
  magnitude), with frame 0's velocity defined as in :mod:`mulde.features.objects`.

Both groups are then averaged over a window of ``config.window`` frames, centred
on the frame or ending at it (``config.window_mode``). Windows are cut at the
ends of the clip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import cv2
import numpy as np

from mulde.features.backbone import Backbone
from mulde.features.cache import ClipFeatures, FeatureConfig, build_backbone
from mulde.features.flow import FlowEstimator, flow_statistics, flow_statistics_dim
from mulde.features.objects import (
    FrameSource,
    consume_in_parallel,
    iter_velocity,
    open_frames,
    zip_results,
)

__all__ = ["extract_frame_features", "pool_feature_map", "window_average"]

_PERCENTILES = (50.0, 90.0, 99.0)


def pool_feature_map(maps: np.ndarray, pooling: str = "meanmax") -> np.ndarray:
    """Pool feature maps over space.

    Parameters
    ----------
    maps : numpy.ndarray of float32, shape (N, C, h, w)
    pooling : str
        ``"meanmax"`` or ``"grid2"``.

    Returns
    -------
    numpy.ndarray of float32, shape (N, 2 * C) or (N, 4 * C)
    """
    n_images, channels, height, width = maps.shape
    if pooling == "meanmax":
        return np.concatenate([maps.mean(axis=(2, 3)), maps.max(axis=(2, 3))], axis=1)
    if pooling != "grid2":
        raise ValueError(f"invalid pooling {pooling!r}; valid values: meanmax, grid2")
    if height < 2 or width < 2:
        raise ValueError(
            f"grid2 pooling needs a feature map of at least 2x2, got {height}x{width}"
        )
    row_edges = [0, height // 2, height]
    column_edges = [0, width // 2, width]
    cells = [
        maps[
            :, :, row_edges[i] : row_edges[i + 1], column_edges[j] : column_edges[j + 1]
        ].mean(axis=(2, 3))
        for i in range(2)
        for j in range(2)
    ]
    # 4 x (N, C) -> (N, 4, C) -> (N, 4 * C), so each cell's channels are contiguous.
    return np.stack(cells, axis=1).reshape(n_images, 4 * channels)


def window_average(
    values: np.ndarray, window: int, mode: str = "centered"
) -> np.ndarray:
    """Average each row with its neighbours in time.

    Parameters
    ----------
    values : numpy.ndarray, shape (n_frames, d)
    window : int
        Window length in frames; 1 returns a copy.
    mode : str
        ``"centered"``: rows t - window // 2 .. t + (window - 1) // 2;
        ``"causal"``: rows t - window + 1 .. t. Windows are cut at the ends.

    Returns
    -------
    numpy.ndarray of float32, shape (n_frames, d)
    """
    if mode not in ("centered", "causal"):
        raise ValueError(
            f"invalid window mode {mode!r}; valid values: centered, causal"
        )
    n_frames = len(values)
    if window <= 1 or n_frames == 0:
        return np.asarray(values, dtype=np.float32).copy()
    before = window // 2 if mode == "centered" else window - 1
    after = window - 1 - before
    # Cumulative sums with a leading zero row give each window sum by one subtraction.
    cumulative = np.zeros((n_frames + 1, values.shape[1]), dtype=np.float64)
    np.cumsum(values, axis=0, out=cumulative[1:])
    index = np.arange(n_frames)
    start = np.clip(index - before, 0, n_frames)
    end = np.clip(index + after + 1, 0, n_frames)
    sums = cumulative[end] - cumulative[start]
    return (sums / (end - start)[:, None]).astype(np.float32)


def _iter_frames_and_motion(
    source: FrameSource, config: FeatureConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Yield each frame resized by ``frame_scale``, its motion and its (H, W)."""
    estimator = FlowEstimator(config.flow_preset)
    pending: list[tuple[np.ndarray, tuple[int, int]]] = []

    def grays() -> Iterator[np.ndarray]:
        for rgb in open_frames(source):
            original_shape = rgb.shape[:2]
            if config.frame_scale != 1.0:
                rgb = cv2.resize(
                    rgb,
                    None,
                    fx=config.frame_scale,
                    fy=config.frame_scale,
                    interpolation=cv2.INTER_AREA,
                )
            pending.append((rgb, original_shape))
            yield cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    for _, velocity in iter_velocity(grays(), estimator, config.flow_gap):
        motion = flow_statistics(
            velocity, config.direction_bins, config.magnitude_edges, _PERCENTILES
        )
        rgb, original_shape = pending.pop(0)
        yield rgb, motion, original_shape


def extract_frame_features(
    source: FrameSource,
    config: FeatureConfig | None = None,
    backbone: Backbone | None = None,
    on_frame: Callable[[], None] | None = None,
) -> ClipFeatures:
    """Extract frame-centric features of one clip.

    Parameters
    ----------
    source : Path, str or callable
        Clip source, see :func:`mulde.features.objects.open_frames`.
    config : FeatureConfig, optional
        Defaults to ``FeatureConfig(mode="frame")``.
    backbone : Backbone, optional
        Built from ``config`` when omitted.
    on_frame : callable, optional
        Called once per frame after its feature map is pooled.

    Returns
    -------
    ClipFeatures
        One row per frame, ``frame_index == arange(n_frames)``, boxes covering the
        whole frame, groups "appearance" (n_frames, 2 * C or 4 * C) and "motion"
        (n_frames, flow_statistics_dim).
    """
    config = config or FeatureConfig(mode="frame")
    if backbone is None:
        backbone = build_backbone(config)
    appearance, motion, original_shape = consume_in_parallel(
        _iter_frames_and_motion(source, config),
        config,
        lambda items, workers: _embed_frames(
            items, backbone, config, workers, on_frame
        ),
    )

    n_frames = len(motion)
    if n_frames == 0:
        return _empty_frame_features(config, backbone)
    # Boxes are in the pixels of the frames as read, before frame_scale.
    height, width = original_shape
    full_frame = np.array([0.0, 0.0, width, height], dtype=np.float32)
    return ClipFeatures(
        n_frames=n_frames,
        frame_index=np.arange(n_frames, dtype=np.int64),
        boxes=np.tile(full_frame, (n_frames, 1)),
        groups={
            "appearance": window_average(
                np.concatenate(appearance), config.window, config.window_mode
            ),
            "motion": window_average(
                np.stack(motion), config.window, config.window_mode
            ),
        },
    )


def _embed_frames(
    items: Iterable,
    backbone: Backbone,
    config: FeatureConfig,
    workers: int,
    on_frame: Callable[[], None] | None,
) -> tuple[list[np.ndarray], list[np.ndarray], tuple[int, int] | None]:
    """Pool the backbone feature maps of the frames in batches.

    Batches run in ``workers`` threads at once. Returns the pooled appearance
    batches, the per-frame motion vectors and the (H, W) of the frames as read,
    which is None for an empty clip.
    """

    def pool(batch: list[np.ndarray]) -> np.ndarray:
        # (B, H, W, 3) frames -> (B, C, h, w) maps -> (B, pooled dim)
        maps = backbone.feature_map(np.stack(batch))
        return pool_feature_map(maps, config.frame_pooling)

    appearance: list[np.ndarray] = []
    motion: list[np.ndarray] = []
    shapes: list[tuple[int, int]] = []

    def batches() -> Iterator[list[np.ndarray]]:
        batch: list[np.ndarray] = []
        for rgb, frame_motion, shape in items:
            if shapes and shape != shapes[0]:
                raise ValueError(f"frame size changed from {shapes[0]} to {shape}")
            shapes.append(shape)
            batch.append(rgb)
            motion.append(frame_motion)
            if len(batch) >= config.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch, pooled in zip_results(batches(), pool, workers):
        appearance.append(pooled)
        if on_frame is not None:
            for _ in batch:
                on_frame()
    return appearance, motion, shapes[0] if shapes else None


def _empty_frame_features(config: FeatureConfig, backbone: Backbone) -> ClipFeatures:
    pooled_dim = (2 if config.frame_pooling == "meanmax" else 4) * backbone.dim
    motion_dim = flow_statistics_dim(
        config.direction_bins, config.magnitude_edges, _PERCENTILES
    )
    return ClipFeatures(
        n_frames=0,
        frame_index=np.zeros(0, dtype=np.int64),
        boxes=np.zeros((0, 4), dtype=np.float32),
        groups={
            "appearance": np.zeros((0, pooled_dim), dtype=np.float32),
            "motion": np.zeros((0, motion_dim), dtype=np.float32),
        },
    )

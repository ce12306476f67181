"""Object-centric features of a clip, streamed frame by frame.

For each frame the proposer finds object boxes, and each object gets three feature
groups:

- ``"velocity"``: :func:`mulde.features.flow.box_flow_features` of the frame's
  velocity field inside the box;
- ``"appearance"``: the backbone embedding of a square crop around the box;
- ``"geometry"``: centre y / H, width / W, height / H, area / (W * H) and the
  aspect ratio width / height in pixels, where H and W are the frame size.

The velocity field of frame t > 0 is the motion since frame t - 1, sampled on the
pixel grid of frame t. Frame 0 has no previous frame, so its velocity field is the
flow from frame 0 to frame 1: the motion that frame 1 also gets, sampled on the
pixel grid of frame 0. A clip of one frame has zero velocity.

Decoding, flow, proposals and cropping run in a background thread while the
backbone embeds the crops of earlier frames in batches (OpenCV and torch release
the GIL), unless ``config.threaded`` is false. On CPUs the backbone runs one batch
per core at once, each with one torch thread, because torch's own thread pool
slows down by an order of magnitude when its threads compete with other busy
threads for cores (see ``FeatureConfig.backbone_workers``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from mulde.features.backbone import Backbone
from mulde.features.cache import ClipFeatures, FeatureConfig, build_backbone
from mulde.features.flow import FlowEstimator, box_flow_dim, box_flow_features
from mulde.features.proposals import BackgroundSampler, ProposalExtractor

__all__ = [
    "GEOMETRY_DIM",
    "FrameSource",
    "box_geometry",
    "checked_frames",
    "consume_in_parallel",
    "crop_boxes",
    "extract_object_features",
    "fitted_proposer",
    "iter_velocity",
    "open_frames",
    "available_cpus",
    "backbone_parallelism",
    "ordered_map",
    "prefetch",
    "torch_threads",
    "zip_results",
]

FrameSource = Path | str | Callable[[], Iterable[np.ndarray]]
GEOMETRY_DIM = 5

T = TypeVar("T")
R = TypeVar("R")


def open_frames(source: FrameSource) -> Iterator[np.ndarray]:
    """Start a new pass over the uint8 RGB frames (H, W, 3) of a clip.

    Parameters
    ----------
    source : Path, str or callable
        A folder of frames or a video file, read with
        :func:`mulde.video.readers.iter_frames`, or a callable that returns a new
        iterable of frames on each call (for tests and in-memory clips).
    """
    if callable(source):
        return iter(source())
    from mulde.video.readers import iter_frames

    return iter_frames(Path(source))


def prefetch(items: Iterable[T], maxsize: int = 8) -> Iterator[T]:
    """Iterate over ``items`` produced in a background thread.

    At most ``maxsize`` items wait in the queue. An exception in the producer is
    raised again in the consumer. When the consumer stops early, the producer
    stops at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as error:  # re-raised in the consumer thread
            put((False, error))
            return
        put((True, done))

    thread = threading.Thread(
        target=produce, name="mulde-features-producer", daemon=True
    )
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def available_cpus() -> int:
    """Return the number of CPU cores that this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS and Windows
        return os.cpu_count() or 1


def backbone_parallelism(config: FeatureConfig) -> tuple[int, int | None]:
    """Return the backbone worker count and torch thread count for ``config``.

    On CPU devices the defaults are one worker per available core and one torch
    intra-op thread. On other devices they are one worker and torch's current
    thread count (returned as None). Set fields of ``config`` take precedence.
    """
    on_cpu = torch.device(config.device).type == "cpu"
    workers = config.backbone_workers
    if workers is None:
        workers = available_cpus() if on_cpu else 1
    threads = config.torch_threads
    if threads is None and on_cpu:
        threads = 1
    return workers, threads


def consume_in_parallel(
    items: Iterator[T], config: FeatureConfig, consume: Callable[[Iterator[T], int], R]
) -> R:
    """Return ``consume(items, workers)`` run with the backbone's parallelism.

    With ``config.threaded`` the items are produced in a background thread, which
    stops at once if ``consume`` fails. Torch's thread count is that of
    :func:`backbone_parallelism` while ``consume`` runs.
    """
    if config.threaded:
        items = prefetch(items, maxsize=2 * config.batch_size)
    workers, threads = backbone_parallelism(config)
    with torch_threads(threads), closing(items):
        return consume(items, workers)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for a block and restore it afterwards.

    None leaves the count unchanged. The setting is process-wide, so other threads
    that run torch at the same time get the same count.
    """
    previous = torch.get_num_threads()
    changed = count is not None and count != previous
    if changed:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if changed:
            torch.set_num_threads(previous)


def ordered_map(
    function: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[R]:
    """Apply ``function`` to ``items`` in ``workers`` threads, yielding in order.

    At most ``2 * workers`` calls are submitted ahead of the result being yielded.
    With one worker the calls run in the calling thread.
    """
    if workers <= 1:
        for item in items:
            yield function(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mulde-backbone")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_velocity(
    grays: Iterable[np.ndarray], estimator: FlowEstimator, gap: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pair each grayscale frame with its velocity field.

    Frame t >= gap gets the motion since frame t - gap divided by ``gap``, in
    pixels per frame. Frames 0 < t < gap get the motion since frame 0, divided by
    t. Frame 0 is yielded once frame 1 has arrived, and its velocity is the flow
    from frame 0 to frame 1. A clip of a single frame gets zero velocity.

    Parameters
    ----------
    grays : iterable of numpy.ndarray of uint8, shape (H, W)
    estimator : FlowEstimator
    gap : int
        Frames between the two images of each flow. Slow objects move only a
        fraction of a pixel between consecutive frames, close to the error of
        the flow, so a longer gap measures their motion over more pixels.

    Yields
    ------
    gray : numpy.ndarray of uint8, shape (H, W)
    velocity : numpy.ndarray of float32, shape (H, W, 2)
        (dx, dy) in pixels per frame.
    """
    if gap < 1:
        raise ValueError(f"gap must be at least 1, got {gap}")
    earlier: deque[np.ndarray] = deque(maxlen=gap)
    n_frames = 0
    for gray in grays:
        n_frames += 1
        if n_frames == 2:
            yield earlier[0], estimator.flow(earlier[0], gray)
        if n_frames >= 2:
            # earlier[0] is frame t - gap, or frame 0 while t < gap.
            velocity = estimator.velocity(earlier[0], gray)
            span = min(gap, n_frames - 1)
            yield gray, velocity / span if span > 1 else velocity
        earlier.append(gray)
    if n_frames == 1:
        yield earlier[0], np.zeros(earlier[0].shape + (2,), dtype=np.float32)


def box_geometry(boxes: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Describe the position and shape of each box relative to the frame.

    Parameters
    ----------
    boxes : numpy.ndarray, shape (n_boxes, 4)
        (x0, y0, x1, y1) in pixels.
    frame_shape : tuple of int
        (H, W) of the frame.

    Returns
    -------
    numpy.ndarray of float32, shape (n_boxes, 5)
        Centre y / H, width / W, height / H, area / (W * H), width / height.
    """
    height, width = frame_shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box_width = boxes[:, 2] - boxes[:, 0]
    box_height = boxes[:, 3] - boxes[:, 1]
    geometry = np.stack(
        [
            (boxes[:, 1] + boxes[:, 3]) / (2.0 * height),
            box_width / width,
            box_height / height,
            box_width * box_height / (width * height),
            box_width / np.maximum(box_height, 1.0),
        ],
        axis=1,
    )
    return geometry.astype(np.float32)


def crop_boxes(
    image: np.ndarray, boxes: np.ndarray, size: int, context: float = 0.1
) -> np.ndarray:
    """Cut a square crop around each box and resize it to ``size`` x ``size``.

    The square's side is the box's longer side times ``1 + context``, centred on
    the box, so the object keeps its aspect ratio. Parts outside the frame repeat
    the border pixels.

    Parameters
    ----------
    image : numpy.ndarray of uint8, shape (H, W, 3)
    boxes : numpy.ndarray, shape (n_boxes, 4)
        (x0, y0, x1, y1) in pixels.
    size : int
        Output side in pixels.
    context : float
        Relative enlargement of the square.

    Returns
    -------
    numpy.ndarray of uint8, shape (n_boxes, size, size, 3)
    """
    height, width = image.shape[:2]
    crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for row, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64)):
        side = max(int(round(max(x1 - x0, y1 - y0) * (1.0 + context))), 2)
        left = int(round((x0 + x1 - side) / 2.0))
        top = int(round((y0 + y1 - side) / 2.0))
        inner_left, inner_top = max(left, 0), max(top, 0)
        inner_right, inner_bottom = min(left + side, width), min(top + side, height)
        patch = image[inner_top:inner_bottom, inner_left:inner_right]
        if patch.shape[0] != side or patch.shape[1] != side:
            patch = cv2.copyMakeBorder(
                patch,
                inner_top - top,
                top + side - inner_bottom,
                inner_left - left,
                left + side - inner_right,
                cv2.BORDER_REPLICATE,
            )
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops[row] = cv2.resize(patch, (size, size), interpolation=interpolation)
    return crops


@dataclass
class _FrameObjects:
    """Objects of one frame, before their crops are embedded."""

    index: int
    boxes: np.ndarray  # float32 (n, 4)
    velocity: np.ndarray  # float32 (n, d_velocity)
    geometry: np.ndarray  # float32 (n, 5)
    crops: np.ndarray  # uint8 (n, size, size, 3)


def fitted_proposer(source: FrameSource, config: FeatureConfig):
    """Build the proposer of ``config`` and fit its background to the clip.

    Returns None for a clip without frames. Proposal methods that learn a
    background read the clip once here.
    """
    proposer = ProposalExtractor(config.proposals)
    if config.proposals.needs_background:
        sampler = BackgroundSampler(config.proposals.background_frames)
        for rgb in open_frames(source):
            sampler.add(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        if not sampler.frames:
            return None
        proposer.fit(sampler.frames)
    return proposer


def checked_frames(source: FrameSource) -> Iterator[np.ndarray]:
    """Yield the frames of ``source``, checking that all are uint8 RGB of one size."""
    frame_shape = None
    for rgb in open_frames(source):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}"
            )
        if frame_shape is None:
            frame_shape = rgb.shape
        elif rgb.shape != frame_shape:
            raise ValueError(f"frame size changed from {frame_shape} to {rgb.shape}")
        yield rgb


def _iter_frame_objects(
    source: FrameSource, config: FeatureConfig
) -> Iterator[_FrameObjects]:
    """Yield the objects of each frame, without appearance, in frame order."""
    proposer = fitted_proposer(source, config)
    if proposer is None:
        return
    estimator = FlowEstimator(config.flow_preset)
    # Boxes must be proposed in frame order, before frame 0's velocity is known,
    # because the "diff" and adaptive proposers keep state between frames.
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def grays() -> Iterator[np.ndarray]:
        for rgb in checked_frames(source):
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            boxes, mask = proposer.propose_with_mask(gray, rgb)
            pending.append((rgb, boxes, mask if config.flow_on_foreground else None))
            yield gray

    for index, (gray, velocity) in enumerate(
        iter_velocity(grays(), estimator, config.flow_gap)
    ):
        rgb, boxes, mask = pending.pop(0)
        yield _FrameObjects(
            index=index,
            boxes=boxes,
            velocity=box_flow_features(
                velocity, boxes, config.direction_bins, config.magnitude_edges, mask
            ),
            geometry=box_geometry(boxes, gray.shape),
            crops=crop_boxes(rgb, boxes, config.crop_size, config.crop_context),
        )


def extract_object_features(
    source: FrameSource,
    config: FeatureConfig | None = None,
    backbone: Backbone | None = None,
    on_frame: Callable[[], None] | None = None,
) -> ClipFeatures:
    """Extract object-centric features of one clip.

    Parameters
    ----------
    source : Path, str or callable
        Clip source, see :func:`open_frames`. With a proposal method that learns a
        background, the clip is read twice: once to sample background frames and
        once to extract.
    config : FeatureConfig, optional
        Defaults to ``FeatureConfig(mode="object")``.
    backbone : Backbone, optional
        Built from ``config`` when omitted.
    on_frame : callable, optional
        Called once per frame after its objects are embedded.

    Returns
    -------
    ClipFeatures
        Groups "velocity" (n_obj, box_flow_dim), "appearance" (n_obj, backbone.dim)
        and "geometry" (n_obj, 5).
    """
    config = config or FeatureConfig(mode="object")
    if backbone is None:
        backbone = build_backbone(config)
    done, appearance = consume_in_parallel(
        _iter_frame_objects(source, config),
        config,
        lambda frames, workers: _embed_crops(
            frames, backbone, config.batch_size, workers, on_frame
        ),
    )
    return _assemble(done, appearance, config, backbone.dim)


def _embed_crops(
    frames: Iterable[_FrameObjects],
    backbone: Backbone,
    batch_size: int,
    workers: int,
    on_frame: Callable[[], None] | None,
) -> tuple[list[_FrameObjects], list[np.ndarray]]:
    """Embed the crops of the frames in batches of at least ``batch_size`` crops.

    Batches run in ``workers`` threads at once. Returns the frames in order and the
    embeddings of their crops in the same order.
    """

    def embed(group: list[_FrameObjects]) -> np.ndarray | None:
        crops = [item.crops for item in group if len(item.crops)]
        if not crops:
            return None
        return backbone.embed(np.concatenate(crops, axis=0))

    done: list[_FrameObjects] = []
    appearance: list[np.ndarray] = []
    groups = _group_frames(frames, batch_size)
    for group, embeddings in zip_results(groups, embed, workers):
        done.extend(group)
        if embeddings is not None:
            appearance.append(embeddings)
        if on_frame is not None:
            for _ in group:
                on_frame()
    return done, appearance


def _group_frames(
    frames: Iterable[_FrameObjects], batch_size: int
) -> Iterator[list[_FrameObjects]]:
    """Group consecutive frames until each group has ``batch_size`` boxes or more."""
    group: list[_FrameObjects] = []
    n_boxes = 0
    for item in frames:
        group.append(item)
        n_boxes += len(item.boxes)
        if n_boxes >= batch_size:
            yield group
            group, n_boxes = [], 0
    if group:
        yield group


def zip_results(
    items: Iterable[T], function: Callable[[T], R], workers: int
) -> Iterator[tuple[T, R]]:
    """Yield each item with ``function(item)``, computed by :func:`ordered_map`."""
    return ordered_map(lambda item: (item, function(item)), items, workers)


def _assemble(
    frames: list[_FrameObjects],
    appearance: list[np.ndarray],
    config: FeatureConfig,
    dim: int,
) -> ClipFeatures:
    counts = [len(item.boxes) for item in frames]
    velocity_dim = box_flow_dim(config.direction_bins, config.magnitude_edges)
    if sum(counts) == 0:
        boxes = np.zeros((0, 4), dtype=np.float32)
        velocity = np.zeros((0, velocity_dim), dtype=np.float32)
        geometry = np.zeros((0, GEOMETRY_DIM), dtype=np.float32)
        embeddings = np.zeros((0, dim), dtype=np.float32)
    else:
        boxes = np.concatenate([item.boxes for item in frames]).astype(np.float32)
        velocity = np.concatenate([item.velocity for item in frames])
        geometry = np.concatenate([item.geometry for item in frames])
        embeddings = np.concatenate(appearance)
    frame_index = np.repeat(np.arange(len(frames), dtype=np.int64), counts)
    return ClipFeatures(
        n_frames=len(frames),
        frame_index=frame_index,
        boxes=boxes,
        groups={"velocity": velocity, "appearance": embeddings, "geometry": geometry},
    )

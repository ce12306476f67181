"""Object proposals for a fixed camera from background subtraction.

A foreground mask comes from one of four methods:

- ``"median"``: the absolute difference to a per-pixel median background learnt
  from frames sampled over the whole clip (needs a first pass over the clip, see
  :meth:`ProposalExtractor.fit`);
- ``"mog2"`` or ``"knn"``: OpenCV's adaptive background subtractors, warmed up on
  the same sampled frames;
- ``"diff"``: the absolute difference to the previous frame (the first frame of a
  clip has no proposals).

The mask is cleaned with a morphological opening, closing and dilation, its
connected components larger than ``min_area`` become boxes, boxes are padded, and
boxes that overlap are merged. The OpenCV HOG people detector can add boxes. Every
step is deterministic.

Boxes are float32 rows (x0, y0, x1, y1) in pixels with exclusive ends, clipped to
the frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from mulde.validation import check_field_types, check_known_keys

__all__ = [
    "PROPOSAL_METHODS",
    "BackgroundSampler",
    "ProposalConfig",
    "ProposalExtractor",
    "box_iou",
    "merge_boxes",
]

PROPOSAL_METHODS = ("median", "mog2", "knn", "diff")


# Morphology kernels beyond this diameter in pixels are wider than most frames,
# and OpenCV's time and memory grow with the kernel's area.
MAX_KERNEL_SIZE = 255


@dataclass(frozen=True)
class ProposalConfig:
    """Parameters of :class:`ProposalExtractor`.

    Parameters
    ----------
    method : str
        Foreground method: ``"median"``, ``"mog2"``, ``"knn"`` or ``"diff"``.
    threshold : float
        Gray-level difference (0-255) above which a pixel is foreground for
        ``"median"`` and ``"diff"``. MOG2 uses it as its variance threshold, and
        KNN uses its square as the squared distance threshold.
    background_frames : int
        Maximum number of frames, sampled evenly over the clip, that
        ``"median"``, ``"mog2"`` and ``"knn"`` learn the background from.
    open_size, close_size, dilate_size : int
        Diameters in pixels of the elliptic kernels of the opening (removes
        specks), closing (fills holes) and dilation (joins the parts of one
        object) of the mask; 0 or 1 skips that step.
    min_area : int
        Minimum connected-component area in pixels, after morphology.
    max_area_fraction : float
        Components larger than this fraction of the frame are dropped, because they
        come from global changes such as lighting.
    padding : int
        Pixels added to each side of each box before merging.
    merge_overlap : float
        Two boxes are merged into their union when their intersection covers more
        than this fraction of the smaller box. Merging repeats until no pair
        qualifies.
    use_hog : bool
        Add the boxes of OpenCV's HOG people detector. It is off by default
        because it is slow and its 64x128 window needs upscaled frames for small
        pedestrians.
    hog_scale : float
        Factor by which frames are upscaled before the HOG detector runs.
    hog_min_score : float
        Minimum SVM score of a HOG detection.
    """

    method: str = "median"
    threshold: float = 20.0
    background_frames: int = 50
    open_size: int = 3
    close_size: int = 5
    dilate_size: int = 3
    min_area: int = 40
    max_area_fraction: float = 0.5
    padding: int = 2
    merge_overlap: float = 0.5
    use_hog: bool = False
    hog_scale: float = 2.0
    hog_min_score: float = 0.5

    def __post_init__(self) -> None:
        check_field_types(self, "features.proposals.")
        if self.method not in PROPOSAL_METHODS:
            raise ValueError(
                f"unknown proposal method {self.method!r}; valid methods: "
                f"{', '.join(PROPOSAL_METHODS)}"
            )
        if not 0 < self.threshold < math.inf:
            raise ValueError(
                f"features.proposals.threshold must be positive and finite, got "
                f"{self.threshold}; with the median and diff methods it is the "
                "grey-level difference (0 to 255) above which a pixel counts as "
                "foreground"
            )
        if self.background_frames < 1:
            raise ValueError(
                f"background_frames must be at least 1, got {self.background_frames}"
            )
        for name in ("open_size", "close_size", "dilate_size", "min_area", "padding"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must be non-negative, got {getattr(self, name)}"
                )
        for name in ("open_size", "close_size", "dilate_size"):
            if getattr(self, name) > MAX_KERNEL_SIZE:
                raise ValueError(
                    f"features.proposals.{name}={getattr(self, name)} is larger "
                    f"than {MAX_KERNEL_SIZE} px, wider than most frames; it is the "
                    "diameter of a morphology kernel, a few pixels for a mask's "
                    "specks and holes"
                )
        if not 0.0 < self.max_area_fraction <= 1.0:
            raise ValueError(
                f"max_area_fraction must be in (0, 1], got {self.max_area_fraction}"
            )
        if not 0.0 <= self.merge_overlap <= 1.0:
            raise ValueError(
                f"merge_overlap must be in [0, 1], got {self.merge_overlap}"
            )
        if self.hog_scale <= 0:
            raise ValueError(f"hog_scale must be positive, got {self.hog_scale}")

    @property
    def needs_background(self) -> bool:
        """Whether :meth:`ProposalExtractor.fit` must run before proposals."""
        return self.method in ("median", "mog2", "knn")

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ProposalConfig:
        """Build a config from a dict, rejecting unknown keys."""
        check_known_keys(
            "features.proposals", values, [field.name for field in fields(cls)]
        )
        return cls(**values)


class BackgroundSampler:
    """Keep an evenly spaced sample of at most ``max_frames`` streamed frames.

    Frames are kept at a stride that doubles (dropping every other kept frame)
    whenever the sample would exceed ``max_frames``, so the clip length need not be
    known in advance and memory stays bounded.
    """

    def __init__(self, max_frames: int) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.stride = 1
        self.frames: list[np.ndarray] = []
        self._count = 0

    def add(self, frame: np.ndarray) -> None:
        """Offer the next frame of the stream."""
        if self._count % self.stride == 0:
            self.frames.append(frame)
            if len(self.frames) > self.max_frames:
                self.frames = self.frames[::2]
                self.stride *= 2
        self._count += 1


class ProposalExtractor:
    """Stateful box proposer for the frames of one clip, in order.

    Parameters
    ----------
    config : ProposalConfig
    """

    def __init__(self, config: ProposalConfig | None = None) -> None:
        self.config = config or ProposalConfig()
        self.background: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._subtractor = None
        self._hog = None
        if self.config.use_hog:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        size = self.config
        self._kernels = {
            "open": _ellipse(size.open_size),
            "close": _ellipse(size.close_size),
            "dilate": _ellipse(size.dilate_size),
        }

    def fit(self, frames: Iterable[np.ndarray]) -> None:
        """Learn the background from sample frames of the clip.

        For ``"median"`` the background is the per-pixel median of the frames. For
        ``"mog2"`` and ``"knn"`` a new subtractor is fed the frames in order, after
        seeding OpenCV's random number generator of the calling thread with 0. For
        ``"diff"`` this does nothing.

        Parameters
        ----------
        frames : iterable of numpy.ndarray of uint8, shape (H, W)
            Grayscale frames, for example :attr:`BackgroundSampler.frames`.
        """
        method = self.config.method
        self._previous = None
        if method == "diff":
            return
        frames = list(frames)
        if not frames:
            raise ValueError("fit needs at least one frame")
        if method == "median":
            # (n_samples, H, W) -> (H, W)
            self.background = np.median(np.stack(frames), axis=0).astype(np.uint8)
            return
        # KNN draws random numbers from the calling thread's OpenCV generator, so
        # seeding it makes the proposals repeatable.
        cv2.setRNGSeed(0)
        if method == "mog2":
            self._subtractor = cv2.createBackgroundSubtractorMOG2(
                history=500, varThreshold=self.config.threshold, detectShadows=False
            )
            # Only mixture components with at least 70% of the weight count as
            # background (OpenCV's default is 90%). With the default, objects that
            # cross a pixel in more than 10% of the sample frames become background.
            self._subtractor.setBackgroundRatio(0.7)
        else:
            self._subtractor = cv2.createBackgroundSubtractorKNN(
                history=500,
                dist2Threshold=self.config.threshold**2,
                detectShadows=False,
            )
        for frame in frames:
            self._subtractor.apply(frame)

    def foreground(self, gray: np.ndarray) -> np.ndarray:
        """Compute the cleaned foreground mask of the next frame.

        Parameters
        ----------
        gray : numpy.ndarray of uint8, shape (H, W)

        Returns
        -------
        numpy.ndarray of uint8, shape (H, W)
            255 for foreground, 0 for background.
        """
        method = self.config.method
        if method == "diff":
            previous, self._previous = self._previous, gray
            if previous is None:
                return np.zeros_like(gray)
            raw = _threshold(cv2.absdiff(gray, previous), self.config.threshold)
        elif method == "median":
            if self.background is None:
                raise RuntimeError(
                    "call fit() with sample frames before proposing boxes"
                )
            raw = _threshold(cv2.absdiff(gray, self.background), self.config.threshold)
        else:
            if self._subtractor is None:
                raise RuntimeError(
                    "call fit() with sample frames before proposing boxes"
                )
            raw = self._subtractor.apply(gray)
        return self._clean(raw)

    def propose(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        """Propose object boxes in the next frame of the clip.

        Parameters
        ----------
        gray : numpy.ndarray of uint8, shape (H, W)
        rgb : numpy.ndarray of uint8, shape (H, W, 3), optional
            Colour frame for the HOG detector; the gray frame is used when omitted.

        Returns
        -------
        numpy.ndarray of float32, shape (n_boxes, 4)
            (x0, y0, x1, y1), sorted by x0 then y0.
        """
        return self.propose_with_mask(gray, rgb)[0]

    def propose_with_mask(
        self, gray: np.ndarray, rgb: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Propose boxes as :meth:`propose` does, and return the foreground mask.

        Returns
        -------
        boxes : numpy.ndarray of float32, shape (n_boxes, 4)
        mask : numpy.ndarray of uint8, shape (H, W)
            The cleaned foreground mask the boxes came from.
        """
        height, width = gray.shape
        mask = self.foreground(gray)
        boxes = self.boxes_from_mask(mask)
        if self._hog is not None:
            boxes = np.concatenate(
                [boxes, self._detect_people(gray if rgb is None else rgb)]
            )
        boxes = _pad_and_clip(boxes, self.config.padding, width, height)
        boxes = merge_boxes(boxes, self.config.merge_overlap)
        order = np.lexsort((boxes[:, 1], boxes[:, 0]))
        return boxes[order], mask

    def boxes_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """Return the boxes of the mask's large enough connected components.

        Parameters
        ----------
        mask : numpy.ndarray of uint8, shape (H, W)

        Returns
        -------
        numpy.ndarray of float32, shape (n_boxes, 4)
        """
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        stats = stats[1:]  # row 0 is the background component
        max_area = self.config.max_area_fraction * mask.size
        keep = (stats[:, cv2.CC_STAT_AREA] >= self.config.min_area) & (
            stats[:, cv2.CC_STAT_AREA] <= max_area
        )
        stats = stats[keep]
        boxes = np.empty((len(stats), 4), dtype=np.float32)
        boxes[:, 0] = stats[:, cv2.CC_STAT_LEFT]
        boxes[:, 1] = stats[:, cv2.CC_STAT_TOP]
        boxes[:, 2] = stats[:, cv2.CC_STAT_LEFT] + stats[:, cv2.CC_STAT_WIDTH]
        boxes[:, 3] = stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT]
        return boxes

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        if self._kernels["open"] is not None:
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernels["open"])
        if self._kernels["close"] is not None:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernels["close"])
        if self._kernels["dilate"] is not None:
            mask = cv2.dilate(mask, self._kernels["dilate"])
        return mask

    def _detect_people(self, image: np.ndarray) -> np.ndarray:
        scale = self.config.hog_scale
        resized = cv2.resize(
            image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR
        )
        rects, scores = self._hog.detectMultiScale(resized, winStride=(8, 8))
        if len(rects) == 0:
            return np.zeros((0, 4), dtype=np.float32)
        # (n, 1) or (n,) scores -> (n,)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        rects = np.asarray(rects, dtype=np.float32)[scores >= self.config.hog_min_score]
        boxes = np.empty((len(rects), 4), dtype=np.float32)
        boxes[:, :2] = rects[:, :2] / scale
        boxes[:, 2:] = (rects[:, :2] + rects[:, 2:]) / scale
        return boxes


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Compute the intersection over union of every pair of boxes.

    Parameters
    ----------
    first : numpy.ndarray, shape (n, 4)
    second : numpy.ndarray, shape (m, 4)
        (x0, y0, x1, y1) boxes.

    Returns
    -------
    numpy.ndarray of float64, shape (n, m)
    """
    intersection = _intersection(first, second)
    union = _area(first)[:, None] + _area(second)[None, :] - intersection
    return np.divide(
        intersection, union, out=np.zeros_like(intersection), where=union > 0
    )


def merge_boxes(boxes: np.ndarray, overlap: float = 0.5) -> np.ndarray:
    """Merge boxes whose intersection covers more than ``overlap`` of the smaller one.

    Each qualifying pair is replaced by its union, and merging repeats until no
    pair qualifies. The result does not depend on the input order.

    Parameters
    ----------
    boxes : numpy.ndarray, shape (n, 4)
        (x0, y0, x1, y1) boxes.
    overlap : float
        Fraction in [0, 1]. With 0 every pair that intersects at all is merged.

    Returns
    -------
    numpy.ndarray of float32, shape (n_merged, 4)
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    while len(boxes) > 1:
        intersection = _intersection(boxes, boxes)
        area = _area(boxes)
        smaller = np.minimum(area[:, None], area[None, :])
        qualifies = (intersection > overlap * smaller) & (intersection > 0)
        np.fill_diagonal(qualifies, False)
        if not qualifies.any():
            break
        # Join each connected group of qualifying pairs into one box at once.
        n_groups, labels = _connected_groups(qualifies)
        merged = np.empty((n_groups, 4), dtype=np.float32)
        for group in range(n_groups):
            members = boxes[labels == group]
            merged[group, :2] = members[:, :2].min(axis=0)
            merged[group, 2:] = members[:, 2:].max(axis=0)
        boxes = merged
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    return boxes[order]


def _connected_groups(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Label the connected components of a symmetric boolean adjacency matrix."""
    from scipy.sparse.csgraph import connected_components

    return connected_components(adjacency, directed=False)


def _intersection(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    first = np.asarray(first, dtype=np.float64).reshape(-1, 4)
    second = np.asarray(second, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(first[:, None, 2], second[None, :, 2]) - np.maximum(
        first[:, None, 0], second[None, :, 0]
    )
    height = np.minimum(first[:, None, 3], second[None, :, 3]) - np.maximum(
        first[:, None, 1], second[None, :, 1]
    )
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )


def _pad_and_clip(
    boxes: np.ndarray, padding: int, width: int, height: int
) -> np.ndarray:
    boxes = boxes.astype(np.float32, copy=True)
    boxes[:, :2] -= padding
    boxes[:, 2:] += padding
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes


def _threshold(difference: np.ndarray, threshold: float) -> np.ndarray:
    _, mask = cv2.threshold(difference, threshold, 255, cv2.THRESH_BINARY)
    return mask


def _ellipse(diameter: int) -> np.ndarray | None:
    if diameter <= 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))

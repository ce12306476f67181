"""Feature records, the feature configuration, and cached extraction of datasets.

:func:`extract_dataset` writes one ``.npz`` file per clip under
``cache_dir/<mode>-<hash12>/<split>/<clip>.npz``, where ``hash12`` is the first
12 hex digits of the SHA-256 of the configuration fields that change features.
Next to the split folders, ``manifest.json`` records the extractor, the package
version, the configuration, the backbone, and each clip's frame count and source
signature (path, modification time, size, and for frame folders a digest of the
file names, sizes and times). A clip is reused when its manifest entry matches
its current source and its file loads, so an interrupted run resumes where it
stopped and a changed source is extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from mulde.features.backbone import (
    _TORCHVISION_PREFIX,
    Backbone,
    get_backbone,
    list_backbones,
)
from mulde.features.flow import DEFAULT_MAGNITUDE_EDGES, FLOW_PRESETS
from mulde.features.proposals import ProposalConfig
from mulde.network import dtype_name, resolve_device, resolve_precision
from mulde.persistence import check_file_target, default_file_mode
from mulde.validation import check_field_types, check_known_keys
from mulde.video.clips import Clip, VideoDataset

__all__ = [
    "EXTRACTOR_NAME",
    "FEATURE_MODES",
    "ClipFeatureFiles",
    "ClipFeatures",
    "DatasetFeatures",
    "FeatureConfig",
    "build_backbone",
    "cache_folder",
    "extract_clip",
    "extract_dataset",
    "load_clip_features",
    "save_clip_features",
]

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "mulde.features"
# Bump when a change to the extraction code changes the features, so that old
# caches land in a different folder.
EXTRACTOR_VERSION = 1
FEATURE_MODES = ("grid", "object", "frame")
OBJECT_GROUPS = ("velocity", "appearance", "geometry")
FRAME_GROUPS = ("appearance", "motion")
WINDOW_MODES = ("centered", "causal")
PRECISIONS = ("auto", "float32", "bfloat16")
# Cells smaller than 4 px hold too few pixels for a speed percentile and give
# hundreds of rows per frame. A cell beyond 512 px is larger than most frames.
MIN_GRID_CELL, MAX_GRID_CELL = 4, 512
# Validity bounds, not tuned values: beyond them a setting is a typing slip.
MAX_FRAME_SPAN = 1000  # flow_gap and window, in frames
MAX_CROP_CONTEXT = 10.0
MIN_FRAME_SCALE, MAX_FRAME_SCALE = 0.01, 16.0
FRAME_POOLINGS = ("meanmax", "grid2")
MANIFEST_NAME = "manifest.json"
# FeatureConfig fields that change speed but not the features, left out of the hash.
_RUNTIME_FIELDS = (
    "device",
    "batch_size",
    "threaded",
    "backbone_workers",
    "torch_threads",
)
# Fields that only some modes read, by field; every other field serves all modes.
_MODE_FIELDS = {
    "crop_size": ("object",),
    "crop_context": ("object",),
    "flow_on_foreground": ("object",),
    "direction_bins": ("object", "frame"),
    "magnitude_edges": ("object", "frame"),
    "proposals": ("object", "grid"),
    "grid_cell": ("grid",),
    "grid_min_foreground": ("grid",),
    "grid_backbone_scale": ("grid",),
    "window": ("frame",),
    "window_mode": ("frame",),
    "frame_pooling": ("frame",),
    "frame_scale": ("frame",),
}
_TEMP_PREFIX = ".tmp-"
# Source signature key of a frame folder's file names, sizes and times. Manifests
# written before it existed lack it (see _load_cached).
_FILES_DIGEST_KEY = "files_sha256"
# Writing one clip's file takes well under a second, so a temporary file this old
# belongs to a run that was killed.
_STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class ClipFeatures:
    """Feature rows of one clip: one row per object, or one row per frame.

    Parameters
    ----------
    n_frames : int
        Number of frames read from the clip.
    frame_index : numpy.ndarray of int64, shape (n_rows,)
        Frame of each row, in [0, n_frames) and non-decreasing. Frames without
        objects have no rows.
    boxes : numpy.ndarray of float32, shape (n_rows, 4)
        (x0, y0, x1, y1) in pixels with exclusive ends; the whole frame for
        frame-centric rows.
    groups : dict of str to numpy.ndarray of float32, shape (n_rows, d_group)
        Named feature groups: "velocity", "appearance" and "geometry" for
        object-centric features, "appearance" and "motion" for frame-centric ones.
    """

    n_frames: int
    frame_index: np.ndarray
    boxes: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_rows(self) -> int:
        """Number of feature rows."""
        return len(self.frame_index)

    def validate(self) -> None:
        """Raise ``ValueError`` if shapes, dtypes or frame indices are inconsistent."""
        n_rows = len(self.frame_index)
        if self.n_frames < 0:
            raise ValueError(f"n_frames must be non-negative, got {self.n_frames}")
        if self.frame_index.ndim != 1 or self.frame_index.dtype != np.int64:
            raise ValueError(
                "frame_index must be a 1-D int64 array, got "
                f"{self.frame_index.dtype} of shape {self.frame_index.shape}"
            )
        if n_rows and (
            self.frame_index.min() < 0 or self.frame_index.max() >= self.n_frames
        ):
            raise ValueError(f"frame_index values must lie in [0, {self.n_frames})")
        if n_rows and np.any(np.diff(self.frame_index) < 0):
            raise ValueError("frame_index must be non-decreasing")
        if self.boxes.shape != (n_rows, 4) or self.boxes.dtype != np.float32:
            raise ValueError(
                f"boxes must be float32 of shape ({n_rows}, 4), got {self.boxes.dtype} "
                f"of shape {self.boxes.shape}"
            )
        for name, values in self.groups.items():
            if values.ndim != 2 or len(values) != n_rows or values.dtype != np.float32:
                raise ValueError(
                    f"group {name!r} must be float32 of shape ({n_rows}, d), got "
                    f"{values.dtype} of shape {values.shape}"
                )

    def features(self, groups: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
        """Concatenate feature groups column-wise.

        Parameters
        ----------
        groups : sequence of str, optional
            Group names in the order wanted; all groups in stored order by default.

        Returns
        -------
        numpy.ndarray of float32, shape (n_rows, sum of d_group)
        """
        names = list(self.groups) if groups is None else list(groups)
        missing = [name for name in names if name not in self.groups]
        if missing:
            raise KeyError(
                f"unknown group(s) {missing}; available: {list(self.groups)}"
            )
        if not names:
            return np.zeros((self.n_rows, 0), dtype=np.float32)
        return np.concatenate([self.groups[name] for name in names], axis=1)


class DatasetFeatures(dict):
    """Features of a dataset keyed by split, then clip name.

    A plain dict of splits with one extra attribute, ``timings``, that maps each
    split to the seconds spent extracting its clips (close to 0 when every clip
    came from the cache). Each split is a ``dict[str, ClipFeatures]``, or a
    :class:`ClipFeatureFiles` when :func:`extract_dataset` was called with
    ``lazy=True``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timings: dict[str, float] = {}


class ClipFeatureFiles(Mapping[str, ClipFeatures]):
    """Clip features of one split that stay in their cache files until looked up.

    Each lookup reads the clip's file with :func:`load_clip_features` and keeps
    no reference to the result, so a loop over ``items()`` keeps one clip's
    features at a time and a second lookup reads the file again. Frame and row
    counts come from the manifest and need no file reads.

    Parameters
    ----------
    paths : dict of str to Path
        Feature file of each clip, in clip order.
    n_frames, n_rows : dict of str to int
        Frame and row count of each clip, as the manifest records them.
    """

    def __init__(
        self,
        paths: dict[str, Path],
        n_frames: dict[str, int],
        n_rows: dict[str, int],
    ) -> None:
        if not set(paths) == set(n_frames) == set(n_rows):
            raise ValueError(
                "paths, n_frames and n_rows must name the same clips, got "
                f"{sorted(paths)}, {sorted(n_frames)} and {sorted(n_rows)}"
            )
        self._paths = dict(paths)
        self._n_frames = dict(n_frames)
        self._n_rows = dict(n_rows)

    def __getitem__(self, name: str) -> ClipFeatures:
        path = self._paths[name]
        try:
            features = load_clip_features(path)
        except ValueError as error:
            raise ValueError(
                f"Cached features of clip {name} could not be read: {error}. The "
                "file changed after extract_dataset checked it; run again, which "
                "extracts the clip anew."
            ) from error
        if (features.n_frames, features.n_rows) != (
            self._n_frames[name],
            self._n_rows[name],
        ):
            raise ValueError(
                f"Feature file {path} has {features.n_frames} frames and "
                f"{features.n_rows} rows, but the manifest records "
                f"{self._n_frames[name]} and {self._n_rows[name]}. The file "
                f"changed after extract_dataset checked it; run again, which "
                f"extracts clip {name} anew."
            )
        return features

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def frame_counts(self) -> dict[str, int]:
        """Return the number of frames of each clip, in clip order."""
        return {name: self._n_frames[name] for name in self._paths}

    def row_counts(self) -> dict[str, int]:
        """Return the number of feature rows of each clip, in clip order."""
        return {name: self._n_rows[name] for name in self._paths}


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of feature extraction.

    Parameters
    ----------
    mode : str
        ``"grid"`` for one row per grid cell with foreground
        (:mod:`mulde.features.grid`), ``"object"`` for one row per proposed
        object, ``"frame"`` for one row per frame.
    backbone : str
        Backbone registry name, see :func:`mulde.features.backbone.get_backbone`.
    crop_size : int
        Side in pixels of the square crops that the backbone embeds (object mode).
        The default 64 keeps object extraction fast on CPUs. On a 2-core AMD
        EPYC, EfficientNet-Lite0 embedded about 500 crops per second per thread
        at 64 px and about 180 at 96 px.
    crop_context : float
        Fraction by which the square around each box is enlarged before cropping.
    flow_on_foreground : bool
        Describe each object's motion by the flow of its foreground pixels only
        (object mode). Otherwise every pixel of its box counts, and the static
        background inside the box lowers its measured speed.
    flow_preset : str
        OpenCV DIS preset: ``"ultrafast"``, ``"fast"`` or ``"medium"``. The
        default comes from the UCSD Ped2 training clips alone, by ``python -m
        benchmarks.flow_gap --presets ultrafast,fast,medium``: at a gap of 4,
        the ratio of the median flow on foreground pixels to the 99th percentile
        on static background was 0.88 with ``"ultrafast"``, 0.98 with
        ``"fast"`` and 1.64 with ``"medium"``, whose error on the background is
        half that of ``"ultrafast"`` at the same foreground flow. ``"fast"``
        smooths the motion of small objects into the background. On 240 x 360
        frames ``"medium"`` took 6.0 ms per flow on 2 cores of a Xeon, against
        0.9 ms for ``"ultrafast"``.
    flow_gap : int
        Frames between the two images of each flow; velocities stay in pixels
        per frame. The default comes from the UCSD Ped2 training clips alone (10
        frames/s), by ``python -m benchmarks.flow_gap``: the ratio of the median
        flow on foreground pixels to the 99th percentile on static background,
        with "ultrafast", was 0.74 at a gap of 1, 0.86 at 3, 0.88 at 4 and 0.84
        at 6, and with "medium" 1.61 at 2, 1.64 at 4 and 1.39 at 6. Videos with
        more frames per second may prefer a longer gap.
    direction_bins : int
        Number of flow direction bins.
    magnitude_edges : tuple of float
        Increasing inner edges of the flow magnitude bins in pixels per frame.
    proposals : ProposalConfig
        Object proposal parameters (object mode) and the foreground mask (object
        and grid modes).
    grid_cell : int
        Side of the grid cells in pixels (grid mode). The default of 20 px is
        about half the height of a pedestrian in UCSD Ped2 (240 x 360 frames).
    grid_min_foreground : float
        Share of a cell's pixels that must be foreground for the cell to become a
        row (grid mode).
    grid_backbone_scale : float
        Factor by which each frame is resized before the backbone sees it (grid
        mode). Above 1, small objects cover more of the stride-32 feature map,
        at about the square of the factor in backbone time.
    window : int
        Number of frames that frame-centric features are averaged over (frame
        mode); 1 disables averaging.
    window_mode : str
        ``"centered"`` averages frames t - window // 2 .. t + (window - 1) // 2,
        ``"causal"`` averages frames t - window + 1 .. t; windows are cut at the
        ends of the clip.
    frame_pooling : str
        Spatial pooling of the frame feature map (frame mode): ``"meanmax"``
        (mean and max over space) or ``"grid2"`` (mean over each cell of a 2x2
        grid).
    frame_scale : float
        Factor by which frames are resized before the backbone (frame mode).
    device : str
        Torch device of the backbone.
    precision : str
        Compute dtype of the backbone: ``"float32"``, ``"bfloat16"`` or
        ``"auto"``, which takes bfloat16 on CUDA and on CPUs with AMX (see
        :func:`mulde.network.resolve_precision`) in grid and frame modes, and
        float32 in object mode (see :meth:`compute_dtype`). The resolved dtype
        is part of the cache key.
    batch_size : int
        Maximum number of crops or frames per backbone forward pass.
    threaded : bool
        Decode frames and compute flow and proposals in a background thread while
        the backbone runs.
    backbone_workers : int or None
        Number of backbone batches that run at the same time, each in its own
        thread. None means one per available CPU core on CPU devices and 1 on
        other devices.
    torch_threads : int or None
        Torch intra-op threads during extraction; the previous setting is restored
        afterwards. None means 1 on CPU devices, so that the workers run side by
        side, and torch's current setting on other devices. Torch's thread pool
        slows down by an order of magnitude when its threads compete with other
        busy threads for cores, which parallel workers avoid.
    """

    mode: str = "grid"
    backbone: str = "efficientnet_lite0"
    crop_size: int = 64
    crop_context: float = 0.1
    flow_preset: str = "medium"
    flow_on_foreground: bool = True
    flow_gap: int = 4
    direction_bins: int = 8
    magnitude_edges: tuple[float, ...] = DEFAULT_MAGNITUDE_EDGES
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    grid_cell: int = 20
    grid_min_foreground: float = 0.1
    grid_backbone_scale: float = 1.0
    window: int = 5
    window_mode: str = "centered"
    frame_pooling: str = "meanmax"
    frame_scale: float = 1.0
    device: str = "cpu"
    precision: str = "auto"
    batch_size: int = 64
    threaded: bool = True
    backbone_workers: int | None = None
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self, "features.")
        _check_choice("mode", self.mode, FEATURE_MODES)
        _check_choice("flow_preset", self.flow_preset, tuple(FLOW_PRESETS))
        _check_choice("window_mode", self.window_mode, WINDOW_MODES)
        _check_choice("frame_pooling", self.frame_pooling, FRAME_POOLINGS)
        _check_backbone_name(self.backbone)
        if isinstance(self.proposals, dict):
            object.__setattr__(
                self, "proposals", ProposalConfig.from_dict(self.proposals)
            )

        edges = tuple(float(edge) for edge in self.magnitude_edges)
        object.__setattr__(self, "magnitude_edges", edges)
        increasing = all(
            low < high for low, high in zip(edges[:-1], edges[1:], strict=True)
        )
        finite = all(math.isfinite(edge) for edge in edges)
        if not finite or not increasing or (edges and edges[0] <= 0):
            raise ValueError(
                f"features.magnitude_edges must be finite, positive and increasing "
                f"(pixels per frame), got {edges}"
            )

        for name in (
            "crop_size",
            "direction_bins",
            "flow_gap",
            "window",
            "batch_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("flow_gap", "window"):
            if getattr(self, name) > MAX_FRAME_SPAN:
                raise ValueError(
                    f"features.{name} must be at most {MAX_FRAME_SPAN} frames, got "
                    f"{getattr(self, name)}"
                )
        if not MIN_GRID_CELL <= self.grid_cell <= MAX_GRID_CELL:
            raise ValueError(
                f"features.grid_cell must be between {MIN_GRID_CELL} and "
                f"{MAX_GRID_CELL} pixels, got {self.grid_cell}; choose about half "
                "the height in pixels of the objects to watch"
            )
        try:
            resolve_device(self.device)
        except ValueError as error:
            raise ValueError(f"features.device: {error}") from error
        if not 0 <= self.crop_context <= MAX_CROP_CONTEXT:
            raise ValueError(
                f"features.crop_context must be between 0 and {MAX_CROP_CONTEXT} "
                f"(the fraction by which the square around each box grows), got "
                f"{self.crop_context}"
            )
        for name in ("backbone_workers", "torch_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")
        if not 0.0 <= self.grid_min_foreground <= 1.0:
            raise ValueError(
                "features.grid_min_foreground must be between 0 and 1, got "
                f"{self.grid_min_foreground}"
            )
        _check_choice("precision", self.precision, PRECISIONS)
        if not MIN_FRAME_SCALE <= self.grid_backbone_scale <= MAX_FRAME_SCALE:
            raise ValueError(
                f"features.grid_backbone_scale must be between {MIN_FRAME_SCALE} "
                f"and {MAX_FRAME_SCALE} (the resize factor of each frame for the "
                f"backbone), got {self.grid_backbone_scale}"
            )
        if not MIN_FRAME_SCALE <= self.frame_scale <= MAX_FRAME_SCALE:
            raise ValueError(
                f"features.frame_scale must be between {MIN_FRAME_SCALE} and "
                f"{MAX_FRAME_SCALE} (the resize factor of each frame), got "
                f"{self.frame_scale}"
            )

    def to_dict(self) -> dict:
        """Return the settings as a JSON-compatible dict."""
        values = asdict(self)
        values["magnitude_edges"] = list(self.magnitude_edges)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> FeatureConfig:
        """Build a config from a dict such as the output of :meth:`to_dict`.

        Raises
        ------
        ValueError
            If a key is not a field; the message lists the valid fields.
        """
        check_known_keys("features", values, [item.name for item in fields(cls)])
        values = dict(values)
        if isinstance(values.get("proposals"), dict):
            values["proposals"] = ProposalConfig.from_dict(values["proposals"])
        if "magnitude_edges" in values:
            edges = values["magnitude_edges"]
            if not isinstance(edges, (list, tuple)):
                raise ValueError(
                    f"features.magnitude_edges={edges!r} must be a list of numbers "
                    "such as [0.5, 1.0, 2.0]"
                )
            values["magnitude_edges"] = tuple(edges)
        return cls(**values)

    def unused_settings(self) -> list[str]:
        """Return the fields set away from their defaults that this mode ignores.

        They still take part in :meth:`config_hash`, so changing one extracts the
        features again for the same result.
        """
        default = type(self)(mode=self.mode)
        return [
            name
            for name, modes in _MODE_FIELDS.items()
            if self.mode not in modes and getattr(self, name) != getattr(default, name)
        ]

    def config_hash(self) -> str:
        """Return the SHA-256 hex digest of the fields that change the features."""
        values = self.to_dict()
        for name in _RUNTIME_FIELDS:
            values.pop(name)
        # Added later: left out at its default, so that older caches stay valid.
        if self.grid_backbone_scale == 1.0:
            values.pop("grid_backbone_scale")
        # "auto" resolves by machine, and features of another dtype differ.
        values["precision"] = dtype_name(self.compute_dtype())
        values["extractor_version"] = EXTRACTOR_VERSION
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def compute_dtype(self) -> torch.dtype:
        """Return the dtype that ``precision`` resolves to on ``device``.

        ``"auto"`` keeps float32 in object mode: on 64 px crops the bfloat16
        embeddings drifted further from float32 than on whole frames, and Ped2
        micro AUC fell by 0.006 with them, against 0.001 in grid mode.
        """
        if self.precision == "auto" and self.mode == "object":
            return torch.float32
        return resolve_precision(self.precision, torch.device(self.device))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"invalid {name} {value!r}; valid values: {', '.join(choices)}"
        )


def _check_backbone_name(name: str) -> None:
    """Reject a backbone name that :func:`get_backbone` would not accept.

    Names are checked against the registry at the time of the call, so a backbone
    registered later with ``register_backbone`` is rejected until then.
    """
    if name.startswith(_TORCHVISION_PREFIX):
        # The model name is checked when torchvision builds the model.
        valid = len(name) > len(_TORCHVISION_PREFIX)
    else:
        valid = name in list_backbones()
    if not valid:
        raise ValueError(
            f"unknown features.backbone {name!r}; valid names: "
            f"{', '.join(list_backbones())}"
        )


def save_clip_features(features: ClipFeatures, path: Path) -> None:
    """Write clip features to ``path`` atomically as an uncompressed ``.npz``.

    The data goes to a temporary file in the same folder, which then replaces
    ``path`` with ``os.replace``, so readers see either the old or the new file.
    """
    path = Path(path)
    _check_cache_file(path, "the feature file")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "n_frames": np.asarray(features.n_frames, dtype=np.int64),
        "frame_index": features.frame_index,
        "boxes": features.boxes,
        "group_names": np.asarray(list(features.groups), dtype=np.str_),
    }
    for name, values in features.groups.items():
        arrays[f"group.{name}"] = values
    descriptor, temp_name = tempfile.mkstemp(
        prefix=_TEMP_PREFIX, suffix=".npz", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp's files are the owner's only; a shared cache must be readable.
        os.chmod(temp_name, default_file_mode())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _check_cache_file(path: Path, description: str) -> None:
    """Raise naming ``path`` if a folder is where a cache file must go."""
    check_file_target(
        path,
        description,
        "move or delete that folder, or choose another cache folder with --cache-dir",
    )


def load_clip_features(path: Path) -> ClipFeatures:
    """Read clip features written by :func:`save_clip_features`.

    Raises
    ------
    ValueError
        If the file is truncated, not an ``.npz``, misses arrays or has
        inconsistent shapes.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(name) for name in data["group_names"]]
            return ClipFeatures(
                n_frames=int(data["n_frames"]),
                frame_index=data["frame_index"],
                boxes=data["boxes"],
                groups={name: data[f"group.{name}"] for name in names},
            )
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"invalid feature file {path}: {error}") from error


def build_backbone(config: FeatureConfig) -> Backbone:
    """Build the backbone of ``config`` on its device, batch size and precision."""
    return get_backbone(
        config.backbone,
        device=config.device,
        batch_size=config.batch_size,
        precision=dtype_name(config.compute_dtype()),
    )


def cache_folder(cache_dir: Path, config: FeatureConfig) -> Path:
    """Return the cache folder of a configuration, ``cache_dir/<mode>-<hash12>``."""
    return Path(cache_dir) / f"{config.mode}-{config.config_hash()[:12]}"


def extract_clip(
    clip: Clip,
    config: FeatureConfig,
    backbone: Backbone,
    on_frame: Callable[[], None] | None = None,
) -> ClipFeatures:
    """Extract the features of one clip in the mode that ``config`` selects.

    Parameters
    ----------
    clip : Clip
    config : FeatureConfig
    backbone : Backbone
        Built by :func:`build_backbone` from ``config``.
    on_frame : callable, optional
        Called once per processed frame, for progress bars.

    Returns
    -------
    ClipFeatures
    """
    # Imported here because objects and frames import this module for the records.
    if config.mode == "grid":
        from mulde.features.grid import extract_grid_features

        return extract_grid_features(clip.source, config, backbone, on_frame=on_frame)
    if config.mode == "object":
        from mulde.features.objects import extract_object_features

        return extract_object_features(clip.source, config, backbone, on_frame=on_frame)
    from mulde.features.frames import extract_frame_features

    return extract_frame_features(clip.source, config, backbone, on_frame=on_frame)


def extract_dataset(
    dataset: VideoDataset,
    config: FeatureConfig,
    cache_dir: Path,
    verbose: bool = True,
    lazy: bool = False,
    split_labels: Mapping[str, str] | None = None,
) -> DatasetFeatures:
    """Extract the features of every clip of a dataset, reusing cached clips.

    Parameters
    ----------
    dataset : VideoDataset
    config : FeatureConfig
    cache_dir : Path
        Root folder of feature caches; each configuration gets its own subfolder
        (see :func:`cache_folder`).
    verbose : bool
        Show a progress bar over frames.
    lazy : bool
        Return each split as a :class:`ClipFeatureFiles` that reads a clip from
        the cache on each lookup, instead of a dict of every clip's features.
        Memory then contains one clip's features at a time, during extraction
        too. Every cached clip is still read once here, to check its file.
    split_labels : Mapping of str to str, optional
        Name of a split in log lines and errors, by split key, such as
        ``{"test": "new"}`` for clips that are scored but not evaluated. A split
        not named here is logged by its key. The cache folders and the manifest
        always use the keys.

    Returns
    -------
    DatasetFeatures
        A dict with ``result[split][clip.name]`` for the splits ``"train"`` and
        ``"test"``, whose ``timings`` attribute gives the seconds spent per split.
        A split without clips is empty and gets no log line.

    Raises
    ------
    ValueError
        If two clips of one split share a name.

    Notes
    -----
    Two processes that extract into the same cache folder at the same time do not
    corrupt each other's files, but the manifest written last wins, so clips
    extracted only by the other process are extracted again on the next run.
    """
    folder = cache_folder(cache_dir, config)
    folder.mkdir(parents=True, exist_ok=True)
    _check_cache_file(folder / MANIFEST_NAME, "the feature manifest")
    splits = {"train": list(dataset.train), "test": list(dataset.test)}
    labels = {split: split for split in splits} | dict(split_labels or {})
    for split, clips in splits.items():
        names = [clip.name for clip in clips]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"{labels[split]} clips of {dataset.name!r} share names: {duplicates}"
            )
        _remove_temp_files(folder / split)

    backbone = build_backbone(config)
    header = _manifest_header(config, backbone)
    manifest = _read_manifest(folder / MANIFEST_NAME)
    # The stored config also has the runtime fields (device, batch size), which
    # may differ between runs that share this folder, so only its hash is compared.
    compared = [key for key in header if key != "config"]
    if manifest is None or any(manifest.get(key) != header[key] for key in compared):
        if manifest is not None:
            logger.info(
                "manifest in %s does not match this extraction; extracting again",
                folder,
            )
        manifest = dict(header, clips={"train": {}, "test": {}})

    results = DatasetFeatures()
    for split, clips in splits.items():
        results[split], results.timings[split] = _extract_split(
            split,
            clips,
            config,
            backbone,
            folder,
            manifest,
            verbose,
            lazy,
            labels[split],
        )
    return results


def _extract_split(
    split: str,
    clips: list[Clip],
    config: FeatureConfig,
    backbone: Backbone,
    folder: Path,
    manifest: dict,
    verbose: bool,
    lazy: bool = False,
    label: str | None = None,
) -> tuple[dict[str, ClipFeatures] | ClipFeatureFiles, float]:
    """Extract or load the clips of one split; return them and the seconds spent.

    With ``lazy``, each clip's features are dropped once checked or saved, and
    the split comes back as a :class:`ClipFeatureFiles` over the cache files.
    ``label`` names the split in log lines and errors (default: ``split``).
    """
    from tqdm.auto import tqdm

    label = split if label is None else label
    entries = manifest["clips"].setdefault(split, {})
    features: dict[str, ClipFeatures] = {}
    # File, frame count and row count of every clip done so far.
    done: dict[str, tuple[Path, int, int]] = {}
    # Clips to extract, with their source signature and manifest key.
    pending: list[tuple[Clip, dict, str]] = []
    # Cached entries that get the file digest that older versions did not write.
    upgraded = 0
    # Entries this process wrote, merged into the manifest on disk at each write.
    written = _adopt_unkeyed_entries(folder, split, clips, entries)
    if written:
        logger.info(
            "features %s: moved the cached files of %d clips to names that "
            "include their source",
            label,
            len(written),
        )
    for clip in clips:
        signature = _source_signature(clip.source)
        key = _entry_key(clip)
        entry = entries.get(key)
        cached = _load_cached(folder, split, clip, key, entry, signature, label)
        if cached is None:
            pending.append((clip, signature, key))
            continue
        path = folder / _clip_file(split, key)
        done[clip.name] = (path, cached.n_frames, cached.n_rows)
        if _FILES_DIGEST_KEY in signature and _FILES_DIGEST_KEY not in entry:
            entry[_FILES_DIGEST_KEY] = signature[_FILES_DIGEST_KEY]
            written[key] = entry
            upgraded += 1
        if not lazy:
            features[clip.name] = cached
        # Free this clip before the next one loads.
        del cached
    if upgraded:
        logger.info(
            "features %s: recorded the frame file digest of %d cached clips",
            label,
            upgraded,
        )
    if written:
        _merge_manifest(folder / MANIFEST_NAME, manifest, split, written)

    start = time.perf_counter()
    n_frames = 0
    total = _count_frames([clip for clip, _, _ in pending]) if pending else 0
    with tqdm(
        total=total,
        unit="frame",
        desc=f"features {label}",
        # None: tqdm shows the bar only on a terminal, so that logs redirected to
        # a file get no carriage-return updates.
        disable=True if not verbose or not pending else None,
    ) as progress:
        for clip, signature, key in pending:
            try:
                clip_features = extract_clip(
                    clip, config, backbone, on_frame=lambda: progress.update(1)
                )
            except ValueError as error:
                raise ValueError(
                    f"Feature extraction failed on {label} clip {clip.name} "
                    f"({clip.source}): {error}"
                ) from error
            relative = _clip_file(split, key)
            save_clip_features(clip_features, folder / relative)
            logger.info(
                "features %s: clip %s extracted (%d of %d), %d frames, %d rows",
                label,
                clip.name,
                len(done) + 1,
                len(clips),
                clip_features.n_frames,
                clip_features.n_rows,
            )
            entries[key] = written[key] = dict(
                signature,
                clip=clip.name,
                n_frames=clip_features.n_frames,
                n_rows=clip_features.n_rows,
                file=relative,
            )
            _merge_manifest(folder / MANIFEST_NAME, manifest, split, written)
            done[clip.name] = (
                folder / relative,
                clip_features.n_frames,
                clip_features.n_rows,
            )
            if not lazy:
                features[clip.name] = clip_features
            n_frames += clip_features.n_frames
            del clip_features
    seconds = time.perf_counter() - start

    # Frames and rows count every clip of the split. The rate counts only the
    # frames extracted in this run.
    total_frames = sum(done[clip.name][1] for clip in clips)
    total_rows = sum(done[clip.name][2] for clip in clips)
    summary = (
        f"{label}: {len(clips)} clips ({len(pending)} extracted, "
        f"{len(clips) - len(pending)} cached), {total_frames} frames, {total_rows} rows"
    )
    if n_frames:
        summary += f", {seconds:.1f} s extracting, {n_frames / seconds:.1f} frames/s"
    # A split without clips, such as the training split of `mulde score`, has
    # nothing to report.
    if clips:
        logger.info("%s", summary)
    if lazy:
        files = ClipFeatureFiles(
            paths={clip.name: done[clip.name][0] for clip in clips},
            n_frames={clip.name: done[clip.name][1] for clip in clips},
            n_rows={clip.name: done[clip.name][2] for clip in clips},
        )
        return files, seconds
    return {clip.name: features[clip.name] for clip in clips}, seconds


def _entry_key(clip: Clip) -> str:
    """Return a clip's manifest key: its name and a digest of its source path.

    Two datasets that both have a clip ``01`` then get separate entries and
    files in one cache folder, so neither overwrites nor reads the other's.
    """
    source = str(Path(clip.source).resolve())
    digest = hashlib.sha256(os.fsencode(source)).hexdigest()[:12]
    return f"{clip.name}-{digest}"


def _adopt_unkeyed_entries(
    folder: Path, split: str, clips: list[Clip], entries: dict
) -> dict[str, dict]:
    """Move entries keyed by clip name alone to the keys of :func:`_entry_key`.

    Caches written before the keys named the source stored clip ``01`` as
    ``split/01.npz`` under the key ``"01"``. An entry whose recorded source is
    this clip's is renamed, file and key, instead of being extracted again. The
    entry is still checked against the clip's frames when it is loaded.
    An old file of a clip that has a new entry already is deleted. Returns the
    entries of the clips concerned by their new keys.
    """
    moved: dict[str, dict] = {}
    for clip in clips:
        key = _entry_key(clip)
        old = entries.get(clip.name)
        old_relative = f"{split}/{clip.name}.npz"
        if (
            not isinstance(old, dict)
            or "clip" in old
            or old.get("source") != str(Path(clip.source).resolve())
            or old.get("file", old_relative) != old_relative
            or not (folder / old_relative).is_file()
        ):
            continue
        del entries[clip.name]
        if key in entries:
            # Extracted again under the new name already: the old file is a copy.
            (folder / old_relative).unlink()
            moved[key] = entries[key]
            continue
        relative = _clip_file(split, key)
        os.replace(folder / old_relative, folder / relative)
        entries[key] = moved[key] = dict(old, clip=clip.name, file=relative)
    return moved


def _clip_file(split: str, key: str) -> str:
    """Return the feature file of a manifest key, relative to the cache folder."""
    return f"{split}/{key}.npz"


def _load_cached(
    folder: Path,
    split: str,
    clip: Clip,
    key: str,
    entry: dict | None,
    signature: dict,
    label: str,
) -> ClipFeatures | None:
    """Return the cached features of a clip, or None if they must be extracted.

    ``key`` is the clip's manifest key (see :func:`_entry_key`) and ``label``
    names the split in log lines.
    """
    if entry is None:
        return None
    # An entry written before _FILES_DIGEST_KEY existed is trusted when the other
    # values match, and _extract_split then records the digest.
    # NOTE: frames renamed or swapped after such an entry was written, and before
    # this check first runs, go unnoticed.
    compared = [
        key
        for key in signature
        if key != _FILES_DIGEST_KEY or _FILES_DIGEST_KEY in entry
    ]
    if any(entry.get(key) != signature[key] for key in compared):
        logger.info("source of %s clip %s changed; extracting again", label, clip.name)
        return None
    relative = _clip_file(split, key)
    if entry.get("file", relative) != relative:
        # Runs write only this name, so any other value was edited by hand.
        logger.warning(
            "manifest entry of %s clip %s names the file %r, not %r; extracting "
            "it again",
            label,
            clip.name,
            entry.get("file"),
            relative,
        )
        return None
    path = folder / relative
    if not path.is_file():
        return None
    try:
        features = load_clip_features(path)
    except ValueError as error:
        logger.warning("%s; extracting %s clip %s again", error, label, clip.name)
        return None
    if features.n_frames != entry.get("n_frames") or features.n_rows != entry.get(
        "n_rows"
    ):
        logger.warning(
            "feature file %s does not match its manifest entry; "
            "extracting %s clip %s again",
            path,
            label,
            clip.name,
        )
        return None
    return features


def _manifest_header(config: FeatureConfig, backbone: Backbone) -> dict:
    from mulde import __version__

    return {
        "extractor": EXTRACTOR_NAME,
        "extractor_version": EXTRACTOR_VERSION,
        "package_version": __version__,
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "compute_dtype": dtype_name(config.compute_dtype()),
        "backbone": {
            "name": backbone.name,
            "version": backbone.version,
            "dim": backbone.dim,
        },
    }


def _read_manifest(path: Path, quiet: bool = False) -> dict | None:
    """Read a feature manifest; None if it is missing or invalid.

    An invalid manifest is logged as a warning unless ``quiet``.
    """
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        if not quiet:
            logger.warning(
                "invalid manifest %s (%s); extracting all clips again", path, error
            )
        return None
    clips = manifest.get("clips") if isinstance(manifest, dict) else None
    valid = isinstance(clips, dict) and all(
        isinstance(entries, dict)
        and all(isinstance(entry, dict) for entry in entries.values())
        for entries in clips.values()
    )
    if not valid:
        if not quiet:
            logger.warning("invalid manifest %s; extracting all clips again", path)
        return None
    return manifest


def _merge_manifest(
    path: Path, manifest: dict, split: str, written: dict[str, dict]
) -> None:
    """Write ``manifest`` with the entries of another process kept.

    Another run may have added clips to the manifest on disk since this one read
    it. When the header on disk matches ours, its entries replace the ones read
    at the start, except the ``written`` entries of ``split``, this process's own.
    """
    on_disk = _read_manifest(path, quiet=True)
    if on_disk is not None and all(
        on_disk.get(key) == value
        for key, value in manifest.items()
        if key not in ("clips", "config")
    ):
        for name, entries in on_disk["clips"].items():
            manifest["clips"].setdefault(name, {}).update(entries)
    manifest["clips"].setdefault(split, {}).update(written)
    # Entries whose file is gone, such as those renamed by
    # _adopt_unkeyed_entries, would come back from the file on disk.
    for entries in manifest["clips"].values():
        for key in [
            key
            for key, entry in entries.items()
            if not isinstance(entry.get("file"), str)
            or not (path.parent / entry["file"]).is_file()
        ]:
            del entries[key]
    _write_manifest(path, manifest)


def _write_manifest(path: Path, manifest: dict) -> None:
    _check_cache_file(path, "the feature manifest")
    descriptor, temp_name = tempfile.mkstemp(
        prefix=_TEMP_PREFIX, suffix=".json", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp's files are the owner's only; a shared cache must be readable.
        os.chmod(temp_name, default_file_mode())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _remove_temp_files(folder: Path) -> None:
    """Delete temporary files that an interrupted run left behind.

    Only files older than ``_STALE_TEMP_SECONDS`` are deleted, so that a run that
    is writing into the same folder right now keeps its temporary files.
    """
    now = time.time()
    for parent in (folder, folder.parent):
        if not parent.is_dir():
            continue
        for temp in parent.glob(f"{_TEMP_PREFIX}*"):
            try:
                age = now - temp.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > _STALE_TEMP_SECONDS:
                logger.info(
                    "removing temporary file %s left by an interrupted run", temp
                )
                temp.unlink(missing_ok=True)


def _source_signature(source: Path) -> dict:
    """Describe a clip source so that edits to it invalidate its cache entry.

    For a video file, ``mtime_ns`` and ``size`` (bytes) are the file's. For a
    folder of frames they are the latest modification time and the total size of
    the files directly inside it, ``n_files`` counts them, and ``files_sha256``
    is the SHA-256 of each file's name, size and modification time in name
    order. That digest changes when frames are renamed, swapped or replaced,
    which leaves the other three values unchanged. File contents are not read.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(
            (entry.name, entry.stat())
            for entry in os.scandir(source)
            if entry.is_file()
        )
        # NOTE: two frames of equal size and modification time that swap names
        # keep the digest, because contents are not read.
        digest = hashlib.sha256()
        for name, stat in files:
            digest.update(os.fsencode(name) + b"\0")
            digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return {
            "source": str(source.resolve()),
            "mtime_ns": max((stat.st_mtime_ns for _, stat in files), default=0),
            "size": sum(stat.st_size for _, stat in files),
            "n_files": len(files),
            _FILES_DIGEST_KEY: digest.hexdigest(),
        }
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
    }


def _count_frames(clips: list[Clip]) -> int | None:
    """Return the total frame count of the clips, or None if a count fails."""
    from mulde.video.readers import count_frames

    try:
        return sum(count_frames(clip.source) for clip in clips)
    except (OSError, ValueError) as error:
        logger.info("could not count frames for the progress bar: %s", error)
        return None

"""The main job: features of a video data set, detector fit, frame scores, metrics.

Every output is written to a staging folder beside the run folder and moved into
place only when the whole run succeeded, so a failed run leaves no partial
output in the run folder.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.decomposition import PCA

from mulde.config import RunConfig
from mulde.detector import MULDE
from mulde.evaluation import check_clip_scores, frame_metrics, smooth
from mulde.features.cache import (
    FEATURE_MODES,
    ClipFeatureFiles,
    ClipFeatures,
    FeatureConfig,
)
from mulde.network import dtype_name

if TYPE_CHECKING:
    from mulde.video.clips import Clip

logger = logging.getLogger(__name__)

# Maximum number of training rows that a group's PCA is fitted on. Larger
# training sets are sampled with the run's seed. 200,000 rows of 1,280 float32
# columns take 1 GB, and scikit-learn's fit of 64 components on them peaked
# 1.2 GiB higher (docs/benchmarks.md, "Memory of the main job"). That is over
# 150 rows per column, and above the 61,072 training rows of UCSD Ped2, so the
# PCA of Ped2 is fitted on every row.
PCA_MAX_ROWS = 200_000

# A first frame with a lower mean brightness (0 to 255) counts as nearly black.
# 10-bit data in 16-bit PNGs, which OpenCV divides by 256, has a mean below 4.
DARK_FRAME_BRIGHTNESS = 10.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mulde``, else ``~/.cache/mulde``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mulde"


class Timer:
    """Wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        logger.info("stage %s: started", name)
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        logger.info("stage %s: done in %.1f s", name, elapsed)


@dataclass
class GroupModel:
    """One fitted detector and the PCA that feeds it (None keeps all columns)."""

    groups: list[str]
    pca: list[PCA | None]
    detector: MULDE
    # Lowest standardised training energy per level, the value of empty frames.
    empty_level_z: np.ndarray | None = None

    def transform(self, clip_groups: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for group, pca in zip(self.groups, self.pca, strict=True):
            values = clip_groups[group]
            if pca is not None:
                # A clip without objects has no rows, which PCA rejects.
                values = (
                    pca.transform(values)
                    if len(values)
                    else np.zeros((0, pca.n_components_), np.float32)
                )
            parts.append(values)
        return np.concatenate(parts, axis=1).astype(np.float32)


def _stack(features: dict, group: str) -> np.ndarray:
    return np.concatenate([clip.groups[group] for clip in features.values()], axis=0)


def row_counts(clips: Mapping[str, ClipFeatures]) -> dict[str, int]:
    """Return the number of feature rows of each clip, in clip order.

    A :class:`~mulde.features.cache.ClipFeatureFiles` returns its manifest
    counts without reading any clip. Other mappings are looked up clip by clip.
    """
    if isinstance(clips, ClipFeatureFiles):
        return clips.row_counts()
    return {name: clip.n_rows for name, clip in clips.items()}


def pca_sample_indices(n_rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Return the sorted indices of the rows that a PCA is fitted on.

    Indices count the training rows of all clips stacked in clip order. Every
    row is taken when there are at most ``max_rows``. Otherwise ``max_rows``
    rows are drawn without replacement by ``numpy.random.default_rng(seed)``,
    so a seed always draws the same rows.
    """
    if max_rows < 1:
        raise ValueError(
            f"max_rows={max_rows} must be at least 1; pass a positive row cap."
        )
    if n_rows <= max_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


def stack_sample(
    clips: Mapping[str, ClipFeatures],
    counts: dict[str, int],
    groups: list[str],
    indices: np.ndarray,
) -> dict[str, np.ndarray]:
    """Gather the rows at sorted ``indices`` of each group, reading one clip at a time.

    Parameters
    ----------
    clips : mapping of str to ClipFeatures
        Training clips, in the order that ``indices`` counts rows in.
    counts : dict of str to int
        Rows of each clip, from :func:`row_counts`.
    groups : list of str
        Groups to gather.
    indices : numpy.ndarray of int
        Sorted row indices into the clips' rows stacked in order, such as
        :func:`pca_sample_indices` returns.

    Returns
    -------
    dict of str to numpy.ndarray of float32, shape (len(indices), d_group)
        Equal to ``np.concatenate([clip.groups[g] for clip in clips.values()])``
        indexed by ``indices``, without holding every clip at once.
    """
    sample: dict[str, np.ndarray] = {}
    start = filled = 0
    for name, clip in clips.items():
        stop = start + counts[name]
        first, last = np.searchsorted(indices, [start, stop])
        local = indices[first:last] - start
        start = stop
        if len(local) == 0:
            continue
        for group in groups:
            values = clip.groups[group]
            if group not in sample:
                sample[group] = np.empty((len(indices), values.shape[1]), values.dtype)
            sample[group][filled : filled + len(local)] = values[local]
        filled += len(local)
    if filled != len(indices):
        raise ValueError(
            f"The clips have {start} rows in all, but {len(indices)} sampled "
            f"indices reach up to row {indices[-1] if len(indices) else 0}; "
            "pass the indices that pca_sample_indices returns for these clips."
        )
    return sample


def _fit_pca(
    rows: np.ndarray, n_components: int | None, seed: int, group: str
) -> PCA | None:
    if n_components is None or rows.shape[1] <= n_components:
        return None
    n_components = min(n_components, rows.shape[0])
    start = time.perf_counter()
    pca = PCA(n_components=n_components, random_state=seed).fit(rows)
    # scikit-learn leaves components_ strided. A contiguous copy is what
    # pca.safetensors stores, so the run and `mulde score` project alike: the
    # layout changes the projected rows by about 1e-6, which bfloat16 scoring
    # enlarges to visible score differences.
    pca.components_ = np.ascontiguousarray(pca.components_)
    logger.info(
        "PCA of %s: %d rows x %d columns -> %d components (%.0f%% of the "
        "variance) in %.1f s",
        group,
        rows.shape[0],
        rows.shape[1],
        n_components,
        100 * pca.explained_variance_ratio_.sum(),
        time.perf_counter() - start,
    )
    return pca


def model_partitions(config: RunConfig) -> list[list[str]]:
    """Return the feature groups of each detector: all at once, or one each."""
    groups = config.feature_groups()
    if config.scoring.scoring == "concat":
        return [groups]
    return [[group] for group in groups]


def model_file_suffix(groups: list[str], n_models: int) -> str:
    """Return the suffix of a model's detector and PCA file names in a run folder."""
    return "" if n_models == 1 else "-" + "+".join(groups)


def model_file_names() -> set[str]:
    """Return every detector and PCA file name that a run can write."""
    groups: set[str] = set()
    for mode in FEATURE_MODES:
        groups.update(RunConfig(features={"mode": mode}).mode_groups())
    # Per-group file names appear only in runs with more than one model.
    suffixes = [""] + [model_file_suffix([group], n_models=2) for group in groups]
    return {
        f"{kind}{suffix}.safetensors"
        for kind in ("detector", "pca")
        for suffix in suffixes
    }


@dataclass(frozen=True)
class FrameSummary:
    """Size in pixels and mean brightness (0 to 255) of a clip's first frame."""

    height: int
    width: int
    brightness: float

    @property
    def size(self) -> str:
        """Width x height, as OpenCV and the frame readers write frame sizes."""
        return f"{self.width}x{self.height}"


def first_frame_summary(clip: Clip) -> FrameSummary:
    """Decode only the first frame of ``clip`` and return its size and brightness.

    Raises
    ------
    ValueError
        If the clip contains no frames or its first frame cannot be decoded.
    """
    from mulde.video.readers import first_frame

    frame = first_frame(clip.source)
    if frame is None:
        raise ValueError(
            f"Clip {clip.name} ({clip.source}) contains no frames; re-export it or "
            "remove it from the folder."
        )
    return FrameSummary(int(frame.shape[0]), int(frame.shape[1]), float(frame.mean()))


def training_frame_size(
    clips: list[Clip], summaries: Mapping[str, FrameSummary]
) -> FrameSummary:
    """Return the first training frame, after checking that all have its size.

    Raises
    ------
    ValueError
        If two training clips have different frame sizes. Features are
        positions, sizes and speeds in pixels, so they are comparable only
        between frames of one size.
    """
    reference = clips[0]
    expected = summaries[reference.name]
    for clip in clips[1:]:
        summary = summaries[clip.name]
        if (summary.height, summary.width) != (expected.height, expected.width):
            raise ValueError(
                f"Training clip {clip.name} ({clip.source}) has frames of "
                f"{summary.size} pixels, but training clip {reference.name} has "
                f"{expected.size} (width x height). The features are positions, "
                "sizes and speeds in pixels, so all clips of a run need one frame "
                f"size. Resize the frames to {expected.size}, or train one run per "
                "camera."
            )
    return expected


def check_frame_size(
    clip: Clip, summary: FrameSummary, height: int, width: int, kind: str
) -> None:
    """Raise ValueError if ``clip`` has another frame size than the training clips.

    ``kind`` names the clip in the message, for example ``"Test clip"``.
    """
    if (summary.height, summary.width) == (height, width):
        return
    expected = f"{width}x{height}"
    raise ValueError(
        f"{kind} {clip.name} ({clip.source}) has frames of {summary.size} pixels, "
        f"but the training clips have {expected} (width x height). The features "
        "are positions, sizes and speeds in pixels, so they are not comparable "
        f"across frame sizes. Resize the frames of {clip.name} to {expected}, or "
        "train a run on clips of this camera."
    )


def fit_models(
    train: Mapping[str, ClipFeatures],
    config: RunConfig,
    first_frames: Mapping[str, FrameSummary] | None = None,
) -> list[GroupModel]:
    """Fit one detector on the concatenated groups, or one per group.

    ``first_frames`` (see :func:`fit_models_with_rows`) only improves the error
    message when too few training rows were extracted.
    """
    models, _ = fit_models_with_rows(train, config, first_frames)
    return models


def _too_few_rows_message(
    n_rows: int,
    n_clips: int,
    config: RunConfig,
    first_frames: Mapping[str, FrameSummary] | None,
) -> str:
    """Explain why the training clips gave fewer than 2 feature rows."""
    mode = config.features.get("mode", "grid")
    message = (
        f"Only {n_rows} training rows were extracted from {n_clips} training clips."
    )
    causes = []
    frames = dict(first_frames or {})

    cell = config.features.get("grid_cell", FeatureConfig.grid_cell)
    small = [(name, s) for name, s in frames.items() if min(s.height, s.width) < cell]
    if mode == "grid" and small:
        name, summary = small[0]
        causes.append(
            f"The frames of training clip {name} are {summary.size} pixels, smaller "
            f"than one grid cell (features.grid_cell={cell} pixels). A cell cut by "
            "the frame border still needs features.grid_min_foreground of a full "
            "cell's area, so few cells or none are kept. Use larger frames or a "
            "smaller features.grid_cell."
        )

    dark = [(n, s) for n, s in frames.items() if s.brightness < DARK_FRAME_BRIGHTNESS]
    if dark:
        name, summary = dark[0]
        causes.append(
            f"The first frame of training clip {name} is nearly black (mean "
            f"brightness {summary.brightness:.1f} of 255), so little foreground "
            "is found. 16-bit images with 10- or 12-bit data look like this, "
            "because OpenCV divides 16-bit values by 256. Scale such frames to "
            "the full 8- or 16-bit range."
        )

    if not causes:
        causes.append(
            f"The feature mode {mode!r} found almost no moving objects. Check that "
            "the training clips show motion, and lower "
            "features.proposals.threshold or features.grid_min_foreground."
        )
    return " ".join([message, *causes])


def fit_models_with_rows(
    train: Mapping[str, ClipFeatures],
    config: RunConfig,
    first_frames: Mapping[str, FrameSummary] | None = None,
) -> tuple[list[GroupModel], list[np.ndarray]]:
    """Fit the run's detectors and return them with the rows each was fitted on.

    Each group's PCA is fitted on at most :data:`PCA_MAX_ROWS` training rows
    (see :func:`pca_sample_indices`). Training clips are then read one at a time
    and projected, so memory contains one clip's full features, the PCA sample
    and the projected rows of all clips. ``train`` may be a
    :class:`~mulde.features.cache.ClipFeatureFiles`, which reads each clip on
    lookup.

    ``first_frames`` maps training clip names to their first frames' summaries
    (:func:`first_frame_summary`). When too few rows were extracted, the error
    then names frames smaller than a grid cell or nearly black ones.

    Returns
    -------
    models : list of GroupModel
    rows : list of numpy.ndarray of float32
        The projected training rows of each model, the detector's training set.
    """
    options = config.scoring
    available = set(next(iter(train.values())).groups)
    groups_to_score = config.feature_groups()
    missing = [g for g in groups_to_score if g not in available]
    if missing:
        raise ValueError(
            f"Feature groups {missing} are not produced by feature mode "
            f"{config.features.get('mode')!r}; available groups are "
            f"{sorted(available)}."
        )
    partitions = model_partitions(config)

    counts = row_counts(train)
    n_rows = sum(counts.values())
    if n_rows < 2:
        raise ValueError(
            _too_few_rows_message(n_rows, len(train), config, first_frames)
        )

    pcas: dict[str, PCA | None] = dict.fromkeys(groups_to_score)
    if options.pca_components is not None:
        indices = pca_sample_indices(n_rows, PCA_MAX_ROWS, config.seed)
        if len(indices) < n_rows:
            logger.info(
                "PCA sample: %d of %d training rows (seed %d)",
                len(indices),
                n_rows,
                config.seed,
            )
        sample = stack_sample(train, counts, groups_to_score, indices)
        for group in groups_to_score:
            pcas[group] = _fit_pca(
                sample.pop(group), options.pca_components, config.seed, group
            )
        del sample

    # Each detector is set below, once the projected rows are at hand.
    models = [
        GroupModel(
            groups,
            [pcas[g] for g in groups],
            detector=None,  # type: ignore[arg-type]
        )
        for groups in partitions
    ]
    rows = _project_clips(models, train, counts)
    for model, model_rows in zip(models, rows, strict=True):
        logger.info(
            "fitting detector on %s: %d rows x %d features",
            "+".join(model.groups),
            model_rows.shape[0],
            model_rows.shape[1],
        )
        model.detector = MULDE(
            **config.detector, random_state=config.seed, verbose=config.verbose
        ).fit(model_rows)
    return models, rows


def _project_clips(
    models: list[GroupModel],
    clips: Mapping[str, ClipFeatures],
    counts: dict[str, int],
) -> list[np.ndarray]:
    """Project every clip with each model, reading one clip at a time.

    Returns one float32 array per model with the rows of all clips in clip
    order, equal to concatenating ``model.transform`` of each clip.
    """
    n_rows = sum(counts.values())
    rows: list[np.ndarray | None] = [None] * len(models)
    start = 0
    for name, clip in clips.items():
        stop = start + counts[name]
        for k, model in enumerate(models):
            projected = model.transform(clip.groups)
            if rows[k] is None:
                rows[k] = np.empty((n_rows, projected.shape[1]), np.float32)
            rows[k][start:stop] = projected
        start = stop
    return rows  # type: ignore[return-value]


def _frame_max(values: np.ndarray, frame_index: np.ndarray, n_frames: int, empty):
    """Maximum of ``values`` (n_obj, ...) over the objects of each frame.

    Frames without objects get ``empty``. Returns shape (n_frames, ...).
    """
    out = np.empty((n_frames,) + values.shape[1:], dtype=np.float64)
    out[...] = empty
    has_object = np.zeros(n_frames, dtype=bool)
    has_object[frame_index] = True
    reduced = np.full((n_frames,) + values.shape[1:], -np.inf)
    np.maximum.at(reduced, frame_index, values)
    out[has_object] = reduced[has_object]
    return out


def score_clips(
    models: list[GroupModel], test: Mapping[str, ClipFeatures]
) -> tuple[dict, dict]:
    """Frame scores and per-level frame scores of each test clip.

    Each model's object scores are standardised with the mean and standard
    deviation of its training scores, then summed over models. A frame scores
    the maximum over its objects; a frame without objects gets the lowest
    training score, as the least anomalous value seen. Clips are looked up one
    at a time and only their frame scores are kept, so ``test`` may be a
    :class:`~mulde.features.cache.ClipFeatureFiles`.
    """
    stats = []
    for model in models:
        train_scores = model.detector.decision_scores_
        spread = train_scores.std() or 1.0
        stats.append(
            (
                train_scores.mean(),
                spread,
                (train_scores.min() - train_scores.mean()) / spread,
            )
        )
    empty_score = sum(s[2] for s in stats)

    frame_scores, level_scores = {}, {}
    for name, clip in test.items():
        object_scores = np.zeros(clip.frame_index.shape[0])
        object_levels = 0.0
        empty_levels = 0.0
        for model, (mean, spread, _) in zip(models, stats, strict=True):
            rows = model.transform(clip.groups)
            energies = (
                model.detector.multiscale_scores(rows)
                if len(rows)
                else np.zeros((0, len(model.detector.levels_)), np.float32)
            )
            aggregator = model.detector.aggregator_
            if len(rows):
                decision = aggregator.score(
                    _level_inputs(model.detector, rows, energies)
                )
            else:
                decision = np.zeros(0)
            object_scores = object_scores + (decision - mean) / spread
            # Per-level standardised energies; empty frames take the lowest
            # standardised training energy at that level.
            level_z = (
                energies - aggregator.mean_[: energies.shape[1]]
            ) / aggregator.scale_[: energies.shape[1]]
            object_levels = object_levels + level_z
            # None where the training energies are not at hand (mulde score):
            # per-level frame scores are then NaN for frames without objects.
            empty_level_z = model.empty_level_z
            if empty_level_z is None:
                empty_level_z = np.full(energies.shape[1], np.nan)
            empty_levels = empty_levels + empty_level_z
        frame_scores[name] = _frame_max(
            object_scores, clip.frame_index, clip.n_frames, empty_score
        )
        if np.ndim(object_levels) == 0:
            object_levels = np.zeros((0, len(models[0].detector.levels_)))
        level_scores[name] = _frame_max(
            np.asarray(object_levels), clip.frame_index, clip.n_frames, empty_levels
        )
    return frame_scores, level_scores


def _level_inputs(
    detector: MULDE, rows: np.ndarray, energies: np.ndarray
) -> np.ndarray:
    if not detector.use_score_norms:
        return energies
    energies, norms = detector.multiscale_scores(rows, score_norms=True)
    return np.concatenate([energies, norms], axis=1)


def _prepare_level_baselines(
    models: list[GroupModel], train_rows: list[np.ndarray]
) -> None:
    """Store each model's lowest standardised training energy per level.

    ``train_rows`` contains each model's projected training rows, as
    :func:`fit_models_with_rows` returns them.
    """
    for model, rows in zip(models, train_rows, strict=True):
        energies = model.detector.multiscale_scores(rows)
        aggregator = model.detector.aggregator_
        n_levels = energies.shape[1]
        z = (energies - aggregator.mean_[:n_levels]) / aggregator.scale_[:n_levels]
        model.empty_level_z = z.min(axis=0)


def level_metrics(
    level_scores: dict, labels: dict, levels: np.ndarray, sigma_frames: float
):
    """Micro AUC of each evaluation level alone, raw and smoothed: AUC against sigma."""
    from sklearn.metrics import roc_auc_score

    clips = list(labels)
    y = np.concatenate([labels[c] for c in clips]).astype(int)
    raw = np.concatenate([level_scores[c] for c in clips])  # (n_frames, L)
    smoothed_clips = {
        c: np.stack(
            [
                smooth({c: level_scores[c][:, k]}, sigma_frames)[c]
                for k in range(len(levels))
            ],
            axis=1,
        )
        for c in clips
    }
    smoothed = np.concatenate([smoothed_clips[c] for c in clips])
    return {
        "sigma": [float(v) for v in levels],
        "micro_auc": [float(roc_auc_score(y, raw[:, k])) for k in range(len(levels))],
        "micro_auc_smoothed": [
            float(roc_auc_score(y, smoothed[:, k])) for k in range(len(levels))
        ],
    }


def write_scores_csv(
    path: Path, raw: dict, smoothed: dict, labels: dict | None = None
) -> None:
    """Write one row per frame: clip, frame, score, score_smoothed[, label]."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["clip", "frame", "score", "score_smoothed"]
        writer.writerow(header + ([] if labels is None else ["label"]))
        for clip in raw:
            for frame, (score, score_smoothed) in enumerate(
                zip(raw[clip], smoothed[clip], strict=True)
            ):
                row = [clip, frame, f"{score:.6g}", f"{score_smoothed:.6g}"]
                if labels is not None:
                    row.append(int(labels[clip][frame]))
                writer.writerow(row)


def run(config: RunConfig, out: Path) -> dict:
    """Run the main job and write its outputs into ``out``; return the metrics."""
    from mulde.features import extract_dataset
    from mulde.report import write_report
    from mulde.video import load_dataset

    config.validate()
    config.resolve_defaults()
    out = check_output_folder(out)
    unused = FeatureConfig.from_dict(config.features).unused_settings()
    if unused:
        logger.warning(
            "feature settings not used in %s mode: %s. They are part of the "
            "feature cache key, so a change to them only extracts the same "
            "features again.",
            config.features.get("mode", "grid"),
            ", ".join(unused),
        )
    timer = Timer()

    with timer.stage("dataset"):
        options = config.dataset
        if options.root is None and options.name != "generic":
            raise ValueError(
                f"Dataset {options.name!r} needs --root, the dataset folder."
            )
        dataset_root = Path(options.root).expanduser() if options.root else Path.cwd()
        dataset = load_dataset(
            options.name,
            dataset_root,
            train_dir=options.train_dir,
            test_dir=options.test_dir,
            labels=options.labels,
        )
        train_clips = dataset.train[: options.max_train_clips]
        test_clips = dataset.test[: options.max_test_clips]
        shared = sorted(
            {Path(c.source).resolve() for c in train_clips}
            & {Path(c.source).resolve() for c in test_clips}
        )
        if shared:
            raise ValueError(
                f"{len(shared)} clip(s) are both training and test clips, for "
                f"example {shared[0]}; a detector fitted on test clips scores them "
                "as normal. Give separate training and test folders."
            )
        cache_dir = (
            Path(config.cache_dir).expanduser()
            if config.cache_dir
            else default_cache_dir()
        )
        clip_folders = {Path(c.source).resolve().parent for c in dataset.train}
        clip_folders |= {Path(c.source).resolve().parent for c in dataset.test}
        for folder in sorted(clip_folders):
            if out.resolve().is_relative_to(folder):
                raise ValueError(
                    f"--out {out} is inside the clip folder {folder}, so the next "
                    "run would read the run folder as a clip; choose an --out "
                    "outside the dataset's clip folders."
                )
            if cache_dir.resolve().is_relative_to(folder):
                raise ValueError(
                    f"--cache-dir {cache_dir} is inside the clip folder {folder}, "
                    "so the next run would read the feature cache as a clip; "
                    "choose a --cache-dir outside the dataset's clip folders."
                )
        classes = np.unique(np.concatenate([c.labels for c in test_clips]))
        if classes.size < 2:
            kind = "anomalous" if classes[0] else "normal"
            raise ValueError(
                f"Every labelled test frame is {kind} (labels from "
                f"{options.labels or dataset.root}), so frame AUC is undefined. "
                "Check the labels, or include test clips with both normal and "
                "anomalous frames."
            )
        # Only the first frame of each clip is decoded, to check the frame sizes
        # before any features are extracted.
        train_frames = {clip.name: first_frame_summary(clip) for clip in train_clips}
        frame_size = training_frame_size(train_clips, train_frames)
        for clip in test_clips:
            check_frame_size(
                clip,
                first_frame_summary(clip),
                frame_size.height,
                frame_size.width,
                "Test clip",
            )
        dataset = type(dataset)(dataset.name, dataset.root, train_clips, test_clips)
        logger.info(
            "dataset %s: %d training clips, %d test clips",
            dataset.name,
            len(train_clips),
            len(test_clips),
        )

    with timer.stage("features"):
        feature_config = FeatureConfig.from_dict(config.features)
        check_writable_folder(cache_dir)
        # Clips stay in the cache files and are read one at a time below.
        features = extract_dataset(
            dataset, feature_config, cache_dir, verbose=config.verbose >= 1, lazy=True
        )
        timer.seconds |= {
            f"features.{k}": v for k, v in getattr(features, "timings", {}).items()
        }
    train, test = features["train"], features["test"]
    labels = {clip.name: np.asarray(clip.labels).astype(int) for clip in test_clips}
    n_frames = test.frame_counts()
    for clip in test_clips:
        if n_frames[clip.name] != len(labels[clip.name]):
            raise ValueError(
                f"Test clip {clip.name} ({clip.source}) has {n_frames[clip.name]} "
                f"frames but {len(labels[clip.name])} labels."
            )

    with timer.stage("training"):
        models, train_rows = fit_models_with_rows(train, config, train_frames)
    # Record every detector setting, defaults included, so config.json reruns
    # the same detector even if defaults change.
    resolved = models[0].detector.get_params()
    for key in ("random_state", "verbose"):
        resolved.pop(key)
    resolved["hidden_sizes"] = [int(w) for w in resolved["hidden_sizes"]]
    config.detector = resolved
    # Absolute paths, so that config.json reruns and `mulde score` find the data
    # and the feature cache from any working folder.
    config.dataset.root = str(dataset_root.resolve())
    config.cache_dir = str(cache_dir.resolve())

    with timer.stage("scoring"):
        _prepare_level_baselines(models, train_rows)
        del train_rows
        raw, per_level = score_clips(models, test)
        check_clip_scores(raw, labels)
        smoothed = smooth(raw, config.scoring.smoothing_sigma)

    metrics_raw = frame_metrics(raw, labels)
    metrics_smoothed = frame_metrics(smoothed, labels)
    levels = models[0].detector.levels_
    curve = level_metrics(per_level, labels, levels, config.scoring.smoothing_sigma)
    metrics = {
        "dataset": dataset.name,
        "weighting": config.detector.get("weighting"),
        "seed": config.seed,
        "micro_auc": metrics_smoothed["micro_auc"],
        "macro_auc": metrics_smoothed["macro_auc"],
        "average_precision": metrics_smoothed["average_precision"],
        "smoothing_sigma_frames": config.scoring.smoothing_sigma,
        "smoothed": metrics_smoothed,
        "unsmoothed": metrics_raw,
        "auc_by_level": curve,
        "n_train_rows": [int(m.detector.decision_scores_.shape[0]) for m in models],
        # `mulde score` rejects new clips of another frame size.
        "train_frame_size": {"height": frame_size.height, "width": frame_size.width},
        # Identifies the feature settings, so that mulde score notices a
        # config.json edited after the run.
        "features_hash": feature_config.config_hash(),
        "timings_s": timer.seconds,
        "environment": _environment(models[0].detector),
    }

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with timer.stage("report"):
            (staging / "config.json").write_text(
                json.dumps(config.to_dict(), indent=2), encoding="utf-8"
            )
            write_scores_csv(staging / "scores.csv", raw, smoothed, labels)
            for model in models:
                suffix = model_file_suffix(model.groups, len(models))
                model.detector.save(staging / f"detector{suffix}.safetensors")
                _save_pca(staging / f"pca{suffix}.safetensors", model)
            write_report(staging, metrics, raw, smoothed, labels, config.to_dict())
        metrics["timings_s"] = timer.seconds
        metrics["timings_s"]["total"] = sum(
            v for k, v in timer.seconds.items() if "." not in k
        )
        (staging / "metrics.json").write_text(
            json.dumps(metrics, indent=2), encoding="utf-8"
        )
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s", summary_line(metrics, config.scoring.smoothing_sigma, out))
    return metrics


def summary_line(metrics: dict, smoothing_sigma: float, out: Path) -> str:
    """Return the closing log line of a run: its smoothed AUCs, AP and folder.

    A macro AUC of None, where no test clip has both classes, shows as n/a.
    """
    macro = metrics["macro_auc"]
    macro_text = "n/a" if macro is None else f"{macro:.4f}"
    return (
        f"micro AUC {metrics['micro_auc']:.4f}  macro AUC {macro_text}  "
        f"AP {metrics['average_precision']:.4f}  (smoothed, sigma "
        f"{smoothing_sigma:.1f} frames) -> {out}"
    )


OUTPUT_NAMES = (
    "config.json",
    "metrics.json",
    "scores.csv",
    "report.html",
    "roc.png",
    "clip_scores.png",
    "auc_by_sigma.png",
)


def check_seeds(seeds: list[int]) -> None:
    """Raise ValueError unless ``seeds`` are two or more different valid seeds.

    Checked before the first run, so that a bad last seed costs no work.
    """
    text = ",".join(map(str, seeds))
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"--seeds {text} must name at least two different seeds; use --seed "
            "for a single run."
        )
    invalid = [seed for seed in seeds if not 0 <= seed < 2**32]
    if invalid:
        raise ValueError(
            f"--seeds {text}: {', '.join(map(str, invalid))} not in [0, 2**32); "
            "give seeds such as 0,1,2."
        )


def run_seeds(config: RunConfig, out, seeds: list[int]) -> dict:
    """Run the main job once per seed and summarise the metrics across seeds.

    Seed ``s`` writes a complete run folder ``out/seed-s``; the features are
    extracted once and read from the cache by the later seeds.
    ``out/seeds.json`` lists each seed's smoothed micro AUC, macro AUC and
    average precision with their mean, sample standard deviation, minimum and
    maximum. Returns that summary.
    """
    from mulde.persistence import atomic_write

    check_seeds(seeds)
    out = check_output_folder(out)
    per_seed = {}
    for seed in seeds:
        config.seed = seed
        logger.info("seed %d of %s", seed, seeds)
        metrics = run(config, out / f"seed-{seed}")
        per_seed[seed] = {
            name: metrics[name]
            for name in ("micro_auc", "macro_auc", "average_precision")
        }
    summary = {"seeds": seeds, "weighting": metrics["weighting"], "runs": per_seed}
    for name in ("micro_auc", "macro_auc", "average_precision"):
        values = np.array(
            [v[name] for v in per_seed.values() if v[name] is not None], dtype=float
        )
        summary[name] = (
            {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "min": float(values.min()),
                "max": float(values.max()),
            }
            if len(values)
            else None
        )
    text = json.dumps(summary, indent=2)
    atomic_write(
        out / "seeds.json", lambda target: target.write_text(text, encoding="utf-8")
    )
    logger.info("%s", seeds_summary_line(summary, out / "seeds.json"))
    return summary


def seeds_summary_line(summary: dict, path: Path) -> str:
    """Return the closing line of a run over several seeds: micro AUC statistics."""
    micro = summary["micro_auc"]
    return (
        f"micro AUC over {len(summary['seeds'])} seeds: mean {micro['mean']:.4f}, "
        f"sd {micro['std']:.4f}, range {micro['min']:.4f} to {micro['max']:.4f} "
        f"-> {path}"
    )


def check_output_folder(out) -> Path:
    """Check before any work that the run folder can be written; return it.

    Also removes staging folders that an earlier run of the same folder left
    when it was killed.
    """
    if str(out).strip() == "":
        raise ValueError("--out is empty; give the folder for the run's outputs.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"Output path {out} exists and is not a folder.")
    for name in sorted(set(OUTPUT_NAMES) | model_file_names()):
        if (out / name).is_dir():
            raise IsADirectoryError(
                f"{out / name} is a folder, but the run writes a file of that name; "
                "move it away or choose another --out."
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        raise ValueError(
            f"Cannot write the run folder {out}: {error}. Choose a writable --out."
        ) from error
    probe.rmdir()
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(
            f"Cannot write the run folder {out}: it is not writable. Choose a "
            "writable --out."
        )
    for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return out


def check_writable_folder(
    folder: Path,
    description: str = "the feature cache folder",
    remedy: str = "a writable --cache-dir",
) -> None:
    """Create ``folder`` if needed and raise ValueError if it cannot be written.

    ``description`` names the folder in the message, and ``remedy`` is the
    alternative that the message suggests.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as error:
        raise ValueError(
            f"Cannot write {description} {folder}: {error}. Choose {remedy}."
        ) from error
    probe.rmdir()


def _environment(detector: MULDE) -> dict:
    import datetime
    import platform

    import torch

    from mulde import __version__

    return {
        "mulde": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(detector.device_),
        "precision": dtype_name(detector.compute_dtype_),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def _save_pca(path: Path, model: GroupModel) -> None:
    from safetensors.numpy import save_file

    from mulde.persistence import atomic_write

    arrays = {}
    for group, pca in zip(model.groups, model.pca, strict=True):
        if pca is not None:
            # safetensors.numpy writes a strided array's buffer as it lies in
            # memory, and scikit-learn's components_ is a strided view.
            arrays[f"{group}.mean"] = np.ascontiguousarray(pca.mean_)
            arrays[f"{group}.components"] = np.ascontiguousarray(pca.components_)
    if arrays:
        metadata = {"groups": json.dumps(model.groups)}
        atomic_write(path, lambda target: save_file(arrays, str(target), metadata))


def _publish(staging: Path, out: Path) -> None:
    """Move every staged file into ``out``, replacing older files of the same name.

    Model files of an earlier run that this run did not write are removed, so
    that a concat run after a per-group run leaves no per-group detectors. Only
    the names in :func:`model_file_names` count as model files, so a copy such
    as ``detector_good.safetensors`` stays.
    """
    out.mkdir(parents=True, exist_ok=True)
    staged = {item.name for item in staging.iterdir()}
    for name in sorted(model_file_names() - staged):
        old = out / name
        if old.is_file():
            logger.info("removing %s of an earlier run", old)
            old.unlink()
    for item in sorted(staging.iterdir()):
        target = out / item.name
        if target.is_dir() and not item.is_dir():
            shutil.rmtree(target)
        if item.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(item), target)
        else:
            os.replace(item, target)

"""Score new clips with the detectors and PCAs that ``mulde run`` saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from mulde.config import RunConfig
from mulde.pipeline import (
    GroupModel,
    model_file_names,
    model_file_suffix,
    model_partitions,
)

logger = logging.getLogger(__name__)


def saved_pca(mean: np.ndarray, components: np.ndarray) -> PCA:
    """Rebuild the fitted scikit-learn PCA from its saved mean and components.

    Its transform then runs the same code as in the run, so that rescoring a
    clip gives the run's scores to the last bit.
    """
    pca = PCA(n_components=components.shape[0])
    pca.mean_ = mean
    pca.components_ = components
    pca.n_components_ = components.shape[0]
    pca.n_features_in_ = components.shape[1]
    pca.explained_variance_ = np.ones(components.shape[0], components.dtype)
    return pca


def load_run_models(
    run_dir: Path, device: str | None = None
) -> tuple[RunConfig, list[GroupModel]]:
    """Read the configuration, detectors and PCAs of a finished ``mulde run``.

    Parameters
    ----------
    run_dir : Path
        The ``--out`` folder of the run.
    device : str, optional
        Device of the detectors: ``"auto"``, ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``. By default the run's device, or the CPU where that device
        is not available here.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` lacks ``config.json`` or a detector file of its scoring.
    ValueError
        If ``config.json`` or a model file cannot be read, a PCA file was
        written for other feature groups than ``config.json`` scores, or
        ``device`` is not available.
    """
    from mulde import MULDE

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found; pass the --out folder of a finished `mulde run`."
        )
    config = _read_run_config(config_path)
    device = scoring_device(config, device)
    partitions = model_partitions(config)
    models = []
    for part in partitions:
        suffix = model_file_suffix(part, len(partitions))
        detector_path = run_dir / f"detector{suffix}.safetensors"
        if not detector_path.is_file():
            raise FileNotFoundError(_missing_detector_message(detector_path, config))
        detector = MULDE.load(detector_path, device=device)
        pca_path = run_dir / f"pca{suffix}.safetensors"
        arrays, saved_groups = (
            _read_pca_file(pca_path) if pca_path.is_file() else ({}, None)
        )
        if saved_groups is not None and saved_groups != part:
            raise ValueError(
                f"{pca_path} was written for the feature groups {saved_groups}, "
                f"but {config_path} scores {part} with this model, so config.json "
                "was edited after the run (features.mode or scoring.groups). "
                "Restore the run's config.json, or run `mulde run` again with the "
                "new settings."
            )
        projections = [
            _projection(arrays, g, pca_path) if f"{g}.mean" in arrays else None
            for g in part
        ]
        models.append(GroupModel(part, projections, detector))
    return config, models


def _missing_detector_message(path: Path, config: RunConfig) -> str:
    """Explain a missing detector file: an incomplete run, or an edited config."""
    found = sorted(
        name for name in model_file_names() if (path.parent / name).is_file()
    )
    if not found:
        return f"{path} not found; the run folder is incomplete."
    return (
        f"{path} not found, but the run folder contains {', '.join(found)}: "
        f"{path.parent / 'config.json'} asks for scoring "
        f"{config.scoring.scoring!r} of the groups "
        f"{config.feature_groups()}, so it was edited after the run (scoring.scoring,"
        " scoring.groups or features.mode). Restore the run's config.json, or run "
        "`mulde run` again with the new settings."
    )


def _read_run_config(path: Path) -> RunConfig:
    """Read a run's config.json with :meth:`RunConfig.from_file`.

    ``RunConfig.validate`` rejects a detector device that this machine lacks,
    such as "cuda" on a CPU machine, although the run's files are intact. Such
    a configuration is read with device "auto" and keeps its device in
    ``config.detector``, so that :func:`scoring_device` can fall back to the CPU.
    """
    import torch

    try:
        return RunConfig.from_file(path)
    except ValueError as error:
        original = error
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        device = data["detector"]["device"]
    except (OSError, ValueError, KeyError, TypeError):
        raise original from None
    on_missing_cuda = (
        isinstance(device, str)
        and device.split(":")[0] == "cuda"
        and not torch.cuda.is_available()
    )
    if not on_missing_cuda:
        raise original
    data["detector"]["device"] = "auto"
    config = RunConfig.from_dict(data)
    config.detector["device"] = device
    return config


def scoring_device(config: RunConfig, device: str | None) -> str:
    """Return ``device``, or the run's device where available, else ``"cpu"``.

    Raises
    ------
    ValueError
        If ``device`` is given and is invalid or not available on this machine.
    """
    from mulde.network import resolve_device

    if device is not None:
        resolve_device(device)
        return device
    run_device = config.detector.get("device", "auto")
    try:
        resolve_device(run_device)
    except ValueError as error:
        logger.warning(
            "The run's device %r is not available here (%s); scoring on the CPU. "
            "Choose the device with --device.",
            run_device,
            error,
        )
        return "cpu"
    return run_device


def _read_pca_file(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Read the arrays of a PCA file and the feature groups its metadata names.

    The groups are None when the file does not record them.
    """
    from mulde.persistence import read_safetensors

    metadata, arrays = read_safetensors(
        path, "numpy", "Run `mulde run` again to write it anew."
    )
    if "groups" not in metadata:
        return arrays, None
    try:
        groups = json.loads(metadata["groups"])
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Model file {path} has damaged metadata ({error}). Run `mulde run` "
            "again to write it anew."
        ) from error
    return arrays, groups


def check_model_inputs(
    models: list[GroupModel],
    clip_groups: dict[str, np.ndarray],
    config: RunConfig,
    run_dir: Path,
) -> None:
    """Check that features built with ``config`` fit each model's PCA and detector.

    Parameters
    ----------
    models : list of GroupModel
        Models from :func:`load_run_models`.
    clip_groups : dict of str to numpy.ndarray
        The feature groups of one scored clip; only their widths are used.
    config : RunConfig
        The run's configuration, which built ``clip_groups``.
    run_dir : Path
        The run folder, named in the messages.

    Raises
    ------
    FileNotFoundError
        If the run reduces a group by PCA but its PCA file is missing.
    ValueError
        If a PCA or detector expects another number of columns, because
        ``config.json`` was edited after the run or a file was replaced.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    n_components = config.scoring.pca_components
    for model in models:
        suffix = model_file_suffix(model.groups, len(models))
        pca_path = run_dir / f"pca{suffix}.safetensors"
        width = 0
        for group, pca in zip(model.groups, model.pca, strict=True):
            columns = clip_groups[group].shape[1]
            if pca is None and n_components is not None and columns > n_components:
                if not pca_path.is_file():
                    raise FileNotFoundError(
                        f"{pca_path} not found, although the run reduces the "
                        f"{columns} {group} columns to scoring.pca_components="
                        f"{n_components} by PCA; the run folder is incomplete. "
                        "Copy the file from the run folder again, or run `mulde "
                        "run` again."
                    )
                raise ValueError(
                    f"{pca_path} has no PCA of the {group} features, although "
                    f"{config_path} reduces their {columns} columns to "
                    f"scoring.pca_components={n_components}. Restore the run's "
                    "config.json and PCA file, or run `mulde run` again."
                )
            if pca is not None and pca.n_features_in_ != columns:
                raise ValueError(
                    f"The {group} PCA in {pca_path} expects {pca.n_features_in_} "
                    f"columns, but the {group} features built with the settings of "
                    f"{config_path} have {columns} (features.mode "
                    f"{config.features.get('mode')!r}), so config.json was edited "
                    "after the run. Restore the run's config.json, or run `mulde "
                    "run` again with the new settings."
                )
            width += columns if pca is None else pca.n_components_
        detector = model.detector
        if width != detector.n_features_in_:
            raise ValueError(
                f"The detector of {'+'.join(model.groups)} in {run_dir} was fitted "
                f"on {detector.n_features_in_} features, but the features built "
                f"with the settings of {config_path} give {width}, so config.json "
                "was edited after the run. Restore the run's config.json, or run "
                "`mulde run` again with the new settings."
            )


def _projection(arrays: dict, group: str, path: Path) -> PCA:
    """Read one group's PCA, checking that its components are orthonormal.

    Run folders written before the components were stored contiguous contain
    scrambled components, which this check rejects instead of scoring with them.
    """
    components = arrays[f"{group}.components"].astype(np.float64)
    gram = components @ components.T
    if not np.allclose(gram, np.eye(len(gram)), atol=1e-3):
        raise ValueError(
            f"The {group} components in {path} are not orthonormal, so the file is "
            "damaged or was written by an older mulde that stored them scrambled; "
            "run `mulde run` again to write it anew."
        )
    return saved_pca(arrays[f"{group}.mean"], arrays[f"{group}.components"])


def score_clip_folder(
    run_dir: Path,
    clips_dir: Path,
    out: Path,
    cache_dir: Path | None = None,
    verbose: bool = True,
    device: str | None = None,
    labels: Path | None = None,
) -> dict[str, np.ndarray]:
    """Score every clip in ``clips_dir`` as ``mulde run`` scored its test clips.

    Writes ``out`` as CSV with the columns clip, frame, score, score_smoothed
    (frames count from 0 within each clip) and returns the smoothed scores by
    clip. The features come from the run's feature configuration and are
    cached under ``cache_dir/scored`` (the run's own cache folder by default),
    and clips are read from there one at a time. ``device`` is passed to
    :func:`load_run_models`.

    With ``labels``, a frame-labels file in any format that ``mulde run
    --labels`` reads, the CSV gains a label column, and the frame metrics of
    ``mulde run`` (micro and macro AUC, average precision, unsmoothed and
    smoothed) are written as JSON beside it, to ``out`` with the suffix
    ``.metrics.json``. Labels are checked before any feature is extracted.

    Raises
    ------
    ValueError
        If a clip has another frame size than the run's training clips, the
        feature cache is inside ``clips_dir``, or the run folder's files do not
        fit together (see :func:`check_model_inputs`).
    """
    from mulde.evaluation import check_clip_scores, smooth
    from mulde.features.cache import FeatureConfig, extract_dataset
    from mulde.persistence import atomic_write
    from mulde.pipeline import (
        check_frame_size,
        check_writable_folder,
        default_cache_dir,
        first_frame_summary,
        score_clips,
        write_scores_csv,
    )
    from mulde.video.clips import VideoDataset
    from mulde.video.datasets import check_has_frames, discover_clips
    from mulde.video.readers import is_image_file

    check_scores_path(Path(out), Path(run_dir))
    folders = {
        "--run": (run_dir, "the --out folder of a finished `mulde run`"),
        "--clips": (clips_dir, "one with a subfolder of frames or a video per clip"),
    }
    for option, (path, expected) in folders.items():
        if Path(path).is_file():
            raise NotADirectoryError(
                f"{option} {path} is a file; pass a folder: {expected}."
            )
    config, models = load_run_models(run_dir, device)
    hint = (
        "Point --clips at a folder that contains one subfolder of frame images or "
        "one video file per clip."
    )
    if Path(clips_dir).is_dir() and any(
        is_image_file(path) for path in Path(clips_dir).iterdir()
    ):
        hint = (
            f"{clips_dir} contains frame images itself, so it is one clip: pass its "
            "parent folder, or move it into a folder of its own."
        )
    clips = discover_clips(clips_dir, empty_hint=hint)
    for clip in clips:
        check_has_frames(clip, "input")
    run_metrics = _read_run_metrics(Path(run_dir))
    check_feature_settings(run_metrics, config, Path(run_dir))
    frame_size = run_frame_size(run_metrics, Path(run_dir))
    if frame_size is not None:
        for clip in clips:
            check_frame_size(clip, first_frame_summary(clip), *frame_size, "Clip")
    cache_root = Path(cache_dir or config.cache_dir or default_cache_dir())
    if cache_root.resolve().is_relative_to(Path(clips_dir).resolve()):
        raise ValueError(
            f"The feature cache folder {cache_root} (from --cache-dir or the run's "
            f"config.json) is inside --clips {clips_dir}, so the next score would "
            f"read the cache as a clip; pass a --cache-dir outside {clips_dir}."
        )
    # A run's config.json may name a cache folder of another machine or user.
    check_writable_folder(cache_root)
    clip_labels = None
    if labels is not None:
        clip_labels = _load_new_clip_labels(Path(labels), clips)
    dataset = VideoDataset("new", Path(clips_dir), train=[], test=clips)
    # lazy: the clips stay in the cache and are scored one at a time. The new
    # clips sit in the "test" split of the cache but are logged as "new".
    features = extract_dataset(
        dataset,
        FeatureConfig.from_dict(config.features),
        cache_root / "scored",
        verbose=verbose,
        lazy=True,
        split_labels={"test": "new"},
    )["test"]
    check_model_inputs(models, next(iter(features.values())).groups, config, run_dir)
    raw, _ = score_clips(models, features)
    smoothed = smooth(raw, config.scoring.smoothing_sigma)

    if clip_labels is not None:
        check_clip_scores(raw, clip_labels)
    atomic_write(
        Path(out),
        lambda target: write_scores_csv(target, raw, smoothed, clip_labels),
    )
    logger.info("scored %d clips -> %s", len(clips), out)
    if clip_labels is not None:
        _write_new_clip_metrics(Path(out), raw, smoothed, clip_labels, config)
    elif (stale := metrics_path(Path(out))).is_file():
        # Metrics of an earlier scoring with labels would sit beside scores
        # that they do not describe.
        stale.unlink()
        logger.info("removed %s, the metrics of an earlier scoring into %s", stale, out)
    return smoothed


def check_scores_path(out: Path, run_dir: Path) -> None:
    """Raise unless ``out`` can take the scores CSV without harm to ``run_dir``.

    ``out`` must name a file, not a folder, below a folder that exists or can
    be created and written. It must not be a file that ``mulde run`` wrote into
    ``run_dir``.
    """
    from mulde.persistence import check_file_target
    from mulde.pipeline import OUTPUT_NAMES, check_writable_folder

    check_file_target(
        out,
        "the scores (--out)",
        f"give the path of a file, such as {out / 'scores.csv'}",
    )
    # The metrics file beside the CSV, <stem>.metrics.json, cannot have a run
    # file's name, so only the CSV itself is checked.
    run_files = set(OUTPUT_NAMES) | model_file_names() | {"seeds.json"}
    if out.resolve().parent == run_dir.resolve() and out.name in run_files:
        raise ValueError(
            f"--out {out} would overwrite {out.name} of the run folder {run_dir}; "
            "choose another file name, or a path outside the run folder."
        )
    check_writable_folder(out.parent, "the scores' folder", "a writable --out")


def metrics_path(out: Path) -> Path:
    """Return the metrics file written beside a scores CSV with ``--labels``."""
    return out.with_name(out.stem + ".metrics.json")


def _load_new_clip_labels(path: Path, clips: list) -> dict[str, np.ndarray]:
    """Read 0/1 frame labels for ``clips`` and check one label per frame."""
    from mulde.video.labels import LabelError, load_clip_labels
    from mulde.video.readers import count_frames

    names = [clip.name for clip in clips]
    lengths = [count_frames(clip.source) for clip in clips]
    loaded = load_clip_labels(path, names, lengths)
    result = {}
    for clip, values, length in zip(clips, loaded, lengths, strict=True):
        values = np.asarray(values)
        if values.shape != (length,):
            raise LabelError(
                f"Labels for clip {clip.name!r} from {path} have {values.size} "
                f"frames but {clip.source} has {length} frames. Give one label per "
                "frame of each clip in --clips."
            )
        result[clip.name] = values.astype(int)
    pooled = np.concatenate(list(result.values()))
    if pooled.min() == pooled.max():
        kind = "anomalous" if pooled[0] else "normal"
        raise LabelError(
            f"Every frame in {path} is {kind}, so frame AUC is undefined. Give "
            "clips with both normal and anomalous frames, or score without --labels."
        )
    return result


def _write_new_clip_metrics(
    out: Path, raw: dict, smoothed: dict, labels: dict, config: RunConfig
) -> None:
    from mulde.evaluation import frame_metrics
    from mulde.persistence import atomic_write
    from mulde.pipeline import summary_line

    metrics = frame_metrics(smoothed, labels) | {
        "smoothing_sigma_frames": config.scoring.smoothing_sigma,
        "unsmoothed": frame_metrics(raw, labels),
    }
    path = metrics_path(out)
    text = json.dumps(metrics, indent=2)
    atomic_write(path, lambda target: target.write_text(text, encoding="utf-8"))
    logger.info(summary_line(metrics, config.scoring.smoothing_sigma, path))


def _read_run_metrics(run_dir: Path) -> dict:
    """Return the run's metrics.json.

    It records the feature settings and frame size that scoring is checked
    against, so a missing or unreadable file is an error, not a skipped check.
    """
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; the run folder is incomplete. Pass the --out "
            "folder of a finished `mulde run`, or run it again."
        )
    advice = "restore the run's metrics.json, or run `mulde run` again."
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable metrics file ({error}); {advice}"
        ) from error
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{path} is not a metrics file: it contains a JSON "
            f"{type(metrics).__name__}, not an object; {advice}"
        )
    return metrics


def check_feature_settings(metrics: dict, config: RunConfig, run_dir: Path) -> None:
    """Raise ValueError if config.json's feature settings differ from the run's.

    ``metrics`` is the run's metrics.json, which records the hash of the feature
    settings that the run extracted with. Runs from before that key are not
    checked.
    """
    from mulde.features.cache import FeatureConfig

    recorded = metrics.get("features_hash")
    if recorded is None:
        return
    current = FeatureConfig.from_dict(config.features).config_hash()
    if current != recorded:
        raise ValueError(
            f"The features section of {run_dir / 'config.json'} differs from the "
            f"settings the run extracted with (hash {current} against {recorded} "
            "in metrics.json), so the scores would not be comparable with the "
            "run's. Restore the run's config.json, or run `mulde run` again with "
            "the new settings."
        )


def run_frame_size(metrics: dict, run_dir: Path) -> tuple[int, int] | None:
    """Return the (height, width) of the run's training frames from its metrics.

    ``metrics`` is the run's metrics.json. Returns None, with a warning, for
    runs that did not record the size.
    """
    try:
        size = metrics["train_frame_size"]
        height, width = int(size["height"]), int(size["width"])
    except (KeyError, TypeError, ValueError) as error:
        logger.warning(
            "%s records no training frame size (%s: %s), so the clips' frame "
            "sizes are not checked; the run may be from an older mulde.",
            run_dir / "metrics.json",
            type(error).__name__,
            error,
        )
        return None
    if height < 1 or width < 1:
        raise ValueError(
            f"{run_dir / 'metrics.json'} records a training frame size of {height} "
            f"x {width} pixels, which no frame has, so the file was edited or "
            "damaged. Restore the run's metrics.json, or run `mulde run` again."
        )
    return height, width

"""Score new clips with the detectors and PCAs that ``mulde run`` saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from mulde.config import RunConfig
from mulde.pipeline import GroupModel, model_file_suffix, model_partitions

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


def load_run_models(run_dir: Path) -> tuple[RunConfig, list[GroupModel]]:
    """Read the configuration, detectors and PCAs of a finished ``mulde run``.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` lacks ``config.json`` or a detector file of its scoring.
    """
    from safetensors.numpy import load_file

    from mulde import MULDE

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found; pass the --out folder of a finished `mulde run`."
        )
    config = RunConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    partitions = model_partitions(config)
    models = []
    for part in partitions:
        suffix = model_file_suffix(part, len(partitions))
        detector_path = run_dir / f"detector{suffix}.safetensors"
        if not detector_path.is_file():
            raise FileNotFoundError(
                f"{detector_path} not found; the run folder is incomplete."
            )
        detector = MULDE.load(
            detector_path, device=config.detector.get("device", "auto")
        )
        pca_path = run_dir / f"pca{suffix}.safetensors"
        arrays = load_file(str(pca_path)) if pca_path.is_file() else {}
        projections = [
            _projection(arrays, g, pca_path) if f"{g}.mean" in arrays else None
            for g in part
        ]
        models.append(GroupModel(part, projections, detector))
    return config, models


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
) -> dict[str, np.ndarray]:
    """Score every clip in ``clips_dir`` as ``mulde run`` scored its test clips.

    Writes ``out`` as CSV with the columns clip, frame, score, score_smoothed
    (frames count from 0 within each clip) and returns the smoothed scores by
    clip. The features come from the run's feature configuration and are
    cached under ``cache_dir/scored`` (the run's own cache folder by default),
    and clips are read from there one at a time.
    """
    from mulde.evaluation import smooth
    from mulde.features.cache import FeatureConfig, extract_dataset
    from mulde.persistence import atomic_write
    from mulde.pipeline import default_cache_dir, score_clips, write_scores_csv
    from mulde.video.clips import VideoDataset
    from mulde.video.datasets import check_has_frames, discover_clips

    config, models = load_run_models(run_dir)
    clips = discover_clips(clips_dir)
    for clip in clips:
        check_has_frames(clip, "input")
    root = Path(cache_dir or config.cache_dir or default_cache_dir()) / "scored"
    dataset = VideoDataset("new", Path(clips_dir), train=[], test=clips)
    # lazy: the clips stay in the cache and are scored one at a time.
    features = extract_dataset(
        dataset,
        FeatureConfig.from_dict(config.features),
        root,
        verbose=verbose,
        lazy=True,
    )["test"]
    raw, _ = score_clips(models, features)
    smoothed = smooth(raw, config.scoring.smoothing_sigma)

    atomic_write(Path(out), lambda target: write_scores_csv(target, raw, smoothed))
    logger.info("scored %d clips -> %s", len(clips), out)
    return smoothed

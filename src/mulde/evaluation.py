"""Frame-level metrics comparable with the video anomaly detection literature.

Micro AUC pools all test frames of all clips into one ROC curve. Macro AUC is the
mean of the per-clip AUCs; a clip whose frames are all one class has no ROC
curve, so it is left out of the mean and listed in ``single_class_clips``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


class ScoreError(ValueError):
    """Scores that cannot be evaluated: wrong length, NaN, or all equal."""


def check_clip_scores(
    scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> None:
    """Raise ScoreError unless every labelled frame has exactly one finite score."""
    missing = sorted(set(labels) - set(scores))
    extra = sorted(set(scores) - set(labels))
    if missing or extra:
        raise ScoreError(
            f"Scores and labels cover different clips: without scores {missing}, "
            f"without labels {extra}."
        )
    for clip, clip_labels in labels.items():
        clip_scores = np.asarray(scores[clip])
        if clip_scores.shape != np.shape(clip_labels):
            raise ScoreError(
                f"Clip {clip}: {clip_scores.shape[0]} scores for "
                f"{len(clip_labels)} labelled frames; every frame needs one score."
            )
        if not np.all(np.isfinite(clip_scores)):
            raise ScoreError(
                f"Clip {clip}: {int((~np.isfinite(clip_scores)).sum())} scores are "
                "NaN or infinite; the detector or features produced invalid values."
            )
    pooled = np.concatenate([np.asarray(scores[clip]) for clip in labels])
    if pooled.size and np.ptp(pooled) == 0:
        raise ScoreError(
            f"All {pooled.size} frame scores equal {pooled[0]}; an AUC of constant "
            "scores says nothing. Check that the detector was trained."
        )


def smooth(scores: Mapping[str, np.ndarray], sigma_frames: float) -> dict:
    """Gaussian smoothing along time within each clip; 0 returns copies."""
    if sigma_frames < 0:
        raise ValueError(f"sigma_frames={sigma_frames} must be >= 0.")
    if sigma_frames == 0:
        return {
            clip: np.asarray(s, dtype=np.float64).copy() for clip, s in scores.items()
        }
    return {
        clip: gaussian_filter1d(
            np.asarray(s, dtype=np.float64), sigma_frames, mode="nearest"
        )
        for clip, s in scores.items()
    }


def frame_metrics(
    scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> dict:
    """Micro AUC, macro AUC, average precision and per-clip AUCs.

    Parameters
    ----------
    scores, labels : mapping of clip name to array of shape (n_frames,)
        Anomaly scores (higher = more anomalous) and 0/1 labels.
    """
    check_clip_scores(scores, labels)
    clips = list(labels)
    y = np.concatenate([np.asarray(labels[c]) for c in clips]).astype(int)
    s = np.concatenate([np.asarray(scores[c], dtype=np.float64) for c in clips])
    if y.min() == y.max():
        raise ScoreError(
            f"All {y.size} test frames have label {y[0]}; AUC needs both normal and "
            "anomalous frames."
        )
    per_clip, single_class = {}, []
    for clip in clips:
        clip_labels = np.asarray(labels[clip]).astype(int)
        if clip_labels.min() == clip_labels.max():
            single_class.append(clip)
            continue
        per_clip[clip] = float(roc_auc_score(clip_labels, scores[clip]))
    return {
        "micro_auc": float(roc_auc_score(y, s)),
        "macro_auc": float(np.mean(list(per_clip.values()))) if per_clip else None,
        "average_precision": float(average_precision_score(y, s)),
        "clip_auc": per_clip,
        "single_class_clips": single_class,
        "n_frames": int(y.size),
        "n_anomalous_frames": int(y.sum()),
    }


def roc_points(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]):
    """False and true positive rates of the pooled ROC curve."""
    clips = list(labels)
    y = np.concatenate([np.asarray(labels[c]) for c in clips]).astype(int)
    s = np.concatenate([np.asarray(scores[c], dtype=np.float64) for c in clips])
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr

"""Ped2 frame AUC of other ways to turn cell scores into frame scores.

A diagnostic for docs/ped2.md, not a tuning tool: it reads the test labels, so
nothing it prints may set a default. It fits the main job's default detector on
the cached grid features, scores every cell once, and compares frame scores:

- ``max``: the largest cell score, as the main job does;
- ``max-of-n``: ``-log(1 - F(max) ** n)``, with F the training cells' empirical
  distribution and n the frame's cell count, the surprise of the largest of n
  independent normal cells. It removes any advantage that crowded frames get
  from having more cells to draw a maximum from;
- ``top-3``: the mean of the three largest cell scores;
- ``mean``: the mean over the frame's cells.

Each is smoothed as the main job smooths. For every rule it also prints a
label-free number: the mean correlation, over the training clips, between a
frame's score and its cell count. Frames without cells take the lowest score
of their clip's other frames.

Run from the repository root::

    python -m benchmarks.ped2_frame_scores --root ../shared/data/ped2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np


def frame_values(
    scores: np.ndarray,
    frame_index: np.ndarray,
    n_frames: int,
    rule: Callable[[np.ndarray], float],
) -> np.ndarray:
    """Apply ``rule`` to the cell scores of each frame; NaN where a frame has none."""
    out = np.full(n_frames, np.nan)
    order = np.argsort(frame_index, kind="stable")
    frames, starts = np.unique(frame_index[order], return_index=True)
    for frame, cells in zip(frames, np.split(scores[order], starts[1:]), strict=True):
        out[frame] = rule(cells)
    return out


def rules(train_scores: np.ndarray) -> dict[str, Callable[[np.ndarray], float]]:
    """Return the frame rules, given the training cell scores that max-of-n needs."""
    ordered = np.sort(train_scores)

    def max_of_n(cells: np.ndarray) -> float:
        # Empirical CDF kept inside (0, 1), so the surprise stays finite.
        rank = np.searchsorted(ordered, cells.max(), side="right")
        cdf = (rank + 0.5) / (len(ordered) + 1)
        return float(-np.log1p(-(cdf ** len(cells))))

    return {
        "max": lambda cells: float(cells.max()),
        "max-of-n": max_of_n,
        "top-3": lambda cells: float(np.sort(cells)[-3:].mean()),
        "mean": lambda cells: float(cells.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    from mulde.config import RunConfig
    from mulde.evaluation import frame_metrics, smooth
    from mulde.features import FeatureConfig, extract_dataset
    from mulde.pipeline import default_cache_dir, fit_models_with_rows
    from mulde.video import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="UCSD Ped2 root")
    parser.add_argument(
        "--cache-dir", type=Path, help="feature cache folder (default: the main job's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="detector seed")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed)
    config.validate()
    config.resolve_defaults()
    dataset = load_dataset("ped2", args.root)
    features = extract_dataset(
        dataset,
        FeatureConfig.from_dict(config.features),
        args.cache_dir or default_cache_dir(),
        lazy=True,
    )
    (model,), _ = fit_models_with_rows(features["train"], config)

    def cell_scores(split: str) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        result = {}
        for name, clip in features[split].items():
            rows = model.transform(clip.groups)
            scores = model.detector.decision_function(rows) if len(rows) else rows
            result[name] = (np.asarray(scores), clip.frame_index, clip.n_frames)
        return result

    train, test = cell_scores("train"), cell_scores("test")
    labels = {clip.name: np.asarray(clip.labels).astype(int) for clip in dataset.test}
    train_cells = np.concatenate([scores for scores, _, _ in train.values()])
    sigma = config.scoring.smoothing_sigma
    print(f"seed {args.seed}, smoothing sigma {sigma} frames")
    for name, rule in rules(train_cells).items():
        frames = {}
        for clip, (scores, index, n_frames) in test.items():
            values = frame_values(scores, index, n_frames, rule)
            frames[clip] = np.where(np.isnan(values), np.nanmin(values), values)
        metrics = frame_metrics(smooth(frames, sigma), labels)
        correlations = []
        for scores, index, n_frames in train.values():
            values = frame_values(scores, index, n_frames, rule)
            counts = np.bincount(index, minlength=n_frames)
            valid = ~np.isnan(values)
            correlations.append(np.corrcoef(values[valid], counts[valid])[0, 1])
        clip_auc = " ".join(f"{v:.3f}" for v in metrics["clip_auc"].values())
        print(
            f"{name:9s} micro AUC {metrics['micro_auc']:.3f}, macro "
            f"{metrics['macro_auc']:.3f}, AP {metrics['average_precision']:.3f}; "
            f"clips {clip_auc}; training corr(score, cells) "
            f"{np.mean(correlations):+.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Frame AUC of each cached Ped2 feature group on its own.

A diagnostic for docs/ped2.md, not a tuning tool: it reads the test labels, so
nothing it prints may set a default. For each feature group of the main job's
cache it scores every object by its mean distance to the 5 nearest training
objects (standardised features), takes the maximum over each frame's objects, and
prints the frame micro AUC-ROC. It also prints the AUC of the largest mean flow
magnitude per frame, a score with no learning at all.

Run from the repository root, after a ``mulde run`` that filled the cache::

    python -m benchmarks.ped2_diagnostics --root ../shared/data/ped2 \\
        --cache-dir runs/cache
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors


def frame_max(clip, values: np.ndarray) -> np.ndarray:
    """Maximum of one value per object over each frame; 0 for empty frames."""
    from mulde.pipeline import _frame_max

    return _frame_max(values, clip.frame_index, clip.n_frames, 0.0)


def main(argv: list[str] | None = None) -> int:
    from mulde.config import RunConfig
    from mulde.features import FeatureConfig, extract_dataset
    from mulde.video import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="UCSD Ped2 root")
    parser.add_argument("--cache-dir", type=Path, required=True, help="feature cache")
    parser.add_argument("--flow-gap", type=int, help="feature setting to read")
    args = parser.parse_args(argv)

    features = dict(RunConfig().features)
    if args.flow_gap is not None:
        features["flow_gap"] = args.flow_gap
    dataset = load_dataset("ped2", args.root)
    cached = extract_dataset(dataset, FeatureConfig.from_dict(features), args.cache_dir)
    train, test = cached["train"], cached["test"]
    labels = np.concatenate([np.asarray(c.labels).astype(int) for c in dataset.test])

    speed = [frame_max(c, c.groups["velocity"][:, -2]) for c in test.values()]
    auc = roc_auc_score(labels, np.concatenate(speed))
    print(f"largest mean flow magnitude: AUC {auc:.3f}")
    for group in next(iter(train.values())).groups:
        rows = np.concatenate([c.groups[group] for c in train.values()])
        mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-6
        neighbours = NearestNeighbors(n_neighbors=5).fit((rows - mean) / scale)
        scores = []
        for clip in test.values():
            values = clip.groups[group]
            distance = (
                neighbours.kneighbors((values - mean) / scale)[0].mean(axis=1)
                if len(values)
                else np.zeros(0)
            )
            scores.append(frame_max(clip, distance))
        auc = roc_auc_score(labels, np.concatenate(scores))
        print(f"5-NN distance on {group} ({rows.shape[1]} columns): AUC {auc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

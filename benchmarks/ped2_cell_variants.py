"""Frame AUC of grid-cell feature sets that the default does not use.

A diagnostic for docs/ped2.md, not a tuning tool: it reads the test labels, so
nothing it prints may set a default. It adds two groups to the cached grid-cell
features of the main job and scores each feature set with the main job's
detector, PCA, frame maximum and smoothing:

- ``"local"``: the EfficientNet-Lite0 map after block 10 (112 channels, stride
  16), bilinearly interpolated at each cell centre. Its receptive field is
  smaller than the last map's, so it describes the cell's own object more and
  its surroundings less;
- ``"motion"``: the coherence of the cell's foreground flow (length of the mean
  flow vector over the mean flow length, 1 for a rigid translation) and the
  spread of the flow vectors around their mean, in pixels per frame. Walking
  legs move against the body; a cyclist's body moves as one piece.

Run from the repository root after a default ``mulde run`` filled the cache::

    python -m benchmarks.ped2_cell_variants --root ../shared/data/ped2
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import torch

LOCAL_BLOCK = 10
VARIANTS = {
    "default": ["velocity", "appearance", "geometry"],
    "default + local": ["velocity", "appearance", "local", "geometry"],
    "default + motion": ["velocity", "appearance", "motion", "geometry"],
    "local instead of appearance": ["velocity", "local", "geometry"],
}


def block_map(backbone, images: np.ndarray, block: int) -> np.ndarray:
    """Return the map after EfficientNet-Lite0 block ``block``, (N, C, h, w)."""
    from mulde.network import autocast

    model = backbone.model
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(backbone.device, backbone.compute_dtype):
        x = model._swish(model._bn0(model._conv_stem((batch - 127.0) / 128.0)))
        for block_module in model._blocks[: block + 1]:
            x = block_module(x)
    return x.float().numpy()


def local_group(clip, source, backbone, batch_size: int = 16) -> np.ndarray:
    """Sample the block map of every frame at the centres of its cells."""
    from mulde.features.grid import sample_feature_map
    from mulde.features.objects import checked_frames

    centres = np.stack(
        [
            (clip.boxes[:, 1] + clip.boxes[:, 3]) / 2.0,
            (clip.boxes[:, 0] + clip.boxes[:, 2]) / 2.0,
        ],
        axis=1,
    )
    rows = []
    frames = list(checked_frames(source))
    for start in range(0, len(frames), batch_size):
        images = np.stack(frames[start : start + batch_size])
        maps = block_map(backbone, images, LOCAL_BLOCK)
        for offset, feature_map in enumerate(maps):
            chosen = clip.frame_index == start + offset
            rows.append(
                sample_feature_map(feature_map, centres[chosen], images.shape[1:3])
            )
    return np.concatenate(rows).astype(np.float32)


def motion_group(source, config) -> np.ndarray:
    """Coherence and spread of the foreground flow of each cell, in cell order."""
    from mulde.features.flow import FlowEstimator
    from mulde.features.grid import _cell_blocks, foreground_cells
    from mulde.features.objects import checked_frames, fitted_proposer, iter_velocity

    proposer = fitted_proposer(source, config)
    masks: list[np.ndarray] = []

    def grays():
        for rgb in checked_frames(source):
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            masks.append(proposer.foreground(gray))
            yield gray

    cell = config.grid_cell
    rows = []
    flows = iter_velocity(grays(), FlowEstimator(config.flow_preset), config.flow_gap)
    for _, velocity in flows:
        mask = masks.pop(0)
        r, c = foreground_cells(mask, cell, config.grid_min_foreground)
        chosen = _cell_blocks(mask > 0, cell)[r, c]
        dx = _cell_blocks(velocity[..., 0], cell)[r, c]
        dy = _cell_blocks(velocity[..., 1], cell)[r, c]
        count = chosen.sum(axis=1)
        mean_dx = (dx * chosen).sum(axis=1) / count
        mean_dy = (dy * chosen).sum(axis=1) / count
        mean_length = (np.hypot(dx, dy) * chosen).sum(axis=1) / count
        coherence = np.hypot(mean_dx, mean_dy) / (mean_length + 1e-3)
        deviation = (dx - mean_dx[:, None]) ** 2 + (dy - mean_dy[:, None]) ** 2
        spread = np.sqrt((deviation * chosen).sum(axis=1) / count)
        rows.append(np.stack([coherence, spread], axis=1))
    return np.concatenate(rows).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from mulde.config import RunConfig
    from mulde.evaluation import frame_metrics, smooth
    from mulde.features import FeatureConfig, extract_dataset
    from mulde.features.cache import build_backbone
    from mulde.pipeline import default_cache_dir, fit_models, score_clips
    from mulde.video import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="UCSD Ped2 root")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant")
    args = parser.parse_args(argv)

    dataset = load_dataset("ped2", args.root)
    config = FeatureConfig.from_dict({"mode": "grid"})
    cache = args.cache_dir or default_cache_dir()
    features = extract_dataset(dataset, config, cache, verbose=False)
    backbone = build_backbone(config)
    start = time.perf_counter()
    splits = {}
    for split, clips in (("train", dataset.train), ("test", dataset.test)):
        splits[split] = {}
        for clip in clips:
            cached = features[split][clip.name]
            groups = dict(cached.groups)
            groups["local"] = local_group(cached, clip.source, backbone)
            groups["motion"] = motion_group(clip.source, config)
            splits[split][clip.name] = dataclasses.replace(cached, groups=groups)
    print(
        f"extra groups of {len(splits['train']) + len(splits['test'])} clips in "
        f"{time.perf_counter() - start:.0f} s"
    )

    labels = {c.name: np.asarray(c.labels).astype(int) for c in dataset.test}
    for name, groups in VARIANTS.items():
        for seed in range(args.seeds):
            run = RunConfig.from_dict({"seed": seed})
            # Set after validation, which accepts only the cached groups.
            run.scoring.groups = groups
            run.verbose = 0
            models = fit_models(splits["train"], run)
            raw, _ = score_clips(models, splits["test"])
            metrics = frame_metrics(smooth(raw, run.scoring.smoothing_sigma), labels)
            per_clip = " ".join(
                f"{clip} {auc:.3f}" for clip, auc in metrics["clip_auc"].items()
            )
            print(
                f"{name:28s} seed {seed}  micro {metrics['micro_auc']:.4f}  macro "
                f"{metrics['macro_auc']:.4f}  AP {metrics['average_precision']:.4f}"
                f"  | {per_clip}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

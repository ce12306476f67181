"""Time object-centric feature extraction on real UCSD Ped2 clips.

:func:`time_grid_stages` times the stages of the grid mode in the same way.

Each stage runs on its own over the same frames (decode, background sampling,
flow, proposals, crops and box features, backbone), then the full extraction runs
end to end, with and without the background thread, ``--repeats`` times each.
Rates are frames per second of the clips' frames; the backbone rate also gives
crops per second. The backbone stage runs with the worker and torch thread
counts that extraction uses (``FeatureConfig.backbone_workers`` and
``torch_threads``). Frames per CPU second (all threads of this process) stay
meaningful on a machine shared with other jobs, where wall-clock rates drop.

Example::

    python benchmarks/features_speed.py --clips 3
    python benchmarks/features_speed.py --root /data/ped2/training/frames \\
        --clips 2 --crop-size 96
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from mulde.features.backbone import get_backbone
from mulde.features.cache import FeatureConfig
from mulde.features.flow import FlowEstimator, box_flow_features
from mulde.features.grid import cell_velocity, foreground_cells, sample_feature_map
from mulde.features.objects import (
    backbone_parallelism,
    box_geometry,
    crop_boxes,
    extract_object_features,
    iter_velocity,
    ordered_map,
    torch_threads,
)
from mulde.features.proposals import BackgroundSampler, ProposalExtractor
from mulde.network import dtype_name
from mulde.video.readers import iter_frames

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "ped2"
    / "training"
    / "frames"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="folder whose sorted subfolders are clips of frames "
        "(default: %(default)s)",
    )
    parser.add_argument("--clips", type=int, default=2, help="number of clips to time")
    parser.add_argument(
        "--crop-size",
        type=int,
        default=FeatureConfig.crop_size,
        help="crop side in pixels",
    )
    parser.add_argument(
        "--flow-preset", default=FeatureConfig.flow_preset, help="OpenCV DIS preset"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=FeatureConfig.batch_size,
        help="crops per forward pass",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="backbone batches run at once (default: one per CPU core)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads per worker (default: 1 on CPU)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="end-to-end runs per setting"
    )
    return parser.parse_args()


def timed(label: str, n_frames: int, seconds: float, extra: str = "") -> None:
    rate = n_frames / seconds
    print(f"{label:<30} {seconds:7.2f} s {rate:8.1f} frames/s {extra}")


def time_batches(function, batches: list, workers: int) -> float:
    """Return the seconds of ``function`` over ``batches`` in ``workers`` threads.

    The first batch runs once before the timing, as a warm-up.
    """
    function(batches[0])
    start = time.perf_counter()
    for _ in ordered_map(function, batches, workers):
        pass
    return time.perf_counter() - start


def print_decode_and_background(
    n_frames: int, decode: float, background: float
) -> None:
    timed("decode (iter_frames)", n_frames, decode)
    timed(
        "background median", n_frames, background, "(the sampling pass decodes again)"
    )


def time_shared_stages(clips: list[Path], config: FeatureConfig) -> dict:
    """Time decoding, background fitting and flow, the stages of every mode.

    Returns the decoded frames, gray frames, fitted proposers and velocity fields
    per clip, the frame count and the seconds of each stage.
    """
    start = time.perf_counter()
    frames = {clip: list(iter_frames(clip)) for clip in clips}
    decode = time.perf_counter() - start
    grays = {
        clip: [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in frames[clip]]
        for clip in clips
    }

    start = time.perf_counter()
    proposers = {}
    for clip in clips:
        sampler = BackgroundSampler(config.proposals.background_frames)
        for gray in grays[clip]:
            sampler.add(gray)
        proposers[clip] = ProposalExtractor(config.proposals)
        proposers[clip].fit(sampler.frames)
    background = time.perf_counter() - start

    start = time.perf_counter()
    velocity = {}
    for clip in clips:
        estimator = FlowEstimator(config.flow_preset)
        velocity[clip] = [
            field for _, field in iter_velocity(grays[clip], estimator, config.flow_gap)
        ]
    flow = time.perf_counter() - start
    return {
        "frames": frames,
        "grays": grays,
        "proposers": proposers,
        "velocity": velocity,
        "n_frames": sum(len(clip_frames) for clip_frames in frames.values()),
        "seconds": {"decode": decode, "background": background, "flow": flow},
    }


def time_stages(
    clips: list[Path], config: FeatureConfig, backbone, workers: int
) -> dict:
    """Time each object-mode stage on its own; return counts and seconds."""
    shared = time_shared_stages(clips, config)
    frames, grays, velocity = shared["frames"], shared["grays"], shared["velocity"]
    proposers, n_frames = shared["proposers"], shared["n_frames"]
    decode, background, flow = shared["seconds"].values()

    start = time.perf_counter()
    boxes = {
        clip: [proposers[clip].propose(gray) for gray in grays[clip]] for clip in clips
    }
    proposals = time.perf_counter() - start
    n_boxes = sum(len(frame_boxes) for clip in clips for frame_boxes in boxes[clip])

    start = time.perf_counter()
    crops = []
    for clip in clips:
        for rgb, field, frame_boxes in zip(
            frames[clip], velocity[clip], boxes[clip], strict=True
        ):
            box_flow_features(
                field, frame_boxes, config.direction_bins, config.magnitude_edges
            )
            box_geometry(frame_boxes, rgb.shape[:2])
            crops.append(
                crop_boxes(rgb, frame_boxes, config.crop_size, config.crop_context)
            )
    box_features = time.perf_counter() - start

    all_crops = np.concatenate(crops)
    batches = [
        all_crops[i : i + config.batch_size]
        for i in range(0, len(all_crops), config.batch_size)
    ]
    cnn = time_batches(backbone.embed, batches, workers)

    print(f"frames: {n_frames}, boxes: {n_boxes} ({n_boxes / n_frames:.1f} per frame)")
    print_decode_and_background(n_frames, decode, background)
    timed("proposals", n_frames, proposals)
    timed(f"flow (DIS {config.flow_preset})", n_frames, flow)
    timed("box flow, geometry, crops", n_frames, box_features)
    timed(
        f"backbone ({config.crop_size} px crops)",
        n_frames,
        cnn,
        f"{n_boxes / cnn:.0f} crops/s",
    )
    stage_sum = 2 * decode + background + proposals + flow + box_features + cnn
    timed("sum of stages", n_frames, stage_sum)
    return {
        "mode": "object",
        "frames": n_frames,
        "boxes": n_boxes,
        "seconds": {
            "decode": decode,
            "background": background,
            "proposals": proposals,
            "flow": flow,
            "box_features_and_crops": box_features,
            "backbone": cnn,
            # Background sampling decodes every frame once more.
            "sum": stage_sum,
        },
    }


def time_grid_stages(
    clips: list[Path], config: FeatureConfig, backbone, workers: int
) -> dict:
    """Time each grid-mode stage on its own; return counts and seconds."""
    shared = time_shared_stages(clips, config)
    frames, grays, velocity = shared["frames"], shared["grays"], shared["velocity"]
    proposers, n_frames = shared["proposers"], shared["n_frames"]
    decode, background, flow = shared["seconds"].values()

    start = time.perf_counter()
    masks = {
        clip: [proposers[clip].foreground(gray) for gray in grays[clip]]
        for clip in clips
    }
    foreground = time.perf_counter() - start

    start = time.perf_counter()
    centres = []
    for clip in clips:
        for mask, field in zip(masks[clip], velocity[clip], strict=True):
            rows, columns = foreground_cells(
                mask, config.grid_cell, config.grid_min_foreground
            )
            cell_velocity(field, mask, rows, columns, config.grid_cell)
            centres.append((np.stack([rows, columns], axis=1) + 0.5) * config.grid_cell)
    cells = time.perf_counter() - start
    n_cells = sum(len(frame_centres) for frame_centres in centres)

    all_frames = [rgb for clip in clips for rgb in frames[clip]]
    batches = [
        (all_frames[i : i + config.batch_size], centres[i : i + config.batch_size])
        for i in range(0, len(all_frames), config.batch_size)
    ]

    def embed(batch) -> None:
        images, batch_centres = batch
        maps = backbone.feature_map(np.stack(images))
        for feature_map, points in zip(maps, batch_centres, strict=True):
            sample_feature_map(feature_map, points, images[0].shape[:2])

    cnn = time_batches(embed, batches, workers)

    print(f"frames: {n_frames}, cells: {n_cells} ({n_cells / n_frames:.1f} per frame)")
    print_decode_and_background(n_frames, decode, background)
    timed("foreground masks", n_frames, foreground)
    timed(f"flow (DIS {config.flow_preset})", n_frames, flow)
    timed("cell speeds", n_frames, cells)
    timed(f"backbone (whole frames, {backbone.compute_dtype})", n_frames, cnn)
    stage_sum = 2 * decode + background + foreground + flow + cells + cnn
    timed("sum of stages", n_frames, stage_sum)
    return {
        "mode": "grid",
        "frames": n_frames,
        "cells": n_cells,
        "compute_dtype": dtype_name(backbone.compute_dtype),
        "seconds": {
            "decode": decode,
            "background": background,
            "foreground": foreground,
            "flow": flow,
            "cell_speeds": cells,
            "backbone": cnn,
            "sum": stage_sum,
        },
    }


def main() -> None:
    args = parse_args()
    config = FeatureConfig(
        crop_size=args.crop_size,
        flow_preset=args.flow_preset,
        batch_size=args.batch_size,
        backbone_workers=args.workers,
        torch_threads=args.torch_threads,
    )
    clips = sorted(path for path in args.root.iterdir() if path.is_dir())[: args.clips]
    if not clips:
        raise SystemExit(f"no clip folders under {args.root}")
    print(f"clips: {', '.join(clip.name for clip in clips)}")
    print(
        f"config: crop {config.crop_size} px, flow {config.flow_preset}, "
        f"batch {config.batch_size}, torch threads before extraction "
        f"{torch.get_num_threads()}"
    )
    backbone = get_backbone(config.backbone, batch_size=config.batch_size)

    workers, threads = backbone_parallelism(config)
    print(f"backbone workers: {workers}, torch threads per worker: {threads}")
    with torch_threads(threads):
        n_frames = time_stages(clips, config, backbone, workers)["frames"]

    for threaded in (False, True):
        run_config = replace(config, threaded=threaded)
        for _ in range(args.repeats):
            start = time.perf_counter()
            cpu_start = time.process_time()
            for clip in clips:
                extract_object_features(clip, run_config, backbone)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            print(
                f"end to end, threaded={threaded}: {n_frames / seconds:.1f} frames/s, "
                f"{n_frames / cpu_seconds:.1f} frames per CPU second"
            )


if __name__ == "__main__":
    main()

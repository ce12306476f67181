"""Compare flow gaps on training clips alone: moving pixels against static ones.

For each gap the script measures, on every tenth frame of every third training
clip, the median flow magnitude (px/frame) on foreground pixels and the 99th
percentile on background pixels at least 4 px from any foreground. Their ratio
measures how far the motion of typical objects is above the error of the flow.
No label is read, so the ratio may choose ``FeatureConfig.flow_gap`` and
``FeatureConfig.flow_preset``; the default gap of 4 came from this script on the
UCSD Ped2 training clips. ``--presets`` compares DIS presets at each gap.

Run from the repository root::

    python -m benchmarks.flow_gap --root ../shared/data/ped2/training/frames
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from mulde.features.cache import FeatureConfig
from mulde.features.flow import FlowEstimator
from mulde.features.proposals import BackgroundSampler, ProposalExtractor
from mulde.video.readers import iter_frames


def gap_ratio(clips: list[Path], gap: int, config: FeatureConfig) -> tuple:
    """Median foreground magnitude, background 99th percentile, for one gap."""
    estimator = FlowEstimator(config.flow_preset)
    moving, still = [], []
    margin = np.ones((9, 9), np.uint8)
    for clip in clips:
        grays = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in iter_frames(clip)]
        sampler = BackgroundSampler(config.proposals.background_frames)
        for gray in grays:
            sampler.add(gray)
        proposer = ProposalExtractor(config.proposals)
        proposer.fit(sampler.frames)
        for t in range(gap, len(grays), 10):
            magnitude = np.linalg.norm(
                estimator.velocity(grays[t - gap], grays[t]) / gap, axis=2
            )
            _, mask = proposer.propose_with_mask(grays[t])
            if not mask.any():
                continue
            background = cv2.dilate(mask, margin) == 0
            moving.append(np.median(magnitude[mask > 0]))
            still.append(np.percentile(magnitude[background], 99))
    return float(np.median(moving)), float(np.median(still))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="folder of training clip folders"
    )
    parser.add_argument(
        "--gaps", default="1,2,3,4,6", help="comma-separated gaps in frames"
    )
    parser.add_argument(
        "--presets",
        default="medium",
        help="comma-separated DIS presets (ultrafast, fast, medium)",
    )
    args = parser.parse_args(argv)
    clips = sorted(p for p in args.root.iterdir() if p.is_dir())[::3]
    if not clips:
        parser.error(f"no clip folders under {args.root}")
    print("preset     gap  foreground median  background p99  ratio  seconds")
    for preset in args.presets.split(","):
        config = FeatureConfig(flow_preset=preset)
        for gap in (int(g) for g in args.gaps.split(",")):
            start = time.perf_counter()
            foreground, background = gap_ratio(clips, gap, config)
            print(
                f"{preset:9s}  {gap:3d}  {foreground:17.2f}  {background:14.2f}  "
                f"{foreground / background:5.2f}  {time.perf_counter() - start:7.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

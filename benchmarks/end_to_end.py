"""Time the main job on UCSD Ped2 end to end, stage by stage, and per new frame.

Four measurements, each on the same clips:

1. The main job (``mulde.pipeline.run``, default configuration) with an empty
   feature cache: seconds for dataset loading, features (train and test),
   training, scoring and the report, and the peak resident memory of the process.
2. A second run with the gaussian weighting on the features cached by the first,
   the case of trying another detector on the same data.
3. The extraction stages on their own over up to four training clips (decode,
   background, proposals, flow, box features and crops, backbone), from
   ``benchmarks/features_speed.py``.
4. The latency of scoring one new frame: from its objects' features to a
   smoothed frame score, with the detector and PCA that the first run saved.
   Each test frame is scored alone, in order, and its score is smoothed with the
   causal half of the run's Gaussian kernel over the frames scored before it.
   Torch runs one thread here: the products of one frame's dozen objects are too
   small to gain from a second, which only waits for the first on a busy machine.

Run from the repository root::

    python -m benchmarks.end_to_end --root ../shared/data/ped2 --out e2e.json
    python -m benchmarks --ped2 ../shared/data/ped2   # with the detector tables
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_main_job(root: Path, out: Path, cache: Path, clips: int | None, **detector):
    from mulde.config import RunConfig
    from mulde.pipeline import run

    config = RunConfig()
    config.dataset.name = "ped2"
    config.dataset.root = str(root)
    config.dataset.max_train_clips = clips
    config.dataset.max_test_clips = clips
    config.cache_dir = str(cache)
    config.verbose = 0
    config.detector.update(detector)
    start = time.perf_counter()
    metrics = run(config, out)
    return metrics, time.perf_counter() - start


def frame_latency(run_dir: Path, test: dict, sigma_frames: float) -> dict:
    """Milliseconds to score each test frame alone, features to smoothed score."""
    from mulde.score_video import load_run_models

    _, (model,) = load_run_models(run_dir)
    detector = model.detector
    radius = int(np.ceil(3 * sigma_frames))
    weights = np.exp(-0.5 * (np.arange(radius + 1) / sigma_frames) ** 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detector.decision_function(np.zeros((4, detector.n_features_in_), np.float32))
        milliseconds = _time_frames(model, test, weights)
    finally:
        torch.set_num_threads(threads)
    values = np.asarray(milliseconds)
    return {
        "frames": int(values.size),
        "median_ms": float(np.median(values)),
        "p95_ms": float(np.percentile(values, 95)),
        "max_ms": float(values.max()),
        "target_ms": 40.0,
    }


def _time_frames(model, test, weights) -> list[float]:
    """Score each frame of ``test`` alone, as the pipeline does; return milliseconds.

    Object scores are standardised by the training scores, and a frame without
    objects takes the lowest training score, as in ``mulde.pipeline.score_clips``.
    """
    detector = model.detector
    train_scores = detector.decision_scores_
    mean, spread = train_scores.mean(), train_scores.std() or 1.0
    empty = (train_scores.min() - mean) / spread
    radius = len(weights) - 1
    milliseconds = []
    for clip in test.values():
        history: list[float] = []
        smoothed: list[float] = []
        rows_of = {}
        for frame in range(clip.n_frames):
            rows_of[frame] = np.flatnonzero(clip.frame_index == frame)
        for frame in range(clip.n_frames):
            objects = {g: clip.groups[g][rows_of[frame]] for g in model.groups}
            start = time.perf_counter()
            rows = model.transform(objects)
            if len(rows):
                score = float(
                    ((detector.decision_function(rows) - mean) / spread).max()
                )
            else:
                score = float(empty)
            history.append(score)
            recent = np.asarray(history[-(radius + 1) :][::-1])
            used = weights[: len(recent)]
            smoothed.append(float(used @ recent / used.sum()))
            milliseconds.append(1000 * (time.perf_counter() - start))
    return milliseconds


def extraction_stages(root: Path, clips: int | None) -> dict:
    from benchmarks.features_speed import time_grid_stages, time_stages
    from mulde.config import RunConfig
    from mulde.features.cache import FeatureConfig, build_backbone
    from mulde.features.objects import backbone_parallelism, torch_threads

    config = FeatureConfig.from_dict(RunConfig().features)
    folders = sorted(p for p in (root / "training" / "frames").iterdir() if p.is_dir())
    # time_stages keeps every frame and flow field of its clips in memory, about
    # 1 GB per 1,000 Ped2 frames, so it times at most four clips.
    folders = folders[: min(clips or 4, 4)]
    backbone = build_backbone(config)
    workers, threads = backbone_parallelism(config)
    timer = time_grid_stages if config.mode == "grid" else time_stages
    with torch_threads(threads):
        return timer(folders, config, backbone, workers)


def measure(root: Path, clips: int | None) -> dict:
    from mulde.config import RunConfig
    from mulde.features import FeatureConfig, extract_dataset
    from mulde.video import load_dataset

    report: dict = {"clips": clips, "cpus": os.cpu_count(), "load": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="mulde-bench-") as scratch:
        scratch = Path(scratch)
        cache = scratch / "cache"
        metrics, seconds = run_main_job(root, scratch / "sigma2", cache, clips)
        report["first_run"] = {
            "seconds": seconds,
            "stages_s": metrics["timings_s"],
            "micro_auc": metrics["micro_auc"],
            "peak_memory_mb": peak_memory_mb(),
        }
        print_run("first run (features extracted)", report["first_run"])
        metrics, seconds = run_main_job(
            root, scratch / "gaussian", cache, clips, weighting="gaussian"
        )
        report["second_run"] = {
            "seconds": seconds,
            "stages_s": metrics["timings_s"],
            "micro_auc": metrics["micro_auc"],
        }
        print_run("second run (gaussian, features cached)", report["second_run"])

        dataset = load_dataset("ped2", root)
        dataset = type(dataset)(
            dataset.name, dataset.root, dataset.train[:clips], dataset.test[:clips]
        )
        features = extract_dataset(
            dataset, FeatureConfig.from_dict(RunConfig().features), cache
        )
        sigma = RunConfig().scoring.smoothing_sigma
        report["latency"] = frame_latency(scratch / "sigma2", features["test"], sigma)
        latency = report["latency"]
        print(
            f"latency per new frame: median {latency['median_ms']:.1f} ms, "
            f"95th percentile {latency['p95_ms']:.1f} ms over {latency['frames']} "
            "frames (target 40 ms)",
            flush=True,
        )
    report["extraction_stages"] = extraction_stages(root, clips)
    report["load_after"] = os.getloadavg()
    return report


def print_run(label: str, result: dict) -> None:
    stages = result["stages_s"]
    parts = ", ".join(
        f"{name} {stages[name]:.0f} s"
        for name in (
            "dataset",
            "features.train",
            "features.test",
            "training",
            "scoring",
            "report",
        )
        if name in stages
    )
    print(f"{label}: {result['seconds']:.0f} s ({parts})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="UCSD Ped2 root")
    parser.add_argument(
        "--clips",
        type=int,
        help="use the first N training and test clips (default: all)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips={args.clips} must be at least 1")
    report = measure(args.root, args.clips)
    report["command"] = " ".join(["python -m benchmarks.end_to_end", *sys.argv[1:]])
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compare the AUC of MULDE trained and scored in bfloat16 and in float32.

A speed-up in the bfloat16 path is kept only while it leaves the detection
quality alone. This script fits ``mulde.MULDE`` on the ADBench set 6_cardio once
per precision and seed, in the one-class setting of tests/conftest.py: fit on
half the normal rows, test on the other half and all anomalies. It prints the
ROC AUC of each fit and the differences between the two precisions.

Run from the repository root::

    python -m benchmarks.precision_auc --seeds 0 1 2
    python -m benchmarks.precision_auc --hidden-sizes 4096 4096 \\
        --batch-size 2048 --learning-rate 1e-4 --epochs 100 --seeds 0

``--backward written_out`` and ``--backward autograd`` force the written-out
backward of ``mulde.score_matching`` or autograd's over the loss, so that two
runs compare the two paths seed by seed. By default MULDE picks one by the
network's width (``select_backward``).

``--precision-a auto`` is bfloat16 only where ``mulde.network.resolve_precision``
picks it (CUDA, or a CPU with AMX); elsewhere both runs are float32, which the
output states.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import mulde.detector
from mulde import MULDE
from mulde.network import dtype_name, resolve_device, resolve_precision
from mulde.score_matching import autograd_dsm_loss_backward, dsm_loss_backward

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "tabular"
    / "adbench"
    / "6_cardio.npz"
)


def one_class_split(
    path: Path, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows to fit (half the normal ones) and test rows with their labels."""
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass the ADBench file with --data")
    with np.load(path, allow_pickle=False) as data:
        X, y = data["X"], data["y"].astype(int).ravel()
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    fit_rows = normal[: normal.size // 2]
    test_rows = np.concatenate([normal[normal.size // 2 :], np.flatnonzero(y == 1)])
    return X[fit_rows], X[test_rows], y[test_rows]


def fit_and_score(params: dict, X_fit, X_test, y_test) -> dict:
    """Fit one detector and return its test AUC, compute dtype and timings."""
    start = time.perf_counter()
    detector = MULDE(**params).fit(X_fit)
    fit_s = time.perf_counter() - start
    scores = detector.decision_function(X_test)
    return {
        "auc": float(roc_auc_score(y_test, scores)),
        "compute_dtype": dtype_name(detector.compute_dtype_),
        "fit_s": fit_s,
        "final_loss": detector.history_[-1]["loss"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision_auc",
        description="ROC AUC on 6_cardio with two matrix-product precisions.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="6_cardio.npz")
    parser.add_argument(
        "--hidden-sizes", type=int, nargs="+", default=[256, 256], help="layer widths"
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="MULDE random_state"
    )
    parser.add_argument(
        "--precision-a", default="auto", help="first precision (default: auto)"
    )
    parser.add_argument(
        "--precision-b", default="float32", help="second precision (default: float32)"
    )
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]'")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice); on a shared machine "
        "1 avoids idle OpenMP threads spinning against other jobs",
    )
    parser.add_argument(
        "--backward",
        choices=["auto", "written_out", "autograd"],
        default="auto",
        help="training backward pass: MULDE's choice by network width (default), "
        "the written-out one, or autograd's over the loss",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.backward != "auto":
        # MULDE._train calls the name it imported into mulde.detector.
        chosen = {
            "written_out": dsm_loss_backward,
            "autograd": autograd_dsm_loss_backward,
        }[args.backward]
        mulde.detector.select_backward = lambda net: chosen
    X_fit, X_test, y_test = one_class_split(args.data)
    device = resolve_device(args.device)
    base = {
        "hidden_sizes": tuple(args.hidden_sizes),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "device": args.device,
    }
    precisions = (args.precision_a, args.precision_b)
    print(
        f"6_cardio: {len(X_fit)} rows to fit, {len(X_test)} test rows "
        f"({int(y_test.sum())} anomalies); {base}"
    )
    for precision in precisions:
        dtype = resolve_precision(precision, device)
        print(f"precision={precision!r} computes in {dtype} on {device}")

    runs = []
    for seed in args.seeds:
        aucs = {}
        for precision in precisions:
            params = base | {"precision": precision, "random_state": seed}
            result = fit_and_score(params, X_fit, X_test, y_test)
            result |= {"seed": seed, "precision": precision}
            result["load_average"] = os.getloadavg()[0]
            runs.append(result)
            aucs[precision] = result["auc"]
            print(
                f"seed {seed} {precision:>8} ({result['compute_dtype']}): "
                f"AUC {result['auc']:.4f}, fit {result['fit_s']:.1f} s, "
                f"load {result['load_average']:.2f}"
            )
        print(
            f"seed {seed} difference: {aucs[precisions[0]] - aucs[precisions[1]]:+.4f}"
        )

    def mean_auc(precision: str) -> float:
        return statistics.mean(r["auc"] for r in runs if r["precision"] == precision)

    differences = [
        a["auc"] - b["auc"] for a, b in zip(runs[0::2], runs[1::2], strict=True)
    ]
    summary = {
        "mean_auc": {p: mean_auc(p) for p in precisions},
        "differences": differences,
        "mean_difference": statistics.mean(differences),
        "max_abs_difference": max(abs(d) for d in differences),
    }
    print(
        f"mean AUC {precisions[0]} {summary['mean_auc'][precisions[0]]:.4f}, "
        f"{precisions[1]} {summary['mean_auc'][precisions[1]]:.4f}; difference "
        f"mean {summary['mean_difference']:+.4f}, "
        f"max |.| {summary['max_abs_difference']:.4f}"
    )
    if args.out:
        report = {
            "settings": base,
            "seeds": args.seeds,
            "precisions": precisions,
            "backward": args.backward,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "runs": runs,
            "summary": summary,
        }
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

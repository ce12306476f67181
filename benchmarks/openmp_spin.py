"""Time detector training with two OpenMP spin counts, on idle and busy cores.

Run from the repository root::

    python -m benchmarks.openmp_spin

Each measurement is a fresh process, because OpenMP reads GOMP_SPINCOUNT when
torch loads it. "busy" starts one CPU-bound process per core beside it. The
rate is training samples per second of a 512 x 512 detector on 8,192 random
68-dimensional rows, 2 epochs, the size of the main job's default detector.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import time
import numpy as np
from mulde import MULDE
rows = np.random.default_rng(0).normal(size=(8192, 68)).astype(np.float32)
detector = MULDE(hidden_sizes=(512, 512), epochs=2, batch_size=1024,
                 random_state=0, verbose=0)
start = time.perf_counter()
detector.fit(rows)
print(2 * len(rows) / (time.perf_counter() - start))
"""
BUSY = "while True: pass"
SPIN_COUNTS = {"GNU default (300,000)": "300000", "mulde default (10,000)": "10000"}


def rate(spin_count: str) -> float:
    env = dict(os.environ, GOMP_SPINCOUNT=spin_count)
    output = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, check=True, capture_output=True
    )
    return float(output.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting")
    args = parser.parse_args(argv)
    rate(SPIN_COUNTS["mulde default (10,000)"])  # warm the file cache
    for cores in ("idle", "busy"):
        busy = []
        if cores == "busy":
            busy = [
                subprocess.Popen([sys.executable, "-c", BUSY])
                for _ in range(os.cpu_count() or 1)
            ]
        try:
            for label, spin_count in SPIN_COUNTS.items():
                rates = sorted(rate(spin_count) for _ in range(args.repeats))
                print(
                    f"{cores} cores, {label}: median {rates[len(rates) // 2]:,.0f} "
                    f"samples/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})",
                    flush=True,
                )
        finally:
            for process in busy:
                process.kill()
                process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

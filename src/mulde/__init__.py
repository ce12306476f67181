"""mulde: video anomaly detection by multiscale denoising score matching."""

import os

# GNU OpenMP, which the Linux builds of torch use, lets idle threads spin for
# work for about 300,000 rounds by default, which stalls training when other
# processes need the same cores. With 10,000 rounds, training a 512 x 512
# detector on a 2-core Xeon beside two busy processes ran at a median of 4,862
# samples/s against 3,924 (slowest run 4,796 against 1,314), and 6% slower on
# idle cores (python -m benchmarks.openmp_spin). OpenMP reads the variable when
# it loads, so this takes effect only if torch is not imported yet, and a value
# set by the user is kept. Other OpenMP runtimes ignore it.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"

from mulde.detector import MULDE  # noqa: E402

__all__ = ["MULDE", "__version__"]

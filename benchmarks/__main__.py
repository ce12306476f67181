"""Entry point: ``python -m benchmarks [--quick] [--out FILE.json]``.

Runs the detector benchmarks of benchmarks/detector_speed.py. The feature
extraction benchmark is a separate script, benchmarks/features_speed.py.
"""

import sys

from benchmarks.detector_speed import main

if __name__ == "__main__":
    sys.exit(main())

"""Speed benchmarks of mulde; ``python -m benchmarks --help`` lists the options."""

# Imported before torch so that the benchmarks run with the OpenMP settings that
# mulde sets for its users (see mulde/__init__.py).
import mulde  # noqa: F401

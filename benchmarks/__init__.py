"""Speed benchmarks of mulde; ``python -m benchmarks --help`` lists the options."""

# Imported before torch so that the benchmarks run with the OpenMP settings that
# mulde sets for its users (see mulde/__init__.py), and with the allocator
# settings of the mulde command, for mulde and the baseline alike.
import mulde  # noqa: F401
from mulde.allocator import reuse_freed_memory

reuse_freed_memory()

"""Speed benchmarks of mulde; ``python -m benchmarks --help`` lists the options."""

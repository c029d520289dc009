"""Benchmarks run by `make bench` (`python -m bench.run`): figures next to a peer measured in the
same run, and next to the targets of issue 2. Nothing here asserts a speed."""

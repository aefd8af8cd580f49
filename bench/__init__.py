"""Benchmarks, run as modules from the repository root: `python -m bench.<name>` (e.g. bench.serving).
Results go to bench/results/, the summary is BENCHMARKS.md."""

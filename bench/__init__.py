"""Benchmarks (run as scripts: `python bench/ingest.py`)."""

"""Shared set-up for the Dagster pipeline tests: an isolated embedded profile with simulated
laundry history, and in-process runs of the training job with explicit settings."""
from __future__ import annotations

from assets import jobs
from assets.jobs import materialisations as materialised, run_laundry_training, training_run_config

# Tiny trainings on a busy 2-core machine: the pipeline's behaviour is under test here, not the
# design's thresholds (bench/pipeline.py measures those on the real workload).
LENIENT_GATES = {"val_accuracy": 0.6, "holdout_accuracy": 0.6, "class_accuracy": 0.4, "throughput_rps": 5.0,
                 "latency_ms": 1000.0, "perf_requests": 200}


def tiny_run_config(epochs: int = 15, lr: float = 1e-3, max_retries: int = 3, **training) -> dict:
    return training_run_config(copies=3, max_epochs=epochs, lr=lr, max_retries=max_retries, holdout_min_per_class=5,
                               patience=epochs, **training)


def run_training(settings, instance, first: str, last: str, run_config: dict, raise_on_error: bool = False):
    return run_laundry_training(settings, instance, first, last, run_config, raise_on_error)


def check_results(result) -> dict[str, bool]:
    return {name: evaluation.passed for name, evaluation in jobs.check_results(result).items()}


__all__ = ["LENIENT_GATES", "check_results", "materialised", "run_training", "tiny_run_config"]

"""Shared set-up for the Dagster pipeline tests: an isolated embedded profile with simulated
laundry history, and in-process runs of the training job."""
from __future__ import annotations

import os
from contextlib import contextmanager

import runs
from gymops.simulator.history import ingest_simulated_history
from runs import laundry_job, materialisations as materialised, run_laundry_training, training_run_config

# Tiny trainings on a busy 2-core machine: the pipeline's behaviour is under test here, not the
# design's thresholds (bench/pipeline.py measures those on the real workload).
LENIENT_GATES = {"GYMOPS_GATE_VAL_ACCURACY": "0.6", "GYMOPS_GATE_HOLDOUT_ACCURACY": "0.6",
                 "GYMOPS_GATE_CLASS_ACCURACY": "0.4", "GYMOPS_GATE_THROUGHPUT_RPS": "5",
                 "GYMOPS_GATE_LATENCY_MS": "1000", "GYMOPS_GATE_PERF_REQUESTS": "200"}


@contextmanager
def environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def tiny_run_config(epochs: int = 15, lr: float = 1e-3, max_retries: int = 3, **training) -> dict:
    return training_run_config(copies=3, max_epochs=epochs, lr=lr, max_retries=max_retries, holdout_min_per_class=5,
                               patience=epochs, **training)


def run_training(instance, first: str, last: str, run_config: dict, raise_on_error: bool = False):
    return run_laundry_training(instance, first, last, run_config, raise_on_error)


def check_results(result) -> dict[str, bool]:
    return {name: evaluation.passed for name, evaluation in runs.check_results(result).items()}

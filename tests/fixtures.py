"""Plain helpers shared by the tests (pytest fixtures are in conftest.py): whether this is CI, the
real services' reachability, free ports, a valid event, and the in-process pipeline runs."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from gymops.processes import free_port  # noqa: F401 (tests import it from here)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379), "RabbitMQ": ("127.0.0.1", 5672)}


def _down() -> list[str]:
    down = []
    for name, addr in SERVICES.items():
        try:
            with socket.create_connection(addr, timeout=1):
                pass
        except OSError as exc:
            down.append(f"{name} at {addr[0]}:{addr[1]} ({exc.strerror or exc})")
    return down


def require_services() -> None:
    down = _down()
    if not down:
        return
    message = "services not reachable: " + ", ".join(down)
    if IN_CI:
        pytest.fail(message + " (CI must run the service tests; .ci/run starts them)")
    pytest.skip(message + "; start them to run the services profile tests")


def skip_or_fail(reason: str) -> None:
    """Outside CI a test whose prerequisite is missing skips with the reason; in CI it fails, since
    CI installs everything (.ci/run) and a silent skip would hide a broken bootstrap."""
    if IN_CI:
        pytest.fail(reason + " (CI must run this test)")
    pytest.skip(reason)


def needs(present: bool, reason: str):
    """A skipif marker that never skips in CI (there the test runs and fails loudly instead)."""
    return pytest.mark.skipif(not present and not IN_CI, reason=reason)


def task_event(photo_url, corrected=True, event_id=None, task_id=None, **over):
    event = {
        "eventType": "TaskConfirmedEvent", "eventId": event_id or f"ev-{uuid.uuid4()}",
        "taskId": task_id or f"TASK-{uuid.uuid4().hex[:10]}", "helperId": "HELPER-1", "branchId": "BR-1",
        "photoUrl": photo_url, "aiResult": "good", "aiModelVersion": "none",
        "finalResult": "defective" if corrected else "good", "corrected": corrected,
        "correctionReason": "얼룩" if corrected else None, "timestamp": "2026-11-21T10:00:00Z",
    }
    event.update(over)
    return event


# Tiny trainings on a busy 2-core machine: the pipeline's behaviour is under test here, not the
# design's thresholds (bench/pipeline.py measures those on the real workload).
LENIENT_GATES = {"val_accuracy": 0.6, "holdout_accuracy": 0.6, "class_accuracy": 0.4, "throughput_rps": 5.0,
                 "latency_ms": 1000.0, "perf_requests": 200}


# The pipeline helpers import the Dagster code location lazily: most tests never need it.
def tiny_run_config(epochs: int = 15, lr: float = 1e-3, max_retries: int = 3, **training) -> dict:
    from assets.jobs import training_run_config

    return training_run_config(copies=3, max_epochs=epochs, lr=lr, max_retries=max_retries, holdout_min_per_class=5,
                               patience=epochs, **training)


def run_training(settings, instance, first: str, last: str, run_config: dict, raise_on_error: bool = False):
    from assets.jobs import run_laundry_training

    return run_laundry_training(settings, instance, first, last, run_config, raise_on_error)


def materialised(result, asset: str) -> list:
    from assets.jobs import materialisations

    return materialisations(result, asset)


def check_results(result) -> dict[str, bool]:
    from assets import jobs

    return {name: evaluation.passed for name, evaluation in jobs.check_results(result).items()}


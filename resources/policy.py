"""The two policies as resources with one field per threshold (shown, and overridable, in the UI):
the verification gates (settings.gates) and the retraining rule (settings.retrain)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import dagster as dg

from gymops.settings import GateSettings, RetrainSettings


class _GroupResource(dg.ConfigurableResource):
    """A resource whose fields are those of one settings group (``GROUP``)."""

    GROUP: ClassVar[type]

    @classmethod
    def from_settings(cls, group):
        return cls(**dataclasses.asdict(group))

    def settings(self):
        return self.GROUP(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.GROUP)})


class GatesResource(_GroupResource):
    """Thresholds of the blocking asset checks (DESIGN.md, Contracts): settings.gates."""

    GROUP: ClassVar[type] = GateSettings
    val_accuracy: float
    holdout_accuracy: float
    class_accuracy: float
    noninferiority_margin: float
    decision_margin: float
    decision_power: float
    decision_alpha: float
    latency_ms: float
    memory_mb: float
    throughput_rps: float
    perf_requests: int
    min_class_fraction: float


class RetrainResource(_GroupResource):
    """When the correction sensor launches a retraining (UC-24): settings.retrain."""

    GROUP: ClassVar[type] = RetrainSettings
    min_corrections: int
    min_days: float
    urgent_corrections: int
    urgent_error_rate: float
    retry_corrections: int
    window_days: int

"""When to retrain (UC-24): enough corrections since the last training, and either a week has
passed or the corrections are urgent. Plain Python, so the sensor stays a thin shell over it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from gymops.config import ConfigError


@dataclass(frozen=True)
class RetrainPolicy:
    min_corrections: int = 100
    min_interval: timedelta = timedelta(days=7)
    urgent_corrections: int = 300

    @classmethod
    def from_env(cls) -> "RetrainPolicy":
        def number(name: str, default: float) -> float:
            raw = os.environ.get(name)
            if raw in (None, ""):
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}: must be a number, got {raw!r}") from None
            if value < 0:
                raise ConfigError(f"{name}: must be >= 0, got {value}")
            return value

        policy = cls(
            min_corrections=int(number("GYMOPS_RETRAIN_MIN_CORRECTIONS", cls.min_corrections)),
            min_interval=timedelta(days=number("GYMOPS_RETRAIN_MIN_DAYS", cls.min_interval.days)),
            urgent_corrections=int(number("GYMOPS_RETRAIN_URGENT_CORRECTIONS", cls.urgent_corrections)),
        )
        if policy.urgent_corrections < policy.min_corrections:
            raise ConfigError("GYMOPS_RETRAIN_URGENT_CORRECTIONS: must be >= GYMOPS_RETRAIN_MIN_CORRECTIONS")
        return policy


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str


def decide(corrections: int, since: datetime | None, now: datetime, policy: RetrainPolicy) -> Decision:
    """``since``: when the last training started (None: never trained)."""
    if corrections < policy.min_corrections:
        return Decision(False, f"{corrections} corrections since the last training, fewer than {policy.min_corrections}")
    if since is None:
        return Decision(True, f"{corrections} corrections and no model trained yet")
    waited = now - since
    if waited >= policy.min_interval:
        return Decision(True, f"{corrections} corrections and {waited.days} days since the last training")
    if corrections >= policy.urgent_corrections:
        return Decision(True, f"{corrections} corrections reach the urgent threshold {policy.urgent_corrections} "
                              f"after only {waited.days} days")
    return Decision(False, f"{corrections} corrections but only {waited.days} of {policy.min_interval.days} days "
                           f"since the last training (urgent at {policy.urgent_corrections})")

"""When to retrain (UC-24): enough corrections since the last training, and either a week has
passed or the corrections are urgent. Plain Python, so the sensor stays a thin shell over it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gymops.settings import RetrainSettings


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str


def decide(corrections: int, since: datetime | None, now: datetime, policy: RetrainSettings) -> Decision:
    """``since``: when the last training started (None: never trained)."""
    if corrections < policy.min_corrections:
        return Decision(False, f"{corrections} corrections since the last training, fewer than {policy.min_corrections}")
    if since is None:
        return Decision(True, f"{corrections} corrections and no model trained yet")
    waited = now - since
    if waited >= timedelta(days=policy.min_days):
        return Decision(True, f"{corrections} corrections and {waited.days} days since the last training")
    if corrections >= policy.urgent_corrections:
        return Decision(True, f"{corrections} corrections reach the urgent threshold {policy.urgent_corrections} "
                              f"after only {waited.days} days")
    return Decision(False, f"{corrections} corrections but only {waited.days} of {policy.min_days:g} days "
                           f"since the last training (urgent at {policy.urgent_corrections})")

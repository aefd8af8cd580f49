"""When to retrain (UC-24), and on which days. Plain Python, so the sensor stays a thin shell over it.

Two kinds of evidence, both counted against the SERVED model (the active version), never against
the last training: a candidate the gates rejected changed nothing that serves, so the corrections
its run saw still count toward the next one.

- the count: corrections since the served model was trained >= min_corrections and (a week has
  passed, or >= urgent_corrections);
- the rate: the managers' verdicts on the served version (its aiModelVersion in the history), read
  in order by Wald's SPRT of "its error rate is what its holdout promised" against "it is
  ``urgent_error_rate``". A crossing of the upper bound is urgent: 40% of new photos missed must
  not wait a week. The alarm waives the week, not the evidence: the retrain still waits for
  min_corrections corrections to learn from, since a retrain on the first dozen corrections of a
  new defect kind barely learns it (bench/loop's probe: 9 examples moved a kind's recall from 0.52
  to 0.60) and resets the count it would need to learn it properly. At 40% missed the floor comes
  within a few hundred tasks. The test restarts after each "as promised" crossing (repeated SPRT,
  CUSUM-like), so a model that was fine for a month and then meets a new defect kind is still
  caught within a few dozen verdicts, not diluted by the good month.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from gymops.lifecycle.statistics import Sprt
from gymops.settings import RetrainSettings

MIN_EXPECTED_ERROR = 0.005  # a holdout of a few hundred photos cannot promise less


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str


@dataclass(frozen=True)
class RateCheck:
    """The repeated SPRT over the served version's verdicts (True = corrected)."""
    decision: str  # "alarm" (significantly above the expected error), "as promised", "no data", "undecided"
    verdicts: int  # read in all
    errors: int
    expected_error: float  # H0: 1 - the served version's holdout accuracy
    alarm_error: float  # H1: settings.retrain.urgent_error_rate
    llr: float  # of the last segment
    upper: float

    @property
    def alarm(self) -> bool:
        return self.decision == "alarm"

    def describe(self) -> str:
        return (f"{self.errors} of {self.verdicts} verdicts on the served version corrected "
                f"({self.errors / self.verdicts:.1%}, expected {self.expected_error:.1%}): SPRT against "
                f"{self.alarm_error:.0%} says {self.decision}") if self.verdicts else "no verdicts on the served version yet"


def correction_rate(outcomes: Sequence[bool], expected_error: float, policy: RetrainSettings,
                    alpha: float = 0.001, beta: float = 0.05) -> RateCheck:
    """Repeated SPRT over ``outcomes`` (in arrival order, True = the manager corrected the served
    model): alarm at the first crossing of the upper bound; after a crossing of the lower bound
    ("as promised") it starts again from the next verdict.

    Why alpha = 0.001: every restart is another chance of a false alarm. A model as good as
    promised (3% errors) closes a segment every ~25-30 verdicts, so 0.001 per segment is ~2% per
    500 verdicts; a served model missing 40% of photos still alarms within ~15 verdicts, one
    missing 12% within ~100."""
    p0 = max(float(expected_error), MIN_EXPECTED_ERROR)
    p1 = policy.urgent_error_rate
    outcomes = [bool(o) for o in outcomes]
    errors = sum(outcomes)
    if not outcomes:
        return RateCheck("no data", 0, 0, p0, p1, 0.0, 0.0)
    if not p0 < p1:  # the served model promised no better than the alarm rate: the count rule decides
        return RateCheck("undecided", len(outcomes), errors, p0, p1, 0.0, 0.0)
    sprt = Sprt(p0, p1, alpha, beta)
    rest = outcomes
    while True:
        result = sprt.run(rest)
        if result.decision == "reject":
            return RateCheck("alarm", len(outcomes), errors, p0, p1, result.llr, result.upper)
        rest = rest[result.verdicts:]
        if result.decision == "continue" or not rest:
            # the last segment: still open, or closed "as promised" by the newest verdict
            decision = "as promised" if result.decision == "accept" or result.llr < 0 else "undecided"
            return RateCheck(decision, len(outcomes), errors, p0, p1, result.llr, result.upper)


def decide(corrections: int, since: datetime | None, now: datetime, policy: RetrainSettings,
           rate: RateCheck | None = None) -> Decision:
    """``corrections`` since ``since``: when the served model was trained (None: nothing serves).
    ``rate``: the SPRT over the served version's verdicts; an alarm is urgent whatever the days,
    once min_corrections corrections are there to learn from."""
    if rate is not None and rate.alarm:
        if corrections >= policy.min_corrections:
            return Decision(True, f"urgent: {rate.describe()} ({corrections} corrections since the served model's data)")
        return Decision(False, f"ALARM: {rate.describe()}; the retrain waits for {policy.min_corrections} corrections "
                               f"to learn from ({corrections} since the served model's data)")
    if corrections < policy.min_corrections:
        return Decision(False, f"{corrections} corrections since the served model's data, fewer than "
                               f"{policy.min_corrections}" + (f"; {rate.describe()}" if rate else ""))
    if since is None:
        return Decision(True, f"{corrections} corrections and no model serving yet")
    waited = now - since
    if waited >= timedelta(days=policy.min_days):
        return Decision(True, f"{corrections} corrections and {waited.days} days since the served model was trained")
    if corrections >= policy.urgent_corrections:
        return Decision(True, f"{corrections} corrections reach the urgent threshold {policy.urgent_corrections} "
                              f"after only {waited.days} days")
    return Decision(False, f"{corrections} corrections but only {waited.days} of {policy.min_days:g} days "
                           f"since the served model was trained (urgent at {policy.urgent_corrections})"
                    + (f"; {rate.describe()}" if rate else ""))


def training_window(first_day: str, now: datetime, window_days: int) -> tuple[str, str]:
    """The confirmation days a retraining reads: the last ``window_days`` days through today
    (never before the first partition). The whole window, not only what arrived since the last
    training: a model trained on the recent days alone forgets the kinds confirmed unchanged
    before them."""
    today = now.astimezone(timezone.utc).date()
    start = max(first_day, (today - timedelta(days=window_days)).isoformat())
    return min(start, today.isoformat()), today.isoformat()

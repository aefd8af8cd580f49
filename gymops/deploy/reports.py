"""What deploy, rollback and reconcile raise and return: their errors and reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


class DeployFailed(RuntimeError):
    """A deploy (or rollback) step failed; the previous version keeps serving. ``step`` names the
    step, ``cause`` says why, ``report`` holds what was done and timed up to then."""

    def __init__(self, step: str, cause: str, report=None):
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause
        self.report = report


class CandidateRejected(DeployFailed):
    """The candidate answered the golden photos wrongly: it is rejected in the registry
    (``reasons`` as recorded in its ModelVerificationFailedEvent) and the previous version serves."""

    def __init__(self, step: str, reasons: list[dict], report=None):
        super().__init__(step, "; ".join(r["message"] for r in reasons), report)
        self.reasons = reasons


class RollbackFailed(DeployFailed):
    pass


class ReconcileFailed(RuntimeError):
    pass


class Defect(Exception):
    """A model defect found during a step: the deploy turns it into a rejection (reasons as
    {gate, check, value, threshold, message}); anything else is an infrastructure failure."""

    def __init__(self, reasons: list[dict]):
        super().__init__("; ".join(r["message"] for r in reasons))
        self.reasons = reasons


@dataclass
class DeployReport:
    model_type: str
    version: str
    triton_version: int
    outcome: str = "running"  # deployed | rejected | failed
    previous_version: str | None = None  # the registry's active version before the deploy
    previous_triton_version: int | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds, in order
    seconds: float = 0.0  # deploy() call to return
    deploy_seconds: float | None = None  # deploy() call to the flip verified (the event's deploySeconds)
    flip_seconds: float | None = None  # the swap's load call (new version loaded, requests flipped)
    reused_folder: bool = False
    golden: dict = field(default_factory=dict)  # photos, max_abs_diff (staging and after the flip)
    archived: list[str] = field(default_factory=list)
    reasons: list[dict] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RollbackReport:
    model_type: str
    from_version: str
    to_version: str
    triton_version: int
    reason: str
    seconds: float = 0.0  # command to the old version serving (the swap's load call returned)
    confirmed_seconds: float | None = None  # command to a request answered by the old version
    total_seconds: float = 0.0  # rollback() call to return (bad version unloaded)
    registry_seconds: float = 0.0  # command to the registry committed
    restored_from_archive: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Consistency:
    model_type: str
    ok: bool
    active_version: str | None
    triton_version: int | None
    served: list[int] | None  # None when the server was not asked or could not be reached
    problems: list[str] = field(default_factory=list)  # each makes ok False
    notes: list[str] = field(default_factory=list)  # informational

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReconcileReport:
    model_type: str
    active_version: str | None
    triton_version: int | None
    served_before: list[int]
    served_after: list[int]
    found: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    consistency: Consistency | None = None

    def as_dict(self) -> dict:
        return asdict(self)

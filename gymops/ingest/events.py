"""The event contract: versioned JSON events, validated on arrival.

One module owns the wire format of every event this tier consumes. Wire names are camelCase (as
the Helper and Auth services publish them); Python attributes, storage columns and Feast features
use the same words in snake_case. Laundry labels arrive as 양호/불량 or good/defective and are stored
canonically as ``good``/``defective``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ClassVar, Union

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

GOOD = "good"
DEFECTIVE = "defective"
LABELS = (GOOD, DEFECTIVE)
_LABEL_ALIASES = {"good": GOOD, "양호": GOOD, "defective": DEFECTIVE, "불량": DEFECTIVE}

ROLES = ("member", "helper", "manager", "admin")

MAX_TEXT = 512
MAX_REASON = 2000
# A clock may run a little ahead of ours; more than this is a bad timestamp, not skew.
MAX_FUTURE_SKEW = timedelta(minutes=10)


class EventValidationError(ValueError):
    """An event that cannot be accepted. ``field`` names the offending field (wire name)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalise_label(value: Any, field: str = "label") -> str:
    if not isinstance(value, str):
        raise EventValidationError(field, f"must be a string label, got {type(value).__name__}")
    label = _LABEL_ALIASES.get(value.strip().lower()) or _LABEL_ALIASES.get(value.strip())
    if label is None:
        raise EventValidationError(field, f"unknown label {value!r} (expected 양호/불량 or good/defective)")
    return label


def _to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def format_timestamp(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


PhotoUrlCheck = Callable[[str], None]


class _Reader:
    """Reads typed fields from a decoded JSON object, raising EventValidationError on the first problem."""

    def __init__(self, data: dict, now: datetime, check_photo_url: PhotoUrlCheck | None):
        self.data = data
        self.now = now
        self.check_photo_url = check_photo_url

    def raw(self, field: str, required: bool = True) -> Any:
        if field not in self.data or self.data[field] is None:
            if required:
                raise EventValidationError(field, "missing")
            return None
        return self.data[field]

    def text(self, field: str, required: bool = True, max_len: int = MAX_TEXT) -> str | None:
        value = self.raw(field, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise EventValidationError(field, f"must be a string, got {type(value).__name__}")
        value = value.strip()
        if required and not value:
            raise EventValidationError(field, "must not be empty")
        if len(value) > max_len:
            raise EventValidationError(field, f"longer than {max_len} characters")
        if "\x00" in value:
            raise EventValidationError(field, "contains a NUL character")
        return value

    def boolean(self, field: str) -> bool:
        value = self.raw(field)
        if not isinstance(value, bool):
            raise EventValidationError(field, f"must be true or false, got {value!r}")
        return value

    def number(self, field: str, lo: float, hi: float) -> float:
        value = self.raw(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EventValidationError(field, f"must be a finite number, got {value!r}")
        if not lo <= value <= hi:
            raise EventValidationError(field, f"must be between {lo} and {hi}, got {value}")
        return float(value)

    def label(self, field: str) -> str:
        return normalise_label(self.raw(field), field)

    def timestamp(self, field: str) -> datetime:
        value = self.text(field)
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventValidationError(field, f"not an ISO-8601 timestamp: {value!r}") from None
        if ts.tzinfo is None:
            raise EventValidationError(field, "must carry a time zone (e.g. 2026-11-22T09:30:00Z)")
        ts = ts.astimezone(timezone.utc)
        if ts > self.now + MAX_FUTURE_SKEW:
            raise EventValidationError(field, f"{value} is in the future")
        return ts

    def photo_url(self, field: str) -> str:
        value = self.text(field, max_len=2048)
        if self.check_photo_url is not None:
            try:
                self.check_photo_url(value)
            except ValueError as exc:
                raise EventValidationError(field, str(exc)) from None
        return value


@dataclass(frozen=True)
class _Event:
    EVENT_TYPE: ClassVar[str]
    MODEL_TYPE: ClassVar[str]

    event_id: str

    def to_wire(self) -> dict:
        out: dict[str, Any] = {"eventType": self.EVENT_TYPE, "schemaVersion": SCHEMA_VERSION}
        for key, value in asdict(self).items():
            out[_to_camel(key)] = format_timestamp(value) if isinstance(value, datetime) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":"))

    @property
    def model_type(self) -> str:
        return self.MODEL_TYPE


@dataclass(frozen=True)
class TaskConfirmedEvent(_Event):
    """A branch manager confirmed (or corrected) the AI's verdict on a washed-linen photo."""

    EVENT_TYPE: ClassVar[str] = "TaskConfirmedEvent"
    MODEL_TYPE: ClassVar[str] = "laundry"

    task_id: str
    helper_id: str
    branch_id: str
    photo_url: str
    ai_result: str
    ai_model_version: str
    final_result: str
    corrected: bool
    correction_reason: str | None
    timestamp: datetime

    @classmethod
    def _read(cls, r: _Reader, event_id: str) -> "TaskConfirmedEvent":
        ai_result = r.label("aiResult")
        final_result = r.label("finalResult")
        corrected = r.boolean("corrected")
        if corrected != (ai_result != final_result):
            raise EventValidationError(
                "corrected",
                f"is {str(corrected).lower()} but aiResult={ai_result} and finalResult={final_result}",
            )
        return cls(
            event_id=event_id,
            task_id=r.text("taskId"),
            helper_id=r.text("helperId"),
            branch_id=r.text("branchId"),
            photo_url=r.photo_url("photoUrl"),
            ai_result=ai_result,
            ai_model_version=r.text("aiModelVersion"),
            final_result=final_result,
            corrected=corrected,
            correction_reason=r.text("correctionReason", required=False, max_len=MAX_REASON),
            timestamp=r.timestamp("timestamp"),
        )


@dataclass(frozen=True)
class UserCreatedEvent(_Event):
    """A member or helper enrolled, with the face photo taken at enrolment."""

    EVENT_TYPE: ClassVar[str] = "UserCreatedEvent"
    MODEL_TYPE: ClassVar[str] = "face"

    user_id: str
    role: str
    face_photo_url: str
    branch_id: str
    timestamp: datetime

    @classmethod
    def _read(cls, r: _Reader, event_id: str) -> "UserCreatedEvent":
        role = r.text("role").lower()
        if role not in ROLES:
            raise EventValidationError("role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        return cls(
            event_id=event_id,
            user_id=r.text("userId"),
            role=role,
            face_photo_url=r.photo_url("facePhotoUrl"),
            branch_id=r.text("branchId"),
            timestamp=r.timestamp("timestamp"),
        )


@dataclass(frozen=True)
class FaceAuthenticatedEvent(_Event):
    """A successful face entry: the photo taken at the gate and how close it was to the enrolment."""

    EVENT_TYPE: ClassVar[str] = "FaceAuthenticatedEvent"
    MODEL_TYPE: ClassVar[str] = "face"

    user_id: str
    photo_url: str
    similarity: float
    model_version: str
    timestamp: datetime

    @classmethod
    def _read(cls, r: _Reader, event_id: str) -> "FaceAuthenticatedEvent":
        return cls(
            event_id=event_id,
            user_id=r.text("userId"),
            photo_url=r.photo_url("photoUrl"),
            similarity=r.number("similarity", -1.0, 1.0),
            model_version=r.text("modelVersion"),
            timestamp=r.timestamp("timestamp"),
        )


Event = Union[TaskConfirmedEvent, UserCreatedEvent, FaceAuthenticatedEvent]
EVENT_TYPES: dict[str, type] = {
    cls.EVENT_TYPE: cls for cls in (TaskConfirmedEvent, UserCreatedEvent, FaceAuthenticatedEvent)
}
KNOWN_FIELDS = {
    name: {"eventType", "schemaVersion"} | {_to_camel(f.name) for f in fields(cls)}
    for name, cls in EVENT_TYPES.items()
}


def parse_event(
    raw: Union[bytes, str, dict],
    check_photo_url: PhotoUrlCheck | None = None,
    now: datetime | None = None,
) -> Event:
    """Decode and validate one event. Raises EventValidationError naming the field and the reason."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventValidationError("(body)", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EventValidationError("(body)", f"bad JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise EventValidationError("(body)", f"must be a JSON object, got {type(raw).__name__}")
    event_type = raw.get("eventType")
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        raise EventValidationError("eventType", f"unknown event type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})")
    version = raw.get("schemaVersion", SCHEMA_VERSION)
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EventValidationError("schemaVersion", f"unsupported version {version!r} (supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})")
    unknown = sorted(set(raw) - KNOWN_FIELDS[event_type])
    if unknown:
        raise EventValidationError(unknown[0], f"unknown field for {event_type} v{version}")
    reader = _Reader(raw, now or datetime.now(timezone.utc), check_photo_url)
    return cls._read(reader, reader.text("eventId", max_len=128))

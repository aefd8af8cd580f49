"""The event contract: versioned JSON events, validated on arrival.

One module owns the wire format of every event this tier consumes. Wire names are camelCase (as
the Helper and Auth services publish them); Python attributes, storage columns and Feast features
use the same words in snake_case. Laundry labels arrive as 양호/불량 or good/defective and are stored
canonically as ``good``/``defective``.
"""
from __future__ import annotations

import json
import math
import re
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
MAX_ID = 128
MAX_URL = 2048
MAX_FIELD_NAME = 128
# Limits checked BEFORE the body is decoded (Settings.event_max_bytes / event_max_depth override
# them): json.loads recurses once per nesting level (100,000 levels raise RecursionError, not a
# ValueError) and an event is a flat object of short fields, so anything deep or big is hostile.
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 8
# Python refuses int(str) beyond 4,300 digits (ValueError inside json.loads, CVE-2020-10735) and an
# int of 400 digits overflows float() (OverflowError in math.isfinite). No field needs more than this.
MAX_NUMBER_CHARS = 40
# A clock may run a little ahead of ours; more than this is a bad timestamp, not skew.
MAX_FUTURE_SKEW = timedelta(minutes=10)
# Nothing this tier learns from predates the project; older dates are typos or attacks (0001-01-01
# overflows astimezone, 1600-01-01 is outside pandas' nanosecond range and failed the whole push).
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")
_SPACE = re.compile(r"\s")


class EventValidationError(ValueError):
    """An event that cannot be accepted. ``field`` names the offending field (wire name)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalise_label(value: Any, field: str = "label") -> str:
    if not isinstance(value, str):
        raise EventValidationError(field, f"must be a string label, got {_kind(value)}")
    label = _LABEL_ALIASES.get(value.strip().lower()) or _LABEL_ALIASES.get(value.strip())
    if label is None:
        raise EventValidationError(field, f"unknown label {_show(value)} (expected 양호/불량 or good/defective)")
    return label


def _to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def format_timestamp(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


PhotoUrlCheck = Callable[[str], None]


class BadNumber:
    """A JSON number this tier will not turn into a Python number (too long, NaN, Infinity, or a
    float beyond range). Decoding keeps it as this marker so the field reader can name the field."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:  # json.dumps(default=str) of a decoded array element: the literal as sent
        return self.text

    __repr__ = __str__

    def describe(self) -> str:
        shown = self.text if len(self.text) <= 24 else f"{self.text[:12]}...({len(self.text)} characters)"
        return f"number {shown} out of range"


def _parse_int(text: str):
    return BadNumber(text) if len(text) > MAX_NUMBER_CHARS else int(text)


def _parse_float(text: str):
    if len(text) > MAX_NUMBER_CHARS:
        return BadNumber(text)
    value = float(text)
    return value if math.isfinite(value) else BadNumber(text)


def _object(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise EventValidationError(_field_name(key), "appears twice in the object")
        out[key] = value
    return out


def _field_name(name: str) -> str:
    """A field name fit to report (and to store in the dead-letter store's 128-character column)."""
    name = name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return name if len(name) <= MAX_FIELD_NAME else name[: MAX_FIELD_NAME - 3] + "..."


def nesting_depth(text: str) -> int:
    """How deep arrays/objects nest in a JSON text, without decoding it (brackets in strings ignored).
    One linear pass (a regex over strings can backtrack quadratically on ``"\\"\\"...``)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "[" or ch == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch == "]" or ch == "}":
            depth -= 1
    return deepest


def decode_json(text: str, max_depth: int = MAX_DEPTH):
    """json.loads that raises only EventValidationError: depth bounded before decoding, numbers
    kept as BadNumber when out of range, duplicate keys refused."""
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise EventValidationError("(body)", f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=BadNumber,
                          object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise EventValidationError("(body)", f"bad JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise EventValidationError("(body)", "JSON nested too deeply") from None


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

    def text(self, field: str, required: bool = True, max_len: int = MAX_TEXT, free: bool = False) -> str | None:
        """A string of valid Unicode, at most ``max_len`` characters. Identifiers (``free`` False)
        carry no control characters; free text may hold tabs and newlines but never NUL (which
        PostgreSQL's text type refuses) nor a lone UTF-16 surrogate (which UTF-8 cannot encode)."""
        value = self.raw(field, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise EventValidationError(field, f"must be a string, got {_kind(value)}")
        if len(value) > max_len:
            raise EventValidationError(field, f"longer than {max_len} characters")
        value = value.strip()
        if required and not value:
            raise EventValidationError(field, "must not be empty")
        if value.isascii() and value.isprintable():  # the usual case: nothing below can match
            return value
        bad = _NUL_OR_SURROGATE.search(value)
        if bad:
            what = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate U+{ord(bad.group()):04X}"
            raise EventValidationError(field, f"contains {what}")
        if not free and _CONTROL.search(value):
            raise EventValidationError(field, "contains a control character")
        return value

    def boolean(self, field: str) -> bool:
        value = self.raw(field)
        if not isinstance(value, bool):
            raise EventValidationError(field, f"must be true or false, got {_kind(value)}")
        return value

    def number(self, field: str, lo: float, hi: float) -> float:
        value = self.raw(field)
        if isinstance(value, BadNumber):
            raise EventValidationError(field, value.describe())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventValidationError(field, f"must be a number, got {_kind(value)}")
        try:
            number = float(value)  # an int from a dict (not decoded here) may still be huge
        except OverflowError:
            raise EventValidationError(field, "number out of range") from None
        if not math.isfinite(number):
            raise EventValidationError(field, "must be a finite number")
        if not lo <= number <= hi:
            raise EventValidationError(field, f"must be between {lo} and {hi}, got {number:.6g}")
        return number

    def label(self, field: str) -> str:
        return normalise_label(self.raw(field), field)

    def timestamp(self, field: str) -> datetime:
        value = self.text(field, max_len=64)
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventValidationError(field, f"not an ISO-8601 timestamp: {value!r}") from None
        if ts.tzinfo is None:
            raise EventValidationError(field, "must carry a time zone (e.g. 2026-11-22T09:30:00Z)")
        try:
            ts = ts.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise EventValidationError(field, f"{value} is out of range") from None
        if ts < MIN_TIMESTAMP:
            raise EventValidationError(field, f"{value} is before {MIN_TIMESTAMP:%Y-%m-%d}")
        if ts > self.now + MAX_FUTURE_SKEW:
            raise EventValidationError(field, f"{value} is in the future")
        return ts

    def photo_url(self, field: str) -> str:
        """The URL exactly as the photo store will open it: urllib's urlsplit silently drops tab,
        CR and LF (bpo-43882), so a URL holding them, or any whitespace or control character, is
        refused rather than stored as one string and resolved as another."""
        value = self.raw(field)
        if isinstance(value, str) and _SPACE.search(value):
            raise EventValidationError(field, "contains whitespace (URL parsing would drop or alter it)")
        value = self.text(field, max_len=MAX_URL)
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
            correction_reason=r.text("correctionReason", required=False, max_len=MAX_REASON, free=True),
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
            raise EventValidationError("role", f"unknown role {_show(role)} (expected one of {', '.join(ROLES)})")
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
# Every known name is short: an object holding only these has no over-long field name to report.
_ANY_KNOWN_FIELD = frozenset().union(*KNOWN_FIELDS.values())


def _kind(value: Any) -> str:
    """A short description of a JSON value for a reason (never its possibly huge repr)."""
    if isinstance(value, BadNumber):
        return "an out-of-range number"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else _kind(value)
    text = _field_name(text)
    return repr(text if len(text) <= 64 else text[:61] + "...")


def parse_event(
    raw: Union[bytes, str, dict],
    check_photo_url: PhotoUrlCheck | None = None,
    now: datetime | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Event:
    """Decode and validate one event. Raises EventValidationError naming the field and the reason,
    and nothing else: a failure this module did not foresee is reported as field ``(validation)``
    so that it, too, becomes a dead letter instead of failing the batch around it."""
    try:
        return _parse(raw, check_photo_url, now, max_bytes, max_depth)
    except EventValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract is "a validation failure, never a crash"
        raise EventValidationError("(validation)", f"unexpected {type(exc).__name__}: {str(exc)[:200]}") from exc


def _parse(raw, check_photo_url, now, max_bytes, max_depth) -> Event:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_bytes:
            raise EventValidationError("(body)", f"event of {len(raw)} bytes is over the {max_bytes}-byte limit")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventValidationError("(body)", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(raw, str):
        if len(raw) > max_bytes:  # characters <= bytes: a str this long is over in UTF-8 too
            raise EventValidationError("(body)", f"event of {len(raw)} characters is over the {max_bytes}-byte limit")
        raw = decode_json(raw, max_depth)
    if not isinstance(raw, dict):
        raise EventValidationError("(body)", f"must be a JSON object, got {_kind(raw)}")
    long_names = [] if raw.keys() <= _ANY_KNOWN_FIELD else [
        k for k in raw if not isinstance(k, str) or len(k) > MAX_FIELD_NAME]
    if long_names:
        raise EventValidationError(_field_name(str(long_names[0])), f"field name longer than {MAX_FIELD_NAME} characters")
    event_type = raw.get("eventType")
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        raise EventValidationError("eventType", f"unknown event type {_show(event_type)} (expected one of {', '.join(EVENT_TYPES)})")
    version = raw.get("schemaVersion", SCHEMA_VERSION)
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EventValidationError("schemaVersion", f"unsupported version {_show(version) if type(version) is not int else version} "
                                   f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})")
    unknown = sorted(set(raw) - KNOWN_FIELDS[event_type])
    if unknown:
        raise EventValidationError(_field_name(unknown[0]), f"unknown field for {event_type} v{version}")
    reader = _Reader(raw, now or datetime.now(timezone.utc), check_photo_url)
    return cls._read(reader, reader.text("eventId", max_len=MAX_ID))

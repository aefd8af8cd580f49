"""Simulated traffic of the Helper and Auth services: events (wire dicts) plus their photos.

Everything derives from the seed: ids, eventIds (uuid5), timestamps, photos. Each event draws from
its own Generator (seed, stream, index), so changing one count or plugging in an AI model does not
change the other events. Photos are written to the PhotoStore as the iterator is consumed.

New defect kinds (garments.NEW_DEFECT_KINDS, which the first model never sees) appear from
``TrafficConfig.new_kinds_from`` on: whether a defective task carries one is drawn from a stream of
its own, so without that setting, and before that day, every event and photo is what it was.
"""
from __future__ import annotations

import heapq
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from gymops.ingest.events import (
    DEFECTIVE, GOOD, FaceAuthenticatedEvent, TaskConfirmedEvent, UserCreatedEvent, normalise_label,
)
from gymops.storage.photos import PhotoStore
from gymops.simulator.faces import face_photo
from gymops.simulator.garments import DEFECT_KINDS, NEW_DEFECT_KINDS, encode_jpeg, linen_photo

AiVerdict = Callable[[bytes], "tuple[str, str]"]  # photo bytes -> (label, model version)
NO_MODEL = "none"
_NAMESPACE = uuid.UUID("6f1d3c52-8a47-4f0e-9a51-2c0d7e3b9a10")
_STREAMS = {"user": 1, "task": 2, "entry": 3, "verdict": 4, "kind": 5}

# What a branch manager writes when correcting the AI, by the truth and the defect kind.
_REASONS = {
    "stain": ["얼룩이 남아 있음", "커피 얼룩 제거 안 됨", "Stain still visible after washing", "Yellow stain near the hem"],
    "tear": ["찢어진 부분 발견", "솔기 부분 뜯어짐", "Small tear near the seam", "Hole in the fabric"],
    "discolouration": ["변색됨", "표백 얼룩으로 색이 바램", "Faded, bleached patch", "Discoloured after washing"],
    "hole": ["구멍이 뚫려 있음", "천에 동그란 구멍", "Hole punched through the fabric", "Round hole, the table shows through"],
    "mould": ["곰팡이 반점", "검은 곰팡이 얼룩", "Mould spots", "Mildew speckles, smells damp"],
    "pilling": ["보풀이 심하게 일어남", "보풀 뭉침", "Pilling all over the front", "Fuzz balls on the fabric"],
    "residue": ["세제 잔여물 자국", "하얀 줄무늬 얼룩", "Detergent residue streaks", "White streaks after washing"],
    GOOD: ["이상 없음, 정상 세탁 확인", "그림자를 얼룩으로 오인", "No defect; a shadow was read as a stain", "Clean, print mistaken for damage"],
}


@dataclass(frozen=True)
class TrafficConfig:
    seed: int = 0
    tasks: int = 100
    members: int = 20
    helpers: int | None = None  # default: two per branch
    entries: int = 100
    branches: int = 3
    defective_fraction: float = 0.3
    ai_error_rate: float = 0.3  # used only when no ai_verdict is plugged in
    start: datetime | None = None  # default: today 00:00 UTC minus span (same events all day)
    span: timedelta = field(default=timedelta(days=7))
    jpeg_quality: int = 90
    # From this day (a date: 00:00 UTC; or a zone-aware instant) on, a share ``new_kind_share`` of
    # the DEFECTIVE tasks carry a new defect kind instead of an old one (the defective fraction
    # stays). None: never, and every event is what it was before new kinds existed.
    new_kinds_from: date | None = None
    new_kind_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("tasks", "members", "entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.branches < 1 or (self.helpers is not None and self.helpers < 1):
            raise ValueError("branches and helpers must be >= 1")
        for name in ("defective_fraction", "ai_error_rate", "new_kind_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.span <= timedelta(0):
            raise ValueError("span must be positive")
        if self.start is not None and self.start.tzinfo is None:
            raise ValueError("start must carry a time zone")
        if self.entries and not self.members and not self.helpers:
            raise ValueError("entries need enrolled users (members or helpers)")
        if isinstance(self.new_kinds_from, datetime) and self.new_kinds_from.tzinfo is None:
            raise ValueError("new_kinds_from must carry a time zone (or be a date)")
        if self.new_kinds_from is not None and not isinstance(self.new_kinds_from, date):
            raise ValueError(f"new_kinds_from must be a date or datetime, got {self.new_kinds_from!r}")

    @property
    def new_kinds_start(self) -> datetime | None:
        """The first instant new defect kinds may appear (UTC), or None."""
        when = self.new_kinds_from
        if when is None or isinstance(when, datetime):
            return when
        return datetime(when.year, when.month, when.day, tzinfo=timezone.utc)

    @property
    def helper_count(self) -> int:
        return self.helpers if self.helpers is not None else 2 * self.branches

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """[start, end] of the timestamps; the end is never later than now."""
        now = now or datetime.now(timezone.utc)
        if self.start is None:
            end = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return end - self.span, end
        start = self.start.astimezone(timezone.utc)
        end = start + self.span
        if end > now:
            raise ValueError(f"start + span ends at {end.isoformat()}, later than now; move start back")
        return start, end


def _rng(cfg: TrafficConfig, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _STREAMS[stream], index])


def _event_id(cfg: TrafficConfig, stream: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cfg.seed}:{stream}:{index}"))


def _at(start: datetime, length: timedelta, index: int, count: int, rng: np.random.Generator) -> datetime:
    """Stratified time: the index-th of ``count`` slots in [start, start+length), jittered within it."""
    ts = start + length * ((index + rng.random()) / max(count, 1))
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def branch_id(i: int) -> str:
    return f"branch-{i + 1:02d}"


def _users(cfg: TrafficConfig) -> list[tuple[str, str, str]]:
    """(userId, role, branchId) of every enrolled user: helpers first, then members."""
    users = [(f"h{cfg.seed}-{i:03d}", "helper", branch_id(i % cfg.branches)) for i in range(cfg.helper_count)]
    users += [(f"m{cfg.seed}-{i:05d}", "member", branch_id(i % cfg.branches)) for i in range(cfg.members)]
    return users


def generate(
    store: PhotoStore,
    cfg: TrafficConfig = TrafficConfig(),
    ai_verdict: AiVerdict | None = None,
    now: datetime | None = None,
    defects: dict[str, str | None] | None = None,
) -> Iterator[dict]:
    """Wire dicts in timestamp order: enrolments (first 20% of the span), then tasks and entries.

    ``ai_verdict`` plays the deployed laundry model; without one ("no model yet") the AI's verdict
    is the truth flipped with probability ``cfg.ai_error_rate`` and aiModelVersion is "none".
    ``defects``, when given, receives taskId -> the defect kind drawn on its photo (None when good):
    the ground truth a benchmark scores recall per kind with, which the Helper service's event does
    not carry (its contract has no such field).
    """
    start, end = cfg.window(now)
    enrol_len = (end - start) * 0.2
    users = _users(cfg)
    helpers = {b: [u for u, role, ub in users if role == "helper" and ub == b] for b in map(branch_id, range(cfg.branches))}

    # Timestamps are cheap and come first; photos are made only when their event is reached.
    def enrolments() -> Iterator[tuple]:
        for i, user in enumerate(users):
            rng = _rng(cfg, "user", i)
            ts = _at(start, enrol_len, i, len(users), rng)
            yield ts, 0, i, partial(_enrolment, cfg, store, rng, i, ts, user)

    def tasks() -> Iterator[tuple]:
        for i in range(cfg.tasks):
            rng = _rng(cfg, "task", i)
            ts = _at(start, end - start, i, cfg.tasks, rng)
            yield ts, 1, i, partial(_task, cfg, store, rng, i, ts, helpers, ai_verdict, defects)

    def entries() -> Iterator[tuple]:
        for j in range(cfg.entries):
            rng = _rng(cfg, "entry", j)
            ts = _at(start + enrol_len, end - start - enrol_len, j, cfg.entries, rng)
            yield ts, 2, j, partial(_entry, cfg, store, rng, j, ts, users)

    for *_, make in heapq.merge(enrolments(), tasks(), entries(), key=lambda item: item[:3]):
        yield make().to_wire()


def _enrolment(cfg, store, rng, i, ts, user) -> UserCreatedEvent:
    user_id, role, branch = user
    url = store.put(f"faces/{user_id}/enrol.jpg", encode_jpeg(face_photo(user_id, rng), cfg.jpeg_quality))
    return UserCreatedEvent(
        event_id=_event_id(cfg, "user", i), user_id=user_id, role=role, face_photo_url=url,
        branch_id=branch, timestamp=ts,
    )


def _kinds(cfg: TrafficConfig, i: int, ts: datetime) -> tuple[str, ...]:
    """The kinds task ``i``'s defect (if it has one) is drawn from: the new ones with probability
    new_kind_share from new_kinds_start on. Drawn from the "kind" stream, never from the task's."""
    start = cfg.new_kinds_start
    if start is None or ts < start:
        return DEFECT_KINDS
    return NEW_DEFECT_KINDS if _rng(cfg, "kind", i).random() < cfg.new_kind_share else DEFECT_KINDS


def _task(cfg, store, rng, i, ts, helpers, ai_verdict, defects=None) -> TaskConfirmedEvent:
    branch = branch_id(int(rng.integers(cfg.branches)))
    pool = helpers[branch] or [u for us in helpers.values() for u in us]
    helper = pool[int(rng.integers(len(pool)))]
    photo = linen_photo(rng, defective_fraction=cfg.defective_fraction, kinds=_kinds(cfg, i, ts))
    data = encode_jpeg(photo.image, cfg.jpeg_quality)
    task_id = f"t{cfg.seed}-{i:06d}"
    if defects is not None:
        defects[task_id] = photo.defect
    url = store.put(f"tasks/{branch}/{task_id}.jpg", data)
    verdict_rng = _rng(cfg, "verdict", i)  # a stream of its own: plugging in a model changes nothing else
    if ai_verdict is None:
        flip = verdict_rng.random() < cfg.ai_error_rate
        ai_result = (GOOD if photo.label == DEFECTIVE else DEFECTIVE) if flip else photo.label
        model_version = NO_MODEL
    else:
        label, model_version = ai_verdict(data)
        ai_result = normalise_label(label, "aiResult")
    corrected = ai_result != photo.label
    reason = None
    if corrected:
        options = _REASONS[photo.defect or GOOD]
        reason = options[int(verdict_rng.integers(len(options)))]
    return TaskConfirmedEvent(
        event_id=_event_id(cfg, "task", i), task_id=task_id, helper_id=helper, branch_id=branch,
        photo_url=url, ai_result=ai_result, ai_model_version=model_version, final_result=photo.label,
        corrected=corrected, correction_reason=reason, timestamp=ts,
    )


def _entry(cfg, store, rng, j, ts, users) -> FaceAuthenticatedEvent:
    user_id = users[int(rng.integers(len(users)))][0]
    entry_id = f"e{cfg.seed}-{j:06d}"
    url = store.put(f"faces/{user_id}/{entry_id}.jpg", encode_jpeg(face_photo(user_id, rng), cfg.jpeg_quality))
    return FaceAuthenticatedEvent(
        event_id=_event_id(cfg, "entry", j), user_id=user_id, photo_url=url,
        similarity=round(float(rng.uniform(0.8, 0.99)), 4), model_version=NO_MODEL, timestamp=ts,
    )


def write_jsonl(events: Iterable[dict], path: Path | str) -> int:
    """Write one JSON event per line, atomically (a reader never sees half a file); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for event in events:
                fh.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count

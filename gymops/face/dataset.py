"""Face training data: samples -> photos, a frozen holdout of IDENTITIES, an identity-disjoint split.

Rules (issue 12, item 4):
- the unit of every split is the IDENTITY (user_id), never the photo: a person whose other photos
  were trained on would make a verification figure about memorised faces, not unseen members;
- the holdout is decided per identity by a seeded hash (``held_out``): about ``fraction`` of all
  identities, whichever night they first appear. The rule needs no history, does not depend on
  the order samples arrive in, and never moves an identity between training and the holdout, so
  an identity once held out stays held out and an identity once trained on is never held out
  later. (The laundry holdout draws a share of each night's new tasks instead, against a
  timestamp cutoff; for faces a per-identity rule is simpler and also keeps a held member's
  LATER photos out of training.) Changing the seed or the fraction of an existing holdout would
  break that, so it is refused;
- the holdout's photos are frozen on disk in versions (``<folder>/face/v0001/``: manifest.json,
  photos.npy, offsets.npy, as gymops.ml.holdout writes them): a version never changes; the next
  one adds the new photos of held identities (at most ``max_photos`` each, earliest first, so a
  daily visitor does not swamp the genuine pairs) and new held identities. A gate names the
  version it scored;
- validation identities are a seeded hash-ranked share of the rest, so train and val share no
  identity either; each identity keeps at most ``max_photos`` photos (hash-picked) and needs
  ``min_photos`` (a single photo gives no genuine pair).

Photos stay encoded (JPEG bytes as the photo store holds them) until the model's own
``preprocess`` reads them, so training sees exactly what serving sees.
"""
from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from gymops.ml.records import (MANIFEST, NotEnoughData, digest, read_frozen_photos, ts_key,
                                write_frozen_version)

SAMPLE_KINDS = ("enrolment", "entry")
HOLDOUT_NAME = "face"
FORMAT = 1
Fetched = list[tuple["FaceSample", bytes]]


@dataclass(frozen=True)
class FaceSample:
    """One face photo of a member: an enrolment or a successful entry (a face_samples row)."""
    user_id: str
    event_id: str
    sample_kind: str
    photo: bytes | None = field(default=None, repr=False)  # the bytes, or None to fetch photo_url
    photo_url: str | None = None
    event_timestamp: Any = None

    def __post_init__(self) -> None:
        for name in ("user_id", "event_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: a non-empty string is required, got {value!r}")
        if self.sample_kind not in SAMPLE_KINDS:
            raise ValueError(f"sample_kind: must be one of {SAMPLE_KINDS}, got {self.sample_kind!r} "
                             f"(event {self.event_id})")
        if self.photo is None and not self.photo_url:
            raise ValueError(f"photo / photo_url: event {self.event_id} has neither photo bytes nor a photo_url")
        if self.photo is not None and not isinstance(self.photo, (bytes, bytearray)):
            raise ValueError(f"photo: encoded bytes are required, got {type(self.photo).__name__} "
                             f"(event {self.event_id})")


def samples_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[FaceSample]:
    """Rows with user_id, event_id, sample_kind and photo_url or photo (e.g. the nightly
    face_samples frame's ``to_dict("records")``) -> samples; a bad row raises naming its index."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(FaceSample(row.get("user_id"), row.get("event_id"), row.get("sample_kind"),
                                  row.get("photo"), row.get("photo_url"), row.get("event_timestamp")))
        except ValueError as exc:
            raise ValueError(f"row {i}: {exc}") from None
    return out


def fetch_photos(samples: Iterable[FaceSample], get: Callable[[str], bytes] | None = None,
                 workers: int = 8) -> tuple[Fetched, list[tuple[FaceSample, str]]]:
    """(fetched in input order, dropped with reasons): each sample's bytes (its own, else
    ``get(photo_url)``), checked to decode; a repeated event_id keeps its first sample."""
    from PIL import Image

    seen: set[str] = set()
    unique, dropped = [], []
    for s in samples:
        if s.event_id in seen:
            dropped.append((s, f"duplicate: event {s.event_id} appeared before"))
        else:
            seen.add(s.event_id)
            unique.append(s)

    def one(s: FaceSample) -> tuple[bytes | None, str | None]:
        try:
            data = s.photo if s.photo is not None else get(s.photo_url) if get else None
        except Exception as exc:  # noqa: BLE001 - any store error drops this photo, with the reason
            return None, f"unreadable: {type(exc).__name__}: {exc}"
        if data is None:
            return None, f"unreadable: no photo getter for {s.photo_url}"
        try:
            with Image.open(io.BytesIO(bytes(data))) as img:
                img.load()
        except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a broken file
            return None, f"undecodable: {type(exc).__name__}: {exc}"
        return bytes(data), None

    fetched: Fetched = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch-face") as pool:
        for s, (data, reason) in zip(unique, pool.map(one, unique)):
            if data is None:
                dropped.append((s, reason))
            else:
                fetched.append((s, data))
    return fetched, dropped


def held_out(user_id: str, seed: int, fraction: float) -> bool:
    """Whether ``user_id`` belongs to the holdout: a seeded hash of the id below ``fraction``."""
    h = hashlib.sha256(f"{seed}\x00face-holdout\x00{user_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64 < fraction


def _rank(seed: int, salt: str, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{salt}\x00{key}".encode()).digest()


@dataclass
class FaceHoldout:
    """One version of the face holdout: photos of identities never trained or validated on."""
    folder: Path
    version: int
    seed: int
    fraction: float
    max_photos: int
    user_ids: list[str]  # per photo
    event_ids: list[str]
    sample_kinds: list[str]
    digests: list[str]
    added_in: list[int]
    created_at: str

    @property
    def path(self) -> Path:
        return _version_dir(self.folder, self.version)

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.user_ids))

    def __len__(self) -> int:
        return len(self.user_ids)

    def __contains__(self, user_id: object) -> bool:
        return user_id in set(self.user_ids)

    def photos(self) -> list[bytes]:
        """The frozen photo bytes in ``user_ids`` order, checked against their digests."""
        return read_frozen_photos(self.path, self.event_ids, self.digests, "face holdout photo of event")

    @staticmethod
    def versions(folder: Path | str) -> list[int]:
        root = Path(folder) / HOLDOUT_NAME
        return sorted(int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if (p / MANIFEST).exists()) \
            if root.exists() else []

    @classmethod
    def load(cls, folder: Path | str, version: int | None = None) -> "FaceHoldout | None":
        """The given version, or the newest; None when none was frozen yet."""
        versions = cls.versions(folder)
        if not versions:
            return None
        version = versions[-1] if version is None else version
        path = _version_dir(folder, version) / MANIFEST
        if not path.exists():
            raise LookupError(f"face holdout has no version {version} in {folder} (versions: {versions})")
        m = json.loads(path.read_text(encoding="utf-8"))
        return cls(Path(folder), m["version"], m["seed"], m["fraction"], m["max_photos"], m["user_ids"],
                   m["event_ids"], m["sample_kinds"], m["digests"], m["added_in"], m["created_at"])

    def update(self, fetched: Sequence[tuple[FaceSample, bytes]]) -> "FaceHoldout":
        """The next version with the new photos of held identities, or this one if there are none."""
        return _grow(self.folder, self, fetched, self.seed, self.fraction, self.max_photos)


def freeze_or_update(folder: Path | str, fetched: Sequence[tuple[FaceSample, bytes]], seed: int = 0,
                     fraction: float = 0.2, max_photos: int = 8) -> FaceHoldout:
    """The face holdout after taking in ``fetched``: the newest version updated (a new version
    only when something was added), or version 1 frozen now. A different seed or fraction than
    the frozen holdout's raises ValueError: identities would move between training and holdout."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction: must be within (0, 1), got {fraction}")
    if max_photos < 2:
        raise ValueError(f"max_photos: at least 2 photos per identity make a genuine pair, got {max_photos}")
    existing = FaceHoldout.load(folder)
    if existing is not None:
        if (existing.seed, existing.fraction) != (seed, fraction):
            raise ValueError(
                f"holdout seed/fraction: the face holdout in {folder} was frozen with seed {existing.seed}, "
                f"fraction {existing.fraction}; {seed}/{fraction} would move identities between training and "
                "holdout (use a new holdout folder to change them)")
        return existing.update(fetched)
    return _grow(Path(folder), None, fetched, seed, fraction, max_photos)


def _version_dir(folder: Path | str, version: int) -> Path:
    return Path(folder) / HOLDOUT_NAME / f"v{version:04d}"


def _grow(folder: Path, base: FaceHoldout | None, fetched, seed: int, fraction: float,
          max_photos: int) -> FaceHoldout:
    held = set(base.user_ids) if base else set()
    have = set(base.event_ids) if base else set()
    per_id: dict[str, int] = {}
    for u in base.user_ids if base else ():
        per_id[u] = per_id.get(u, 0) + 1
    fresh = sorted(((s, b) for s, b in fetched if s.event_id not in have
                    and (s.user_id in held or held_out(s.user_id, seed, fraction))),
                   key=lambda sb: (ts_key(sb[0].event_timestamp), sb[0].event_id))
    added = []
    for s, b in fresh:
        if per_id.get(s.user_id, 0) < max_photos:
            per_id[s.user_id] = per_id.get(s.user_id, 0) + 1
            added.append((s, b))
    if base is not None and not added:
        return base
    if base is None and not added:
        raise NotEnoughData(f"cannot freeze a face holdout: none of {len({s.user_id for s, _ in fetched})} "
                            f"identities fell into the holdout fraction {fraction}")
    version = base.version + 1 if base else 1
    old = base.photos() if base else []
    ids = (base.user_ids if base else []) + [s.user_id for s, _ in added]
    manifest = {
        "format": FORMAT, "version": version, "seed": seed, "fraction": fraction, "max_photos": max_photos,
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "identities": len(set(ids)), "photos": len(ids),
        "user_ids": ids,
        "event_ids": (base.event_ids if base else []) + [s.event_id for s, _ in added],
        "sample_kinds": (base.sample_kinds if base else []) + [s.sample_kind for s, _ in added],
        "digests": (base.digests if base else []) + [digest(b) for _, b in added],
        "added_in": (base.added_in if base else []) + [version] * len(added),
    }
    write_frozen_version(_version_dir(folder, version), old + [b for _, b in added], manifest)
    loaded = FaceHoldout.load(folder, version)
    assert loaded is not None
    return loaded


@dataclass
class FaceDataset:
    """Training and validation photos (identity-disjoint, neither touching the holdout)."""
    dataset_id: str
    seed: int
    holdout: FaceHoldout
    photos: dict[str, list[bytes]] = field(repr=False)  # "train" / "val" -> encoded photos
    user_ids: dict[str, list[str]] = field(repr=False)
    event_ids: dict[str, list[str]] = field(repr=False)
    dropped: list[tuple[str, str]] = field(default_factory=list, repr=False)  # (event_id, reason)

    def split(self, name: str) -> tuple[list[bytes], list[str]]:
        if name not in self.photos:
            raise ValueError(f"split: must be one of {sorted(self.photos)}, got {name!r}")
        return self.photos[name], self.user_ids[name]

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for _, why in self.dropped:
            reasons[why.split(":")[0]] = reasons.get(why.split(":")[0], 0) + 1
        return {"dataset_id": self.dataset_id, "seed": self.seed, "holdout_version": self.holdout.version,
                **{f"{k}_{what}": n for k in ("train", "val") for what, n in
                   (("photos", len(self.user_ids[k])), ("identities", len(set(self.user_ids[k]))))},
                "holdout_photos": len(self.holdout), "holdout_identities": len(self.holdout.identities),
                "dropped": reasons}


def build_face_dataset(samples: Iterable[FaceSample], holdout_dir: Path | str,
                       get: Callable[[str], bytes] | None = None, seed: int = 0, val_fraction: float = 0.15,
                       holdout_fraction: float = 0.2, min_photos: int = 2, max_photos: int = 8,
                       workers: int = 8) -> FaceDataset:
    """Fetch ``samples``, take the holdout's share in (``freeze_or_update``), split the rest by
    identity into train and val. Deterministic given the samples and ``seed``. Raises
    NotEnoughData when fewer than 2 identities would remain for either split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: must be within (0, 1), got {val_fraction}")
    if min_photos < 2 or max_photos < min_photos:
        raise ValueError(f"min_photos/max_photos: need 2 <= min_photos <= max_photos, got {min_photos}/{max_photos}")
    fetched, dropped = fetch_photos(samples, get, workers)
    holdout = freeze_or_update(holdout_dir, fetched, seed, holdout_fraction, max_photos)
    held = set(holdout.user_ids)
    by_id: dict[str, list[tuple[FaceSample, bytes]]] = {}
    for s, b in fetched:
        if s.user_id not in held and not held_out(s.user_id, seed, holdout_fraction):
            by_id.setdefault(s.user_id, []).append((s, b))
    reasons = [(s.event_id, why) for s, why in dropped]
    usable = {}
    for u, items in by_id.items():
        if len(items) < min_photos:
            reasons += [(s.event_id, f"too few photos: identity {u} has {len(items)}, min_photos {min_photos}")
                        for s, _ in items]
            continue
        items = sorted(items, key=lambda sb: _rank(seed, "face-photo", sb[0].event_id))
        reasons += [(s.event_id, f"over max_photos: identity {u} keeps {max_photos}") for s, _ in items[max_photos:]]
        usable[u] = sorted(items[:max_photos], key=lambda sb: sb[0].event_id)
    ranked = sorted(usable, key=lambda u: _rank(seed, "face-val", u))
    n_val = min(len(ranked) - 2, max(2, round(val_fraction * len(ranked))))
    if n_val < 2:
        raise NotEnoughData(f"identities: {len(ranked)} identities with >= {min_photos} photos outside the holdout; "
                            "at least 4 are needed (2 to train, 2 to validate)")
    splits = {"train": sorted(ranked[n_val:]), "val": sorted(ranked[:n_val])}
    photos = {k: [b for u in ids for _, b in usable[u]] for k, ids in splits.items()}
    user_ids = {k: [s.user_id for u in ids for s, _ in usable[u]] for k, ids in splits.items()}
    event_ids = {k: [s.event_id for u in ids for s, _ in usable[u]] for k, ids in splits.items()}
    h = hashlib.sha256(json.dumps({"format": FORMAT, "seed": seed, "val_fraction": val_fraction,
                                   "holdout_version": holdout.version, "max_photos": max_photos}).encode())
    for k in ("train", "val"):
        for u, e, b in zip(user_ids[k], event_ids[k], photos[k]):
            h.update(f"\n{k}\x00{u}\x00{e}\x00{digest(b)}".encode())
    return FaceDataset(h.hexdigest()[:12], seed, holdout, photos, user_ids, event_ids, reasons)


def synthetic_samples(identities: int, photos_per_identity: int = 4, seed: int = 0,
                      prefix: str = "synthetic-member", quality: int = 90) -> list[FaceSample]:
    """SYNTHETIC cartoon faces (gymops.simulator.faces), JPEG-encoded as the photo store holds
    them: per identity one enrolment and ``photos_per_identity - 1`` entries. Each identity's
    photos come from its own seeded generator, so adding identities changes no other's photos."""
    from gymops.simulator.faces import face_photo
    from gymops.simulator.garments import encode_jpeg

    if identities < 1 or photos_per_identity < 1:
        raise ValueError(f"identities/photos_per_identity: both must be >= 1, got {identities}/{photos_per_identity}")
    out = []
    for i in range(identities):
        user = f"{prefix}-{i:05d}"
        rng = np.random.default_rng([seed, i])
        for j in range(photos_per_identity):
            out.append(FaceSample(user, f"{user}-{seed}-{j}", "enrolment" if j == 0 else "entry",
                                  encode_jpeg(face_photo(user, rng), quality)))
    return out

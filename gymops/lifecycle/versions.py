"""A model version as the registry stores it: the model_versions table, the statuses and the
moves allowed between them, semver numbering, and the artifact digest that keeps one version per
trained artifact. ``gymops.lifecycle.registry.ModelRegistry`` is the only writer; these are its
data and rules, kept apart so the state machine reads in one screen."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from gymops.db import as_utc, metadata

MODEL_TYPES = ("laundry", "face")
LAUNDRY = "laundry"  # the model type the laundry pipeline trains, gates and deploys

CANDIDATE = "candidate"
REJECTED = "rejected"
CANARY = "canary"
ACTIVE = "active"
RETIRED = "retired"
ROLLED_BACK = "rolled_back"
ARCHIVED = "archived"
STATUSES = (CANDIDATE, REJECTED, CANARY, ACTIVE, RETIRED, ROLLED_BACK, ARCHIVED)

TRANSITIONS: dict[str, frozenset[str]] = {
    CANDIDATE: frozenset({REJECTED, CANARY, ACTIVE}),
    CANARY: frozenset({ACTIVE, REJECTED, ROLLED_BACK}),
    ACTIVE: frozenset({RETIRED, ROLLED_BACK}),
    RETIRED: frozenset({ACTIVE, ARCHIVED}),
    REJECTED: frozenset({CANDIDATE, ARCHIVED}),
    ROLLED_BACK: frozenset({ARCHIVED}),
    ARCHIVED: frozenset(),
}
ARCHIVABLE = frozenset({RETIRED, REJECTED, ROLLED_BACK})
BUMPS = ("major", "minor", "patch")
KEEP_LOADABLE = 10

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_type", sa.String(32), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    # The semver parts, so that ordering is numeric (1.10.0 after 1.9.0).
    sa.Column("major", sa.Integer, nullable=False),
    sa.Column("minor", sa.Integer, nullable=False),
    sa.Column("patch", sa.Integer, nullable=False),
    sa.Column("triton_version", sa.Integer, nullable=False),
    sa.Column("architecture", sa.String(128), nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("dataset_id", sa.String(256)),
    sa.Column("run_id", sa.String(128)),
    sa.Column("parent_version", sa.String(32)),
    sa.Column("artifact_uri", sa.Text, nullable=False),
    # sha256 of the ONNX file, hex; NULL when it could not be read (a remote URI, rows from before).
    sa.Column("artifact_sha256", sa.String(64)),
    sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deployed_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("previous_version", sa.String(32)),
    sa.Column("status_reason", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("model_type", "version", name="model_versions_type_version"),
    sa.UniqueConstraint("model_type", "triton_version", name="model_versions_type_triton"),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="model_versions_status"),
    sa.Index("model_versions_type_status", "model_type", "status"),
    sa.Index("model_versions_type_artifact", "model_type", "artifact_sha256", unique=True),  # NULLs may repeat
    sa.Index("model_versions_one_active", "model_type", unique=True,
             sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'")),
)


class RegistryError(RuntimeError):
    pass


class VersionNotFound(RegistryError, LookupError):
    def __init__(self, model_type: str, version: str):
        super().__init__(f"{model_type} model version {version} is not in the registry")
        self.model_type = model_type
        self.version = version


class IllegalTransition(RegistryError):
    def __init__(self, model_type: str, version: str, from_status: str, to_status: str):
        allowed = ", ".join(sorted(TRANSITIONS.get(from_status, ()))) or "nothing"
        super().__init__(f"{model_type} {version}: cannot go from {from_status} to {to_status} "
                         f"(from {from_status} it may go to: {allowed})")
        self.model_type = model_type
        self.version = version
        self.from_status = from_status
        self.to_status = to_status


@dataclass(frozen=True)
class ModelVersion:
    model_type: str
    version: str
    triton_version: int
    architecture: str
    metrics: dict
    dataset_id: str | None
    run_id: str | None
    parent_version: str | None
    artifact_uri: str
    trained_at: datetime
    deployed_at: datetime | None
    status: str
    previous_version: str | None
    status_reason: str | None
    updated_at: datetime
    artifact_sha256: str | None = None

    @property
    def semver(self) -> tuple[int, int, int]:
        return parse_version(self.version)


def parse_version(version: str) -> tuple[int, int, int]:
    match = _SEMVER.match(version or "")
    if not match:
        raise ValueError(f"not a semver version (MAJOR.MINOR.PATCH): {version!r}")
    return int(match[1]), int(match[2]), int(match[3])



def version_of_row(row) -> ModelVersion:
    m = row._mapping
    return ModelVersion(
        model_type=m["model_type"], version=m["version"], triton_version=m["triton_version"],
        architecture=m["architecture"], metrics=m["metrics"] or {}, dataset_id=m["dataset_id"],
        run_id=m["run_id"], parent_version=m["parent_version"], artifact_uri=m["artifact_uri"],
        trained_at=as_utc(m["trained_at"]), deployed_at=as_utc(m["deployed_at"]), status=m["status"],
        previous_version=m["previous_version"], status_reason=m["status_reason"], updated_at=as_utc(m["updated_at"]),
        artifact_sha256=m["artifact_sha256"],
    )


def artifact_digest(artifact_uri: str | Path) -> str | None:
    """sha256 (hex) of the artifact when it is a readable local file (a path or a file:// URI),
    else None: a remote or missing artifact cannot be recognised, so it is never merged."""
    text = str(artifact_uri)
    parts = urlsplit(text)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:  # s3://, http://... (one letter: a Windows drive)
        return None
    else:
        path = Path(text)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def add_artifact_column(engine: sa.Engine) -> None:
    """A model_versions table created before artifact_sha256 existed gains it, and its unique
    index, in place. Adding a nullable column is cheap and safe on a live table on SQLite and
    PostgreSQL; old rows keep NULL (their file may be gone), so they are never merged. A concurrent
    process doing the same is tolerated: the check is repeated after a failure."""
    for attempt in range(2):
        inspector = sa.inspect(engine)
        has_column = "artifact_sha256" in {c["name"] for c in inspector.get_columns("model_versions")}
        has_index = "model_versions_type_artifact" in {i["name"] for i in inspector.get_indexes("model_versions")}
        if has_column and has_index:
            return
        try:
            with engine.begin() as conn:
                if not has_column:
                    conn.exec_driver_sql("ALTER TABLE model_versions ADD COLUMN artifact_sha256 VARCHAR(64)")
                conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS model_versions_type_artifact "
                                     "ON model_versions (model_type, artifact_sha256)")
            return
        except sa.exc.DBAPIError:
            if attempt:
                raise


def check_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")


NEWEST_FIRST = (model_versions.c.major.desc(), model_versions.c.minor.desc(), model_versions.c.patch.desc())


def next_version(existing: list[tuple[str, int, int, int]], architecture: str, bump: str = "minor",
                 parent_version: str | None = None) -> tuple[int, int, int]:
    """The version a new model gets, from (architecture, major, minor, patch) of the versions
    already registered for its model type (archived ones included: numbers are never reused).

    First ever: 1.0.0. A new architecture, or bump="major": next major. bump="minor" (retrain):
    the major of the parent (or of the newest version of this architecture), next minor in that
    major. bump="patch" (tuning): the parent's (or newest's) major.minor, next patch in it."""
    if bump not in BUMPS:
        raise ValueError(f"bump must be one of {', '.join(BUMPS)}, got {bump!r}")
    if not existing:
        return 1, 0, 0
    same_arch = sorted((v[1:] for v in existing if v[0] == architecture), reverse=True)
    if bump == "major" or not same_arch:
        return max(v[1] for v in existing) + 1, 0, 0
    base = parse_version(parent_version) if parent_version else same_arch[0]
    if bump == "minor":
        return base[0], max(v[2] for v in existing if v[1] == base[0]) + 1, 0
    return base[0], base[1], max(v[3] for v in existing if v[1:3] == base[:2]) + 1

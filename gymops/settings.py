"""The settings tree: every GYMOPS_* variable, typed, with its default, read in this one module.

One frozen dataclass per concern (MLServer's settings style): ``Settings`` (profile, stores, broker,
ingestion) holds ``gates``, ``retrain``, ``partitions``, ``serving`` and ``delivery``. ``Settings.from_env()``
is the only reader of the environment; the library receives a ``Settings`` (or one of its groups)
as an argument and never looks at ``os.environ`` again. ``Settings.environment()`` is the way
back, for child processes and the config files that expand variables (Feast, Dagster).

Reading has no side effect. The two secrets that may be generated (the ingestion endpoint's token,
the deployer's Triton token) are read from their variable or their file under GYMOPS_HOME when
present; ``ensure_tokens`` creates the missing files, and only commands that serve call it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("embedded", "services")
FACE_TOKEN_FILE = "face-access.token"  # under GYMOPS_HOME, when GYMOPS_FACE_ACCESS_TOKEN is unset
# The header the deployer presents on Triton model-control calls. Lower case: gRPC metadata keys must be.
DEPLOY_HEADER = "gymops-deploy-token"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GateSettings:
    """The verification gates (DESIGN.md, Contracts). GYMOPS_GATE_*."""
    val_accuracy: float = 0.90
    holdout_accuracy: float = 0.88
    class_accuracy: float = 0.90
    # Champion against challenger, paired on the same holdout photos (lifecycle/gates.py): the
    # challenger may trail the champion overall by less than this, at 95% one-sided confidence
    # (non-inferiority), and must not be significantly worse (exact p <= decision_alpha) on the
    # photos confirmed since the champion was trained. 0.03: see the README's decision rule
    # (bench/decision.py).
    noninferiority_margin: float = 0.03
    # The statistical reading of a threshold (the README's sizing rule): a model ``decision_margin``
    # below a holdout threshold passes with probability <= ``decision_alpha``, and the holdout grows
    # until a model ``decision_margin`` above passes with probability >= ``decision_power``
    # (0.90 +- 0.05 at 99%/5%: 134 photos per class, pass mark 121).
    decision_margin: float = 0.05
    decision_power: float = 0.99
    decision_alpha: float = 0.05
    latency_ms: float = 200.0
    memory_mb: float = 2048.0
    throughput_rps: float = 50.0
    perf_requests: int = 1000
    min_class_fraction: float = 0.1


@dataclass(frozen=True)
class RetrainSettings:
    """When to retrain (UC-24), and on what. GYMOPS_RETRAIN_*."""
    min_corrections: int = 100
    min_days: float = 7.0
    urgent_corrections: int = 300
    # Urgent as well: the served version's correction rate is significantly above its expected
    # error (1 - its holdout accuracy), by a repeated Wald SPRT against this error rate
    # (retraining.py); the alarm waives min_days, not min_corrections (the examples to learn from).
    urgent_error_rate: float = 0.15
    # After a launch that did not replace the served model (a rejected candidate), another launch
    # needs this many new corrections: the count keeps running from the served model's data, this
    # only keeps the sensor from retraining on the same evidence again.
    retry_corrections: int = 50
    # A retraining reads this many days of confirmed history (plus every recent correction).
    window_days: int = 90


@dataclass(frozen=True)
class PartitionSettings:
    """First day of the daily partitions. GYMOPS_PARTITIONS_START, GYMOPS_FACE_PARTITIONS_START."""
    start: str = "2026-11-01"
    face_start: str = "2026-11-01"


@dataclass(frozen=True)
class DeliverySettings:
    """Progressive delivery: canary, shadow, the live signals and the watcher (DESIGN.md, "Progressive
    delivery"; README "Progressive delivery"). GYMOPS_DELIVERY_*.

    Thresholds are the design's seeds: alert below 0.85 live accuracy, automatic rollback below 0.80
    (UC-24); errors and latency judged against the active version's (DD-07/08). Every check is a
    test on counts with ``alpha`` per look (the watcher looks every ``watch_interval_s``).
    """
    canary_fraction: float = 0.10  # share of live requests the candidate answers during a canary
    shadow_fraction: float = 0.25  # share of requests mirrored to the candidate in shadow (not returned)
    # Promotion: "and" = verdicts AND minutes AND requests all reached; "or" = any of verdicts / minutes
    # reached (requests always required). 0 disables a criterion.
    promote_rule: str = "and"
    promote_verdicts: int = 30
    promote_minutes: float = 10.0
    promote_requests: int = 200
    alert_accuracy: float = 0.85
    rollback_accuracy: float = 0.80
    good_error_rate: float = 0.03  # SPRT H0 error rate of live verdicts (H1 = 1 - rollback_accuracy)
    error_rate_limit: float = 0.01  # candidate error rate allowed above the active version's
    latency_ratio: float = 1.5  # candidate mean compute time allowed vs the active version's ...
    latency_slack_ms: float = 5.0  # ... plus this
    mix_margin: float = 0.15  # |defective rate difference| tolerated vs the active version's
    min_requests: int = 20  # a version with fewer requests is "no data" for errors/latency/mix
    alpha: float = 0.001  # per-look false-alarm rate of the error and mix tests
    watch_interval_s: float = 1.0
    prometheus_url: str = ""  # "": the watcher scrapes Triton's metrics endpoint directly (embedded)
    prometheus_port: int = 9090  # the project-run Prometheus (services profile)
    metrics_port: int = 9108  # the tier's own prometheus-client endpoint

    def replace(self, **changes) -> "DeliverySettings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FaceSettings:
    """Face entry (gymops/face; README "Face entry"). GYMOPS_FACE_*.

    ``assets_dir``: where the build step (scripts/bootstrap.sh -> python -m gymops.face.assets) put
    the pretrained weights and the real check photos; beside the venv's packages because they belong
    to the build, not to a tier's state (``make clean`` must not delete them). ``model_name``: the
    public Triton name clients call ("face"), never with a version. The decision threshold is NOT a
    setting: every model version carries its own, derived from impostor scores (issue 12).

    The Access service (`gymops face serve`, gymops.face.service): ``embedder`` "triton" (probes go
    to Triton's public name; the pair's swap is Triton's) or "local" (onnxruntime in-process from the
    version folders under GYMOPS_TRITON_REPOSITORY, no Triton); HTTP and gRPC on ``access_host``;
    ``access_token`` ("": $GYMOPS_HOME/face-access.token, made by ensure_face_token). Every
    ``sync_interval_s`` it enrols what arrived in the history and follows gallery changes made by
    other processes; ``enrol_overlap_s``: how far before its high-water mark the enrolment follower
    reads again (a batch stamped earlier may commit later; gymops.face.enrolments).
    """
    assets_dir: Path = Path(sys.prefix) / "share" / "gymops-face"
    model_name: str = "face"
    # The nightly batch (gymops/face/nightly.py): ``window_days`` nights of samples train each night's
    # candidate; the gate (gymops/face/gates.py) measures TAR at ``gate_far`` for both models on the
    # same held-out pairs, each at its own threshold, and passes a candidate whose TAR trails the
    # active version's by less than ``gate_margin`` (one-sided 95%, paired), with the mean latency per
    # photo and the peak memory in the sandbox within ``gate_latency_ms`` and ``gate_memory_mb``.
    window_days: int = 30
    gate_far: float = 1e-3
    gate_margin: float = 0.03
    gate_latency_ms: float = 200.0
    gate_memory_mb: float = 2048.0
    embedder: str = "triton"
    access_host: str = "127.0.0.1"
    access_port: int = 8090
    access_grpc_port: int = 8091
    access_token: str = field(default="", repr=False)
    sync_interval_s: float = 2.0
    enrol_overlap_s: float = 600.0

    def replace(self, **changes) -> "FaceSettings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ServingSettings:
    """The Triton server this project runs. GYMOPS_TRITON_*, GYMOPS_DEPLOY_TOKEN."""
    home: Path = PROJECT_ROOT / "var"
    host: str = "127.0.0.1"  # loopback only: callers on other machines go through a proxy/balancer
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    repository: Path = PROJECT_ROOT / "triton_models"
    stub_site: Path | None = None  # numpy-1 site for the Python-backend stubs; None: beside the venv
    deploy_token: str = field(default="", repr=False)  # "": $home/deploy.token (ensure_tokens)
    deploy_header: str = DEPLOY_HEADER

    @property
    def triton_home(self) -> Path:
        """Backend directory, cache directory and logs of the server this project runs."""
        return self.home / "triton"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def replace(self, **changes) -> "ServingSettings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Settings:
    profile: str = "embedded"
    home: Path = PROJECT_ROOT / "var"
    # PostgreSQL (services profile): Dagster storage, the registry DB and Feast's registry/offline store.
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = field(default="", repr=False)
    pg_database: str = "gymops"
    database_url_override: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    rabbitmq_queue: str = "gymops.events"
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_bucket: str = "gym-photos"
    s3_access_key: str = "gymops"
    s3_secret_key: str = field(default="gymops-secret", repr=False)
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8088
    ingest_token: str = field(default="", repr=False)  # "": $home/ingest.token (ensure_tokens)
    batch_size: int = 500
    batch_wait_ms: int = 200
    # Ingestion limits (gymops/ingest): one event's size and JSON nesting, checked before decoding;
    # an HTTP body's size; deliveries of a RabbitMQ message before it is parked (x-delivery-limit).
    event_max_bytes: int = 64 * 1024
    event_max_depth: int = 8
    ingest_max_body_bytes: int = 10 * 1024 * 1024
    rabbitmq_delivery_limit: int = 5
    feast_project: str = "gymops"
    gates: GateSettings = GateSettings()
    retrain: RetrainSettings = RetrainSettings()
    partitions: PartitionSettings = PartitionSettings()
    serving: ServingSettings = ServingSettings()
    delivery: DeliverySettings = DeliverySettings()
    face: FaceSettings = FaceSettings()

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ConfigError(f"GYMOPS_PROFILE: must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        home = Path(self.home).resolve()
        object.__setattr__(self, "home", home)
        if self.serving.home != home:  # the serving tree lives under the same home
            object.__setattr__(self, "serving", dataclasses.replace(self.serving, home=home))
        if self.retrain.urgent_corrections < self.retrain.min_corrections:
            raise ConfigError("GYMOPS_RETRAIN_URGENT_CORRECTIONS: must be >= GYMOPS_RETRAIN_MIN_CORRECTIONS")
        if self.delivery.rollback_accuracy > self.delivery.alert_accuracy:
            raise ConfigError("GYMOPS_DELIVERY_ROLLBACK_ACCURACY: must be <= GYMOPS_DELIVERY_ALERT_ACCURACY")
        if self.delivery.promote_rule not in ("and", "or"):
            raise ConfigError(f"GYMOPS_DELIVERY_PROMOTE_RULE: must be 'and' or 'or', got {self.delivery.promote_rule!r}")
        if self.delivery.good_error_rate >= 1 - self.delivery.rollback_accuracy:
            raise ConfigError("GYMOPS_DELIVERY_GOOD_ERROR_RATE: must be below 1 - GYMOPS_DELIVERY_ROLLBACK_ACCURACY")
        if self.face.embedder not in ("triton", "local"):
            raise ConfigError(f"GYMOPS_FACE_EMBEDDER: must be 'triton' or 'local', got {self.face.embedder!r}")

    # -- derived ---------------------------------------------------------------------------------
    @property
    def services(self) -> bool:
        return self.profile == "services"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of this tier's own database (dead letters, model registry, outbox)."""
        if self.database_url_override:
            return self.database_url_override
        if self.services:
            auth = self.pg_user + (f":{self.pg_password}" if self.pg_password else "")
            return f"postgresql+psycopg2://{auth}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        return f"sqlite:///{self.home / 'gymops.db'}"

    @property
    def photo_root(self) -> Path:
        return self.home / "photos"

    @property
    def feast_repo(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    @property
    def feast_yaml(self) -> Path:
        return self.feast_repo / f"feature_store.{self.profile}.yaml"

    @property
    def feast_offline_dir(self) -> Path:
        return self.home / "feast" / "offline"

    @property
    def pipeline_root(self) -> Path:
        return self.home / "pipeline"

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed; ``gates={...}`` etc. change fields of a group."""
        for group in ("gates", "retrain", "partitions", "serving", "delivery", "face"):
            if isinstance(changes.get(group), Mapping):
                changes[group] = dataclasses.replace(getattr(self, group), **changes[group])
        return dataclasses.replace(self, **changes)

    # -- the way back into an environment ----------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """Every setting as GYMOPS_* variables: a child process's ``Settings.from_env()`` reads the
        same tree. Also the variables Feast's and Dagster's config files expand."""
        env = {name: _format(value) for name, value in _flatten(self).items()}
        host, _, port = self.redis_url.removeprefix("redis://").partition(":")
        port, _, db = port.partition("/")
        env["GYMOPS_REDIS_CONNECTION"] = f"{host or '127.0.0.1'}:{port or 6379},db={db or 0}"
        env["GYMOPS_DAGSTER_PG_URL"] = self.database_url if self.services else ""
        return {k: v for k, v in env.items() if v != "" or k in _KEEP_EMPTY}

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form WITHOUT the secrets (SECRET_VARIABLES): Dagster shows resource fields
        and stores a run's job arguments, so what travels there must be safe to show."""
        return {name: _format(value) for name, value in _flatten(self).items() if name not in SECRET_VARIABLES}

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> "Settings":
        """The tree ``to_dict`` gave, with the secrets of the process it is rebuilt in: their
        variables, else their files under GYMOPS_HOME (tokens), else the defaults."""
        secrets_here = {k: os.environ[k] for k in SECRET_VARIABLES if os.environ.get(k)}
        return cls.from_env({**secrets_here, **{k: v for k, v in values.items() if k not in SECRET_VARIABLES}})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """The settings of this environment (unset or empty variables: the defaults). A bad value
        raises ConfigError naming the variable and the reason."""
        environ = os.environ if environ is None else environ
        read = _Reader(environ)
        profile = read.str("GYMOPS_PROFILE", "embedded")
        home = read.path("GYMOPS_HOME", PROJECT_ROOT / "var")
        groups = {}
        for group, klass in _GROUPS.items():
            values = {}
            for f in dataclasses.fields(klass):
                if group == "serving" and f.name == "home":
                    continue
                var = _var(group, f.name)
                values[f.name] = read.typed(var, f, _BOUNDS.get(var))
            groups[group] = klass(**values)
        top = {}
        for f in dataclasses.fields(cls):
            if f.name in _GROUPS or f.name in ("profile", "home"):
                continue
            var = _var(None, f.name)
            top[f.name] = read.typed(var, f, _BOUNDS.get(var))
        home_path = home.resolve()
        for name, filename in (("ingest_token", "ingest.token"),):
            if not top[name]:
                top[name] = _read_secret(home_path / filename)
        if not groups["serving"].deploy_token:
            groups["serving"] = dataclasses.replace(groups["serving"],
                                                    deploy_token=_read_secret(home_path / "deploy.token"))
        if not groups["face"].access_token:
            groups["face"] = groups["face"].replace(access_token=_read_secret(home_path / FACE_TOKEN_FILE))
        return cls(profile=profile, home=home_path, **top, **groups)


# Switches that keep third-party tools from calling out or writing outside the project
# (../shared/notes/stack-facts.md, "Offline and quiet").
QUIET_TOOLS = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations checks PyPI for updates on import
    "GX_ANALYTICS_ENABLED": "false",
    "ORT_DISABLE_TELEMETRY": "1",
    "FEAST_USAGE": "False",
    "FEAST_DISABLE_USAGE": "1",
    "PL_DISABLE_FORK": "1",  # Lightning: no fork-based launcher probing on CPU
}


def quiet_tools() -> None:
    """Set QUIET_TOOLS in this process unless already set (before the tools are imported)."""
    for key, value in QUIET_TOOLS.items():
        os.environ.setdefault(key, value)


# What Feast's feature_store.<profile>.yaml files expand (tests/test_settings.py checks the list).
FEAST_VARIABLES = frozenset({"GYMOPS_FEAST_PROJECT", "GYMOPS_HOME", "GYMOPS_PG_HOST", "GYMOPS_PG_PORT", "GYMOPS_PG_USER",
                             "GYMOPS_PG_PASSWORD", "GYMOPS_PG_DATABASE", "GYMOPS_REDIS_CONNECTION"})


def export_environment(settings: Settings) -> None:
    """Write the variables Feast's feature_store.<profile>.yaml expands from this process's
    environment (FEAST_VARIABLES, nothing else: another settings tree built in this process must not
    pick up these settings' tokens), and keep the tools quiet. Importing feast otherwise creates
    /tmp/feast_metrics_* and flips prometheus_client into multiprocess mode."""
    env = settings.environment()
    os.environ.update({k: env.get(k, "") for k in FEAST_VARIABLES})
    quiet_tools()
    metrics = settings.home / "run" / "prometheus"
    metrics.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROCESS_DIR", str(metrics))


def load_settings() -> Settings:
    """The process's settings, from its environment (entry points call this once)."""
    return Settings.from_env()


def ensure_face_token(settings: Settings) -> Settings:
    """Settings whose face Access service token exists (generated once into its file when unset);
    `gymops face serve` calls this, its clients read the file or GYMOPS_FACE_ACCESS_TOKEN."""
    token = settings.face.access_token or _create_secret(settings.home / FACE_TOKEN_FILE)
    return settings.replace(face={"access_token": token})


def ensure_tokens(settings: Settings) -> Settings:
    """Settings whose ingestion and deploy tokens exist: each missing one is generated once into
    its file under GYMOPS_HOME (0600). Commands that serve or control call this; reading does not."""
    ingest = settings.ingest_token or _create_secret(settings.home / "ingest.token")
    deploy = settings.serving.deploy_token or _create_secret(settings.home / "deploy.token")
    return settings.replace(ingest_token=ingest, serving={"deploy_token": deploy})


# -- plumbing ----------------------------------------------------------------------------------------
_GROUPS = {"gates": GateSettings, "retrain": RetrainSettings, "partitions": PartitionSettings,
           "serving": ServingSettings, "delivery": DeliverySettings, "face": FaceSettings}
# Variable names that do not follow GYMOPS_<GROUP>_<FIELD>.
_NAMES = {
    ("serving", "deploy_token"): "GYMOPS_DEPLOY_TOKEN",
    ("serving", "deploy_header"): "GYMOPS_DEPLOY_HEADER",
    ("serving", "host"): "GYMOPS_TRITON_HOST",
    ("serving", "http_port"): "GYMOPS_TRITON_HTTP_PORT",
    ("serving", "grpc_port"): "GYMOPS_TRITON_GRPC_PORT",
    ("serving", "metrics_port"): "GYMOPS_TRITON_METRICS_PORT",
    ("serving", "repository"): "GYMOPS_TRITON_REPOSITORY",
    ("serving", "stub_site"): "GYMOPS_TRITON_STUB_SITE",
    ("gates", "val_accuracy"): "GYMOPS_GATE_VAL_ACCURACY",
    ("partitions", "start"): "GYMOPS_PARTITIONS_START",
    ("partitions", "face_start"): "GYMOPS_FACE_PARTITIONS_START",
    (None, "database_url_override"): "GYMOPS_DATABASE_URL",
}
_PREFIX = {"gates": "GYMOPS_GATE_", "retrain": "GYMOPS_RETRAIN_", "partitions": "GYMOPS_PARTITIONS_",
           "serving": "GYMOPS_TRITON_", "delivery": "GYMOPS_DELIVERY_",
           "face": "GYMOPS_FACE_", None: "GYMOPS_"}
# Credentials: never in to_dict() (see there); environment() keeps them for child processes.
SECRET_VARIABLES = frozenset({"GYMOPS_PG_PASSWORD", "GYMOPS_S3_SECRET_KEY", "GYMOPS_INGEST_TOKEN", "GYMOPS_DEPLOY_TOKEN",
                              "GYMOPS_DATABASE_URL", "GYMOPS_RABBITMQ_URL", "GYMOPS_FACE_ACCESS_TOKEN"})
_KEEP_EMPTY = {"GYMOPS_PG_PASSWORD", "GYMOPS_DAGSTER_PG_URL"}
# variable -> (lo, hi), inclusive
_BOUNDS = {
    "GYMOPS_GATE_VAL_ACCURACY": (0.0, 1.0), "GYMOPS_GATE_HOLDOUT_ACCURACY": (0.0, 1.0),
    "GYMOPS_GATE_CLASS_ACCURACY": (0.0, 1.0), "GYMOPS_GATE_NONINFERIORITY_MARGIN": (0.0, 1.0),
    "GYMOPS_GATE_DECISION_MARGIN": (1e-6, 0.5), "GYMOPS_GATE_DECISION_POWER": (0.5, 0.9999),
    "GYMOPS_GATE_DECISION_ALPHA": (1e-6, 0.5), "GYMOPS_RETRAIN_URGENT_ERROR_RATE": (1e-6, 0.999),
    "GYMOPS_RETRAIN_RETRY_CORRECTIONS": (1, math.inf), "GYMOPS_RETRAIN_WINDOW_DAYS": (1, 36500),
    "GYMOPS_GATE_LATENCY_MS": (1e-9, math.inf), "GYMOPS_GATE_MEMORY_MB": (1e-9, math.inf),
    "GYMOPS_GATE_THROUGHPUT_RPS": (0.0, math.inf), "GYMOPS_GATE_PERF_REQUESTS": (1, 1_000_000),
    "GYMOPS_GATE_MIN_CLASS_FRACTION": (0.0, 0.5),
    "GYMOPS_RETRAIN_MIN_CORRECTIONS": (0, math.inf), "GYMOPS_RETRAIN_MIN_DAYS": (0.0, math.inf),
    "GYMOPS_RETRAIN_URGENT_CORRECTIONS": (0, math.inf),
    "GYMOPS_PG_PORT": (1, 65535), "GYMOPS_INGEST_PORT": (1, 65535), "GYMOPS_TRITON_HTTP_PORT": (1, 65535),
    "GYMOPS_TRITON_GRPC_PORT": (1, 65535), "GYMOPS_TRITON_METRICS_PORT": (1, 65535),
    "GYMOPS_BATCH_SIZE": (1, 1_000_000), "GYMOPS_BATCH_WAIT_MS": (0, 3_600_000),
    "GYMOPS_EVENT_MAX_BYTES": (1024, 16 * 1024 * 1024), "GYMOPS_EVENT_MAX_DEPTH": (2, 64),
    "GYMOPS_INGEST_MAX_BODY_BYTES": (1024, 256 * 1024 * 1024), "GYMOPS_RABBITMQ_DELIVERY_LIMIT": (1, 1000),
    "GYMOPS_DELIVERY_CANARY_FRACTION": (0.0, 1.0), "GYMOPS_DELIVERY_SHADOW_FRACTION": (0.0, 1.0),
    "GYMOPS_DELIVERY_PROMOTE_VERDICTS": (0, 1_000_000), "GYMOPS_DELIVERY_PROMOTE_MINUTES": (0.0, 1e6),
    "GYMOPS_DELIVERY_PROMOTE_REQUESTS": (0, 1_000_000_000),
    "GYMOPS_DELIVERY_ALERT_ACCURACY": (0.0, 1.0), "GYMOPS_DELIVERY_ROLLBACK_ACCURACY": (0.01, 0.99),
    "GYMOPS_DELIVERY_GOOD_ERROR_RATE": (1e-6, 0.99), "GYMOPS_DELIVERY_ERROR_RATE_LIMIT": (0.0, 1.0),
    "GYMOPS_DELIVERY_LATENCY_RATIO": (1.0, 1000.0), "GYMOPS_DELIVERY_LATENCY_SLACK_MS": (0.0, 1e6),
    "GYMOPS_DELIVERY_MIX_MARGIN": (0.0, 1.0), "GYMOPS_DELIVERY_MIN_REQUESTS": (1, 1_000_000),
    "GYMOPS_DELIVERY_ALPHA": (1e-9, 0.5), "GYMOPS_DELIVERY_WATCH_INTERVAL_S": (0.05, 3600.0),
    "GYMOPS_DELIVERY_PROMETHEUS_PORT": (1, 65535), "GYMOPS_DELIVERY_METRICS_PORT": (1, 65535),
    "GYMOPS_FACE_WINDOW_DAYS": (1, 36500), "GYMOPS_FACE_GATE_FAR": (1e-9, 0.5), "GYMOPS_FACE_GATE_MARGIN": (0.0, 0.99),
    "GYMOPS_FACE_GATE_LATENCY_MS": (1e-9, math.inf), "GYMOPS_FACE_GATE_MEMORY_MB": (1e-9, math.inf),
    "GYMOPS_FACE_ACCESS_PORT": (1, 65535), "GYMOPS_FACE_ACCESS_GRPC_PORT": (1, 65535),
    "GYMOPS_FACE_SYNC_INTERVAL_S": (0.05, 3600.0), "GYMOPS_FACE_ENROL_OVERLAP_S": (0.0, 7 * 86400.0),
}


def _var(group: str | None, name: str) -> str:
    return _NAMES.get((group, name)) or _PREFIX[group] + name.upper()


def _flatten(settings: Settings) -> dict[str, Any]:
    out = {"GYMOPS_PROFILE": settings.profile, "GYMOPS_HOME": settings.home}
    for f in dataclasses.fields(settings):
        if f.name in ("profile", "home"):
            continue
        if f.name in _GROUPS:
            for g in dataclasses.fields(_GROUPS[f.name]):
                if not (f.name == "serving" and g.name == "home"):
                    out[_var(f.name, g.name)] = getattr(getattr(settings, f.name), g.name)
        else:
            out[_var(None, f.name)] = getattr(settings, f.name)
    return out


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _Reader:
    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def str(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def path(self, name: str, default: Path) -> Path:
        raw = self.raw(name)
        return Path(raw) if raw else default

    def typed(self, name: str, f: dataclasses.Field, bounds):
        default = f.default
        raw = self.raw(name)
        if raw is None:
            return default
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind in ("int", "float"):
            parse = int if kind == "int" else float
            try:
                value = parse(raw)
            except ValueError:
                raise ConfigError(f"{name}: must be {'an integer' if parse is int else 'a number'}, "
                                  f"got {raw!r}") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}: must be a finite number, got {raw!r}")
            lo, hi = bounds or (-math.inf, math.inf)
            if not lo <= value <= hi:
                raise ConfigError(f"{name}: must be between {lo:g} and {hi:g}, got {value:g}")
            return value
        if kind.startswith("Path"):
            return Path(raw).resolve()
        return raw


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _create_secret(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it between the read and the open
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if not token:
        raise ConfigError(f"{path} is empty; delete it to generate a new token")
    return token

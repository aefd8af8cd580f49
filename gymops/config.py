"""Settings, read from the environment (GYMOPS_*). The profile picks every default; any single
setting can still be overridden. Nothing else in the project reads os.environ for configuration."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("embedded", "services")


class ConfigError(ValueError):
    pass


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _int(name: str, default: int, lo: int = 1) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be an integer, got {raw!r}") from None
    if value < lo:
        raise ConfigError(f"{name}: must be >= {lo}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path
    # PostgreSQL (services profile): Dagster storage, the registry DB and Feast's registry/offline store.
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    pg_database: str
    redis_url: str
    rabbitmq_url: str
    rabbitmq_queue: str
    s3_endpoint: str
    s3_bucket: str
    s3_access_key: str
    s3_secret_key: str
    ingest_host: str
    ingest_port: int
    ingest_token: str = field(repr=False)
    batch_size: int
    batch_wait_ms: int
    feast_project: str

    @property
    def services(self) -> bool:
        return self.profile == "services"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of this tier's own database (dead letters, model registry, outbox)."""
        explicit = _env("GYMOPS_DATABASE_URL")
        if explicit:
            return explicit
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

    def environment(self) -> dict[str, str]:
        """Variables for child processes and for the config files that expand them
        (feature_store.<profile>.yaml, dagster.<profile>.yaml)."""
        host, _, port = self.redis_url.removeprefix("redis://").partition(":")
        port, _, db = port.partition("/")
        return {
            "GYMOPS_PROFILE": self.profile,
            "GYMOPS_HOME": str(self.home),
            "GYMOPS_FEAST_PROJECT": self.feast_project,
            "GYMOPS_PG_HOST": self.pg_host,
            "GYMOPS_PG_PORT": str(self.pg_port),
            "GYMOPS_PG_USER": self.pg_user,
            "GYMOPS_PG_PASSWORD": self.pg_password,
            "GYMOPS_PG_DATABASE": self.pg_database,
            "GYMOPS_REDIS_CONNECTION": f"{host or '127.0.0.1'}:{port or 6379},db={db or 0}",
            "GYMOPS_DAGSTER_PG_URL": self.database_url if self.services else "",
        }


def _token(home: Path) -> str:
    """The ingestion token: GYMOPS_INGEST_TOKEN, or one generated once per home and kept 0600."""
    explicit = _env("GYMOPS_INGEST_TOKEN")
    if explicit:
        return explicit
    path = home / "ingest.token"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def load_settings() -> Settings:
    profile = _env("GYMOPS_PROFILE", "embedded")
    if profile not in PROFILES:
        raise ConfigError(f"GYMOPS_PROFILE: must be one of {', '.join(PROFILES)}, got {profile!r}")
    home = Path(_env("GYMOPS_HOME", str(PROJECT_ROOT / "var"))).resolve()
    return Settings(
        profile=profile,
        home=home,
        pg_host=_env("GYMOPS_PG_HOST", "127.0.0.1"),
        pg_port=_int("GYMOPS_PG_PORT", 5432),
        pg_user=_env("GYMOPS_PG_USER", "postgres"),
        pg_password=_env("GYMOPS_PG_PASSWORD", ""),
        pg_database=_env("GYMOPS_PG_DATABASE", "gymops"),
        redis_url=_env("GYMOPS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        rabbitmq_url=_env("GYMOPS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        rabbitmq_queue=_env("GYMOPS_RABBITMQ_QUEUE", "gymops.events"),
        s3_endpoint=_env("GYMOPS_S3_ENDPOINT", "http://127.0.0.1:8333"),
        s3_bucket=_env("GYMOPS_S3_BUCKET", "gym-photos"),
        s3_access_key=_env("GYMOPS_S3_ACCESS_KEY", "gymops"),
        s3_secret_key=_env("GYMOPS_S3_SECRET_KEY", "gymops-secret"),
        ingest_host=_env("GYMOPS_INGEST_HOST", "127.0.0.1"),
        ingest_port=_int("GYMOPS_INGEST_PORT", 8088),
        ingest_token=_token(home),
        batch_size=_int("GYMOPS_BATCH_SIZE", 500),
        batch_wait_ms=_int("GYMOPS_BATCH_WAIT_MS", 200, lo=0),
        feast_project=_env("GYMOPS_FEAST_PROJECT", "gymops"),
    )


def settings_with(**env) -> Settings:
    """Settings as load_settings() reads them with these GYMOPS_* variables set (for tests and
    benchmarks that need several isolated configurations in one process); the environment is restored."""
    keys = {f"GYMOPS_{k.upper()}": str(v) for k, v in env.items()}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""This tier's own database (SQLite in the embedded profile, PostgreSQL in services)."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

import sqlalchemy as sa

metadata = sa.MetaData()


def as_utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database, zone-aware (SQLite hands back naive UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _):  # readers do not block the writer
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def engine_for(settings) -> sa.Engine:
    from gymops.history.feature_store import ensure_database

    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_database(settings)
    engine = _engine(settings.database_url)
    metadata.create_all(engine)
    return engine

"""The training history: one append-only table per push source, the offline side of Feast.

The column lists here are the single definition of each history table: the Feast schemas in
feature_repo/, the replicator's frames and the offline stores' DDL all derive from them.

Feast's push is "online first, then offline" and not idempotent. Writes to the history are made
idempotent by eventId, so a batch redelivered after a crash lands once:
- services: the PostgreSQL table has a unique index on event_id (INSERT .. ON CONFLICT DO NOTHING);
- embedded: each batch becomes one parquet file, committed through a SQLite ledger of event ids
  (write tmp file -> commit ledger rows naming it -> rename; `recover()` finishes or discards
  whatever a crash interrupted).
The ledger and the PostgreSQL indexes also answer "corrections since T" without scanning history.
"""
from __future__ import annotations

import os
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    sql: str
    nullable: bool = False


def _cols(*spec) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


TASK_CONFIRMATIONS = "task_confirmations"
FACE_SAMPLES = "face_samples"

TABLES: dict[str, tuple[Column, ...]] = {
    TASK_CONFIRMATIONS: _cols(
        ("event_id", pa.string(), "text"),
        ("task_id", pa.string(), "text"),
        ("helper_id", pa.string(), "text"),
        ("branch_id", pa.string(), "text"),
        ("photo_url", pa.string(), "text"),
        ("ai_result", pa.string(), "text"),
        ("ai_model_version", pa.string(), "text"),
        ("final_result", pa.string(), "text"),
        ("corrected", pa.bool_(), "boolean"),
        ("correction_reason", pa.string(), "text", True),
        ("model_type", pa.string(), "text"),
        ("event_timestamp", TS, "timestamptz"),
        ("created", TS, "timestamptz"),
    ),
    FACE_SAMPLES: _cols(
        ("event_id", pa.string(), "text"),
        ("user_id", pa.string(), "text"),
        ("sample_kind", pa.string(), "text"),
        ("role", pa.string(), "text", True),
        ("branch_id", pa.string(), "text", True),
        ("photo_url", pa.string(), "text"),
        ("similarity", pa.float64(), "double precision", True),
        ("model_version", pa.string(), "text", True),
        ("model_type", pa.string(), "text"),
        ("event_timestamp", TS, "timestamptz"),
        ("created", TS, "timestamptz"),
    ),
}
ENTITY_KEYS = {TASK_CONFIRMATIONS: "task_id", FACE_SAMPLES: "user_id"}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow, nullable=c.nullable) for c in TABLES[table]])


def column_names(table: str) -> list[str]:
    return [c.name for c in TABLES[table]]


def _micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("since: must be timezone-aware")
    return int(ts.timestamp() * 1_000_000)


# ----------------------------------------------------------------------------------------------
# Embedded: parquet batch files + SQLite ledger
# ----------------------------------------------------------------------------------------------

class FileHistory:
    """One history table as a folder of parquet batch files (read by Feast's file offline store)."""

    EMPTY = "batch-00000000-schema.parquet"  # zero rows; gives Feast the schema before any push

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.table = self.folder.name
        if self.table not in TABLES:
            raise ValueError(f"{self.folder}: not a history table (expected one of {sorted(TABLES)})")
        self.ledger_path = self.folder.parent / "ledger.sqlite"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.ledger_path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (event_id TEXT PRIMARY KEY, batch_file TEXT NOT NULL,"
            " model_type TEXT NOT NULL, corrected INTEGER, event_timestamp INTEGER NOT NULL, created INTEGER NOT NULL)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.table}_by_type_created ON {self.table} (model_type, corrected, created)"
        )
        return conn

    def create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        empty = self.folder / self.EMPTY
        if not empty.exists():
            pq.write_table(arrow_schema(self.table).empty_table(), empty)
        with closing(self._connect()):
            pass
        self.recover()

    def recover(self) -> int:
        """Finish or discard batch files a crash left half-written. Returns how many were touched."""
        touched = 0
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for tmp in sorted(self.folder.glob("*.parquet.tmp")):
                    final = tmp.with_suffix("")
                    committed = conn.execute(
                        f"SELECT 1 FROM {self.table} WHERE batch_file = ? LIMIT 1", (final.name,)
                    ).fetchone()
                    if committed:
                        os.replace(tmp, final)
                    else:
                        tmp.unlink()
                    touched += 1
            finally:
                conn.execute("COMMIT")
        return touched

    def append(self, table: pa.Table) -> int:
        """Append the rows whose event_id is new. Returns how many were written."""
        table = table.select(column_names(self.table)).cast(arrow_schema(self.table))
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = table.column("event_id").to_pylist()
                seen = _present(conn, self.table, ids)
                keep, first = [], set()
                for i, event_id in enumerate(ids):
                    if event_id not in seen and event_id not in first:
                        keep.append(i)
                        first.add(event_id)
                if not keep:
                    conn.execute("COMMIT")
                    return 0
                table = table.take(keep)
                name = f"batch-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
                tmp = self.folder / (name + ".tmp")
                with open(tmp, "wb") as fh:
                    pq.write_table(table, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                corrected = table.column("corrected").to_pylist() if "corrected" in table.column_names else [None] * len(keep)
                rows = zip(
                    table.column("event_id").to_pylist(),
                    table.column("model_type").to_pylist(),
                    corrected,
                    table.column("event_timestamp").cast(pa.int64()).to_pylist(),
                    table.column("created").cast(pa.int64()).to_pylist(),
                )
                conn.executemany(
                    f"INSERT INTO {self.table} VALUES (?, ?, ?, ?, ?, ?)",
                    [(e, name, m, None if c is None else int(c), ts, cr) for e, m, c, ts, cr in rows],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        os.replace(tmp, self.folder / name)
        return len(keep)

    def present(self, event_ids: Iterable[str]) -> set[str]:
        with closing(self._connect()) as conn:
            return _present(conn, self.table, list(event_ids))

    def count_since(self, model_type: str, since: datetime, corrected_only: bool) -> int:
        sql = f"SELECT count(*) FROM {self.table} WHERE model_type = ? AND created >= ?"
        if corrected_only:
            sql += " AND corrected = 1"
        with closing(self._connect()) as conn:
            return conn.execute(sql, (model_type, _micros(since))).fetchone()[0]

    def verdicts(self, model_type: str, model_version: str) -> list[bool]:
        """Whether each confirmation of a task the ``model_version`` judged was a correction, in
        event order: that version's live record (the retraining rate test reads it)."""
        frame = self.read().select(["model_type", "ai_model_version", "corrected", "event_timestamp"]).to_pandas()
        frame = frame[(frame.model_type == model_type) & (frame.ai_model_version == model_version)]
        return [bool(v) for v in frame.sort_values("event_timestamp", kind="mergesort").corrected]

    def entity_rows(self, start: datetime | None = None, end: datetime | None = None,
                    corrected_only: bool = False, newest: int | None = None):
        """(entity key, event_timestamp, created) of the rows timestamped in [start, end), newest first."""
        key = ENTITY_KEYS[self.table]
        cols = [key, "event_timestamp", "created"] + (["corrected"] if corrected_only else [])
        frame = self.read().select(cols).to_pandas()
        return _filter_rows(frame, key, start, end, corrected_only, newest)

    def read(self) -> pa.Table:
        files = sorted(self.folder.glob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else arrow_schema(self.table).empty_table()

    def ingested_since(self, since: datetime, model_type: str | None = None) -> pa.Table:
        """The rows ingested (``created``) at or after ``since``: the ledger names their batch files and
        only those are read. A batch committed a moment ago whose file is not renamed into place yet
        is left out this time (a follower reads again with an overlap)."""
        sql, params = f"SELECT event_id, batch_file FROM {self.table} WHERE created >= ?", [_micros(since)]
        if model_type is not None:
            sql += " AND model_type = ?"
            params.append(model_type)
        with closing(self._connect()) as conn:
            rows = conn.execute(sql, params).fetchall()
        parts = [pq.read_table(self.folder / name) for name in sorted({f for _, f in rows})
                 if (self.folder / name).exists()]
        if not parts:
            return arrow_schema(self.table).empty_table()
        table = pa.concat_tables(parts).cast(arrow_schema(self.table))
        return table.filter(pc.is_in(table.column("event_id"), pa.array([e for e, _ in rows], pa.string())))


def _filter_rows(frame, key, start, end, corrected_only, newest):
    if start is not None:
        frame = frame[frame.event_timestamp >= start]
    if end is not None:
        frame = frame[frame.event_timestamp < end]
    if corrected_only:
        frame = frame[frame.corrected.astype(bool)]
    frame = frame.sort_values("event_timestamp", ascending=False)[[key, "event_timestamp", "created"]]
    return (frame.head(newest) if newest else frame).reset_index(drop=True)


def _present(conn: sqlite3.Connection, table: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        chunk = ids[start : start + 900]
        marks = ",".join("?" * len(chunk))
        found.update(r[0] for r in conn.execute(f"SELECT event_id FROM {table} WHERE event_id IN ({marks})", chunk))
    return found


# ----------------------------------------------------------------------------------------------
# Services: PostgreSQL tables
# ----------------------------------------------------------------------------------------------

def postgres_ddl(table: str, schema: str = "public") -> list[str]:
    cols = ",\n  ".join(f"{c.name} {c.sql}{'' if c.nullable else ' NOT NULL'}" for c in TABLES[table])
    q = f"{schema}.{table}"
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {q} (\n  {cols}\n)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_event_id ON {q} (event_id)",
        f"CREATE INDEX IF NOT EXISTS {table}_by_type_created ON {q} (model_type, created)",
        f"CREATE INDEX IF NOT EXISTS {table}_entity_ts ON {q} ({ENTITY_KEYS[table]}, event_timestamp)",
        f"CREATE INDEX IF NOT EXISTS {table}_event_ts ON {q} (event_timestamp)",
    ]
    if any(c.name == "corrected" for c in TABLES[table]):
        stmts.append(
            f"CREATE INDEX IF NOT EXISTS {table}_corrected_created ON {q} (model_type, created) WHERE corrected"
        )
    return stmts


def postgres_insert(conn, table: pa.Table, name: str, schema: str = "public") -> int:
    """INSERT the rows, skipping event ids already present. ``conn`` is a psycopg 3 connection."""
    cols = column_names(name)
    table = table.select(cols).cast(arrow_schema(name))
    data = [table.column(c).to_pylist() for c in cols]
    types = [c.sql + "[]" for c in TABLES[name]]
    unnest = ", ".join(f"%s::{t}" for t in types)
    sql = (
        f"INSERT INTO {schema}.{name} ({', '.join(cols)}) "
        f"SELECT DISTINCT ON (event_id) * FROM unnest({unnest}) AS t({', '.join(cols)}) "
        "ON CONFLICT (event_id) DO NOTHING"
    )
    with conn.cursor() as cur:
        cur.execute(sql, data)
        return cur.rowcount


class PostgresHistory:
    def __init__(self, conninfo: str, table: str, schema: str = "public"):
        if table not in TABLES:
            raise ValueError(f"{table}: not a history table (expected one of {sorted(TABLES)})")
        self.conninfo, self.table, self.schema = conninfo, table, schema

    def _connect(self):
        import psycopg

        return psycopg.connect(self.conninfo, autocommit=True)

    def create(self) -> None:
        with self._connect() as conn:
            for stmt in postgres_ddl(self.table, self.schema):
                conn.execute(stmt)

    def recover(self) -> int:
        return 0  # each batch is one transaction: nothing can be half-written

    def present(self, event_ids: Iterable[str]) -> set[str]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT event_id FROM {self.schema}.{self.table} WHERE event_id = ANY(%s)", (list(event_ids),)
            ).fetchall()
        return {r[0] for r in rows}

    def count_since(self, model_type: str, since: datetime, corrected_only: bool) -> int:
        _micros(since)
        sql = f"SELECT count(*) FROM {self.schema}.{self.table} WHERE model_type = %s AND created >= %s"
        if corrected_only:
            sql += " AND corrected"
        with self._connect() as conn:
            return conn.execute(sql, (model_type, since)).fetchone()[0]

    def verdicts(self, model_type: str, model_version: str) -> list[bool]:
        """Whether each confirmation of a task the ``model_version`` judged was a correction, in event order."""
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT corrected FROM {self.schema}.{self.table} WHERE model_type = %s AND ai_model_version = %s "
                "ORDER BY event_timestamp", (model_type, model_version)).fetchall()
        return [bool(r[0]) for r in rows]

    def entity_rows(self, start: datetime | None = None, end: datetime | None = None,
                    corrected_only: bool = False, newest: int | None = None):
        """(entity key, event_timestamp, created) of the rows timestamped in [start, end), newest first."""
        import pandas as pd

        key = ENTITY_KEYS[self.table]
        where, params = ["true"], []
        if start is not None:
            where.append("event_timestamp >= %s"); params.append(start)
        if end is not None:
            where.append("event_timestamp < %s"); params.append(end)
        if corrected_only:
            where.append("corrected")
        sql = (f"SELECT {key}, event_timestamp, created FROM {self.schema}.{self.table} WHERE {' AND '.join(where)} "
               "ORDER BY event_timestamp DESC" + (f" LIMIT {int(newest)}" if newest else ""))
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        frame = pd.DataFrame(rows, columns=[key, "event_timestamp", "created"])
        for col in ("event_timestamp", "created"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        return frame

    def read(self) -> pa.Table:
        return self._select("")

    def ingested_since(self, since: datetime, model_type: str | None = None) -> pa.Table:
        """The rows ingested (``created``) at or after ``since`` (the (model_type, created) index
        answers it when ``model_type`` is given)."""
        _micros(since)
        if model_type is None:
            return self._select("WHERE created >= %s", (since,))
        return self._select("WHERE model_type = %s AND created >= %s", (model_type, since))

    def _select(self, where: str, params: tuple = ()) -> pa.Table:
        with self._connect() as conn:
            cur = conn.execute(f"SELECT {', '.join(column_names(self.table))} FROM {self.schema}.{self.table} {where}",
                               params)
            rows = cur.fetchall()
        cols = list(zip(*rows)) if rows else [[] for _ in TABLES[self.table]]
        return pa.table([pa.array(list(v), type=c.arrow) for v, c in zip(cols, TABLES[self.table])], schema=arrow_schema(self.table))


def pg_conninfo(settings) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
        password=settings.pg_password or None, dbname=settings.pg_database, sslmode="disable",
    )


def history_for(settings, table: str):
    if settings.services:
        return PostgresHistory(pg_conninfo(settings), table)
    return FileHistory(settings.feast_offline_dir / table)


def corrections_since(settings, model_type: str, since: datetime) -> int:
    """Corrected confirmations for ``model_type`` ingested at or after ``since`` (an index lookup)."""
    return history_for(settings, TASK_CONFIRMATIONS).count_since(model_type, since, corrected_only=True)

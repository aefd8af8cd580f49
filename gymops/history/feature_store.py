"""Opening the profile's Feast store, and setting it up (`feast apply` plus the history tables)."""
from __future__ import annotations

import os
import subprocess
import sys

from gymops.history import tables as history
from gymops.processes import child_env
from gymops.settings import Settings, export_environment


def open_store(settings: Settings):
    export_environment(settings)
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feast_repo), fs_yaml_file=settings.feast_yaml)


def ensure_database(settings: Settings) -> None:
    """Create the services profile's PostgreSQL database if it does not exist yet."""
    if not settings.services:
        return
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    admin = make_conninfo(
        host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
        password=settings.pg_password or None, dbname="postgres", sslmode="disable",
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
            except psycopg.errors.DuplicateDatabase:
                pass  # created concurrently


def apply(settings: Settings, quiet: bool = True) -> None:
    """Create the history tables and register the feature repo (`feast apply`)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "feast").mkdir(exist_ok=True)
    ensure_database(settings)
    for table in history.TABLES:
        history.history_for(settings, table).create()
    export_environment(settings)
    env = child_env(settings)
    cmd = [os.path.join(os.path.dirname(sys.executable), "feast"), "-c", str(settings.feast_repo),
           "-f", str(settings.feast_yaml), "apply"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if not quiet:
        print(done.stdout.strip())

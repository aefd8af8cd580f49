"""Shared fixtures. Service tests use the real PostgreSQL, Redis and RabbitMQ: outside CI they skip
with the reason when one is down; in CI (CI=true) a missing service is a failure, not a skip."""
from __future__ import annotations

import contextlib
import os
import socket
import uuid

import pytest

from gymops.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379), "RabbitMQ": ("127.0.0.1", 5672)}


def _down() -> list[str]:
    down = []
    for name, addr in SERVICES.items():
        try:
            with socket.create_connection(addr, timeout=1):
                pass
        except OSError as exc:
            down.append(f"{name} at {addr[0]}:{addr[1]} ({exc.strerror or exc})")
    return down


def require_services() -> None:
    down = _down()
    if not down:
        return
    message = "services not reachable: " + ", ".join(down)
    if IN_CI:
        pytest.fail(message + " (CI must run the service tests; .ci/run starts them)")
    pytest.skip(message + "; start them to run the services profile tests")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """An applied embedded profile in a fresh GYMOPS_HOME."""
    from gymops.history import feature_store

    settings = Settings(profile="embedded", home=tmp_path_factory.mktemp("embedded"),
                             ingest_token="test-token-" + uuid.uuid4().hex, batch_wait_ms=50)
    feature_store.apply(settings)
    return settings


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """An applied services profile on its own database, Feast project and queue."""
    require_services()
    from gymops.history import feature_store

    tag = uuid.uuid4().hex[:8]
    settings = Settings(profile="services", home=tmp_path_factory.mktemp("services"),
                             pg_database=f"gymops_test_{tag}", feast_project=f"gymops_test_{tag}",
                             rabbitmq_queue=f"gymops.test.{tag}", ingest_token="test-token-" + tag,
                             batch_wait_ms=50, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    feature_store.apply(settings)
    yield settings
    _drop_services(settings)


def _drop_services(settings) -> None:
    import pika
    import psycopg

    from gymops.ingest.broker import parameters

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(parameters(settings))
        channel = conn.channel()
        channel.queue_delete(settings.rabbitmq_queue)
        channel.exchange_delete(settings.rabbitmq_queue)
        conn.close()
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(count=1000):
            if settings.feast_project.encode() in key:
                client.delete(key)
    from gymops.db import _engine

    with contextlib.suppress(Exception):
        _engine(settings.database_url).dispose()
    with contextlib.suppress(Exception):
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)')


@pytest.fixture(params=["embedded", "services"])
def profile(request):
    """Runs a test on both profiles: the same behaviour on each."""
    return request.getfixturevalue(request.param)

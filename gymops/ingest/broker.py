"""RabbitMQ: the durable events queue, a confirming publisher and the replicator's consumer.

Messages are persistent on a durable queue. The consumer acknowledges a batch only after
``Replicator.ingest`` returned for it (events in both Feast stores or in the dead-letter store), so
a consumer killed mid-batch, or a broker restart, leaves the unacknowledged messages to be
redelivered; the eventId de-duplication makes the redelivery harmless.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Iterable

import pika
from pika.exceptions import AMQPError

log = logging.getLogger(__name__)

def parameters(settings) -> pika.URLParameters:
    params = pika.URLParameters(settings.rabbitmq_url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 10
    return params


def declare(channel, queue: str) -> None:
    """A durable fanout exchange and the replicator's durable queue, both named ``queue``.

    Producers publish to the exchange, so other consumers can bind queues of their own to it."""
    channel.exchange_declare(queue, exchange_type="fanout", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, queue)


class Publisher:
    """Publishes persistent events with publisher confirms, reconnecting after a broker restart.

    ``publish`` returns once the broker has confirmed the message; a message whose confirm was lost
    to a dropped connection is sent again, which the consumer's de-duplication absorbs.
    """

    def __init__(self, settings, retry_for_s: float = 120.0):
        self.settings = settings
        self.retry_for_s = retry_for_s
        self._conn = None
        self._channel = None

    def _connect(self):
        self._conn = pika.BlockingConnection(parameters(self.settings))
        self._channel = self._conn.channel()
        declare(self._channel, self.settings.rabbitmq_queue)
        self._channel.confirm_delivery()

    def publish(self, body: bytes | str, message_id: str | None = None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                                     message_id=message_id)
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                if self._channel is None or not self._channel.is_open:
                    self._connect()
                self._channel.basic_publish(self.settings.rabbitmq_queue, "", body, props, mandatory=True)
                return
            except (AMQPError, OSError) as exc:
                self.close()
                if time.monotonic() > deadline:
                    raise ConnectionError(f"RabbitMQ unreachable for {self.retry_for_s:.0f} s: {exc!r}") from exc
                log.warning("publish failed (%r); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def publish_many(self, bodies: Iterable[bytes | str]) -> int:
        n = 0
        for body in bodies:
            self.publish(body)
            n += 1
        return n

    def close(self) -> None:
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except AMQPError:
            pass
        self._conn = self._channel = None


class Consumer:
    """Consumes the events queue in batches: ingest, then one multiple-ack for the batch."""

    def __init__(self, settings, replicator, on_batch=None):
        self.settings = settings
        self.replicator = replicator
        self.on_batch = on_batch
        self.batch_size = settings.batch_size
        self.wait_s = settings.batch_wait_ms / 1000
        self.stopping = threading.Event()
        self.batches = 0
        self.reconnects = 0

    def stop(self, *_):
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> None:
        self.replicator.recover()
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self._consume()
                delay = 0.5
            except (AMQPError, OSError) as exc:
                if self.stopping.is_set():
                    break
                self.reconnects += 1
                log.warning("RabbitMQ connection lost (%r); unacknowledged events will be redelivered; "
                            "reconnecting in %.1f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _consume(self) -> None:
        conn = pika.BlockingConnection(parameters(self.settings))
        try:
            channel = conn.channel()
            declare(channel, self.settings.rabbitmq_queue)
            channel.basic_qos(prefetch_count=self.batch_size * 2)
            log.info("consuming %s", self.settings.rabbitmq_queue)
            pending: list[tuple[int, bytes]] = []
            deadline = 0.0
            tick = max(min(self.wait_s, 0.5), 0.01)
            for method, _props, body in channel.consume(self.settings.rabbitmq_queue, inactivity_timeout=tick):
                if method is not None:
                    if not pending:
                        deadline = time.monotonic() + self.wait_s
                    pending.append((method.delivery_tag, body))
                if pending and (len(pending) >= self.batch_size or time.monotonic() >= deadline):
                    self._flush(channel, pending)
                    pending = []
                if self.stopping.is_set() and not pending:
                    break
            channel.cancel()
        finally:
            if conn.is_open:
                conn.close()

    def _flush(self, channel, pending: list[tuple[int, bytes]]) -> None:
        try:
            report = self.replicator.ingest([body for _, body in pending], "amqp")
        except Exception as exc:
            # Not acknowledged: drop the connection so the broker requeues the batch, then retry.
            log.exception("ingest failed for %d events; they stay on the queue", len(pending))
            raise OSError(f"ingest failed: {exc!r}") from exc
        channel.basic_ack(pending[-1][0], multiple=True)
        self.batches += 1
        if self.on_batch:
            self.on_batch(report)

"""RabbitMQ: the events exchange and queue, a confirming publisher and the replicator's consumer.

Topology (declared by this module, by publishers and consumers alike):

- ``<queue>``: a durable fanout exchange; producers publish to it.
- ``<queue>``: the replicator's queue, a *quorum* queue bound to that exchange, with
  ``x-delivery-limit`` (GYMOPS_RABBITMQ_DELIVERY_LIMIT) and a dead-letter exchange. Quorum queues
  count the deliveries of each message (header ``x-delivery-count``) and dead-letter a message
  returned more often than the limit, which is RabbitMQ's own poison-message handling
  (https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling). Dead-lettering is
  ``at-least-once`` (RabbitMQ 3.10+, which needs ``x-overflow: reject-publish``): the default
  at-most-once strategy may lose a dead-lettered message
  (https://www.rabbitmq.com/blog/2022/03/29/at-least-once-dead-lettering).
- ``<queue>.dlx`` (fanout) and ``<queue>.parked`` (quorum): where the broker parks what hit the
  limit. The consumer drains it too: each parked message is tried once more on its own and is then
  stored or written to the dead-letter store with its reason and delivery count (source
  ``amqp-parked``), so nothing stays parked unseen.

A queue declared by an older version (a classic durable queue without these arguments) is
migrated on the first declare: RabbitMQ refuses to redeclare a queue with other arguments
(PRECONDITION_FAILED), so ``migrate`` moves its messages, with publisher confirms, through
``<queue>.migrating`` into the new quorum queue of the same name. No message is lost: each is
acknowledged on the old queue only after the new one confirmed it (a crash in between gives a
duplicate, which eventId de-duplication absorbs), and new publishes are routed to the new queue
before the old one is unbound. A queue still consumed by an old consumer is not deleted (that would
drop its unacknowledged messages): stop the old consumers first.

The consumer acknowledges a message only after ``Replicator.ingest`` returned for it (stored, a
duplicate or in the dead-letter store). Validation cannot fail a batch any more; if a batch still
raises, the consumer asks whether the stores answer: if not (an outage) it keeps the batch and
retries it with backoff (no redelivery, no delivery counted); if they do, a poison message is in
the batch, which is split in halves until the failing messages are alone. The others are stored
and acknowledged; each failing one is returned to the queue (its delivery count grows) or, at the
limit, written to the dead-letter store with the error. A consumer killed mid-batch leaves the
unacknowledged messages to be redelivered; the eventId de-duplication makes that harmless, and the
dead-letter store keeps one row per message.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from typing import Iterable

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError, ChannelClosedByBroker

log = logging.getLogger(__name__)

PRECONDITION_FAILED, RESOURCE_LOCKED, NOT_FOUND = 406, 405, 404
# While a batch is open, the consumer lets deliveries gather this long between reads (never past
# the batch's deadline). pika wakes up, reads and dispatches once per socket read, which at a paced
# 1,000-1,500 events/s meant once per message; gathered, one read brings 10-15. pika's CPU per
# message, measured with a no-op replicator at 1,000/s: 89-114 us before, 45-48 us after (2026-12-01).
GATHER_S = 0.01


def parameters(settings) -> pika.URLParameters:
    params = pika.URLParameters(settings.rabbitmq_url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 10
    return params


def parked_queue(queue: str) -> str:
    return f"{queue}.parked"


def queue_arguments(settings) -> dict:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": int(getattr(settings, "rabbitmq_delivery_limit", 5)),
        "x-dead-letter-exchange": f"{settings.rabbitmq_queue}.dlx",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare(connection, settings):
    """Declare the whole topology (migrating an older queue) and return an open channel."""
    queue = settings.rabbitmq_queue
    channel = connection.channel()
    channel.exchange_declare(queue, exchange_type="fanout", durable=True)
    channel.exchange_declare(f"{queue}.dlx", exchange_type="fanout", durable=True)
    channel.queue_declare(parked_queue(queue), durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(parked_queue(queue), f"{queue}.dlx")
    try:
        channel.queue_declare(queue, durable=True, arguments=queue_arguments(settings))
    except ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        log.warning("queue %s exists with other arguments (%s): migrating it", queue, exc.reply_text)
        migrate(connection, settings)
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments=queue_arguments(settings))
    channel.queue_bind(queue, queue)
    _finish_migration(connection, settings)
    return channel


def _exists(connection, queue: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return False
        raise
    channel.close()
    return True


def _move(channel, source: str, target: str) -> int:
    """Move every ready message of ``source`` to ``target``: ack on the source after the confirm."""
    moved = 0
    while True:
        method, props, body = channel.basic_get(source, auto_ack=False)
        if method is None:
            return moved
        channel.basic_publish("", target, body, props, mandatory=True)  # confirmed: raises if not routed
        channel.basic_ack(method.delivery_tag)
        moved += 1


def migrate(connection, settings) -> int:
    """Move the queue ``settings.rabbitmq_queue`` (declared with other arguments) into a quorum
    queue of the same name with this version's arguments. Returns the messages moved. One
    migration at a time: an exclusive lock queue makes a second migrator wait."""
    queue, temp = settings.rabbitmq_queue, f"{settings.rabbitmq_queue}.migrating"
    args = queue_arguments(settings)
    deadline = time.monotonic() + 120
    while True:
        lock = connection.channel()
        try:
            lock.queue_declare(f"{queue}.migration-lock", exclusive=True, auto_delete=True)
            break
        except ChannelClosedByBroker as exc:
            if exc.reply_code != RESOURCE_LOCKED or time.monotonic() > deadline:
                raise
            connection.sleep(0.5)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(temp, durable=True, arguments=args)
        channel.queue_bind(temp, queue)      # new events land in the new queue ...
        moved = 0
        try:
            channel.queue_unbind(queue, queue)   # ... and no longer in the old one
            moved = _move(channel, queue, temp)
            # Not if-unused/if-empty: quorum queues refuse both (NOT_IMPLEMENTED closes the connection),
            # and an old quorum queue is migrated too when the arguments change (a new delivery limit).
            old = channel.queue_declare(queue, passive=True).method
            if old.consumer_count or old.message_count:
                raise RuntimeError(f"cannot migrate queue {queue}: {old.consumer_count} consumer(s) of the old "
                                   "version still attached (stop them first; nothing was lost)")
            channel.queue_delete(queue)
        except ChannelClosedByBroker as exc:
            if exc.reply_code != NOT_FOUND:  # gone already: an earlier migration got this far
                raise
            channel = connection.channel()
            channel.confirm_delivery()
        channel.queue_declare(queue, durable=True, arguments=args)
        channel.queue_bind(queue, queue)
        log.info("queue %s migrated to a quorum queue (%d messages moved)", queue, moved)
        return moved + _finish_migration(connection, settings)
    finally:
        if lock.is_open:
            lock.close()


def _finish_migration(connection, settings) -> int:
    """Drain ``<queue>.migrating`` (left by a migration, finished or interrupted) into the queue."""
    queue, temp = settings.rabbitmq_queue, f"{settings.rabbitmq_queue}.migrating"
    if not _exists(connection, temp):
        return 0
    moved = 0
    channel = connection.channel()
    try:
        channel.confirm_delivery()
        channel.queue_unbind(temp, queue)
        moved = _move(channel, temp, queue)
        # Quorum queues refuse if-empty/if-unused deletes (RabbitMQ 3.10): it is unbound, so nothing
        # new arrives; delete it only when it is seen empty.
        if channel.queue_declare(temp, passive=True).method.message_count == 0:
            channel.queue_delete(temp)
        channel.close()
    except ChannelClosedByBroker as exc:  # another process finished it first
        if exc.reply_code != NOT_FOUND:
            raise
    return moved


def delete_topology(settings) -> None:
    """Delete the queues and exchanges ``declare`` creates for ``settings.rabbitmq_queue``, with
    their messages (tests and benchmarks clean up with it; never for a live deployment)."""
    conn = pika.BlockingConnection(parameters(settings))
    try:
        channel = conn.channel()
        queue = settings.rabbitmq_queue
        for name in (queue, parked_queue(queue), f"{queue}.migrating"):
            channel.queue_delete(name)
        for name in (queue, f"{queue}.dlx"):
            channel.exchange_delete(name)
    finally:
        if conn.is_open:
            conn.close()


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
        self._channel = declare(self._conn, self.settings)
        self._channel.confirm_delivery()

    def publish(self, body: bytes | str, message_id: str | None = None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
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
        close_quietly(self._conn)
        self._conn = self._channel = None


def close_quietly(conn) -> None:
    """Close a pika connection that may already be gone (a broker restart closed it first)."""
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except AMQPError:
        pass


def delivery_count(props) -> int:
    """Earlier deliveries of this message (quorum queues set ``x-delivery-count`` on redelivery)."""
    value = (getattr(props, "headers", None) or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def freeze_startup_heap() -> None:
    """Leave everything alive now (imported modules, the Feast store, clients) out of every later
    garbage collection. For a process that only consumes (``gymops ingest consume`` calls it once
    its replicator is built), not for a library caller: it affects the whole process.

    The consumer imports Feast and with it torch, pandas and pyarrow: ~400,000 long-lived objects
    that every full collection walked again, ~0.25 s each time, every ~10,000 events (7-14% of the
    consumer's CPU, measured 2026-12-01). ``gc.freeze`` moves them to a permanent generation that
    collections skip (a full collection then takes ~3 ms); what the batches allocate is collected
    as before.
    """
    gc.collect()
    gc.freeze()


class Consumer:
    """Consumes the events queue (and its parking queue) in batches: ingest, then acknowledge."""

    def __init__(self, settings, replicator, on_batch=None):
        self.settings = settings
        self.replicator = replicator
        self.on_batch = on_batch
        self.batch_size = settings.batch_size
        self.wait_s = settings.batch_wait_ms / 1000
        self.limit = int(getattr(settings, "rabbitmq_delivery_limit", 5))
        self.stopping = threading.Event()
        self.batches = 0
        self.reconnects = 0
        self.poisoned = 0

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
            except (AMQPConnectionError, OSError) as exc:
                if self.stopping.is_set():
                    break
                self.reconnects += 1
                log.warning("RabbitMQ connection lost (%r); unacknowledged events will be redelivered; "
                            "reconnecting in %.1f s", exc, delay)
            except AMQPChannelError as exc:
                self.reconnects += 1
                log.error("RabbitMQ refused an operation (%r); unacknowledged events will be redelivered; "
                          "reconnecting in %.1f s", exc, delay)
            except Exception:  # noqa: BLE001 - a real error, logged as one, then a fresh start
                self.reconnects += 1
                log.exception("consumer failed; unacknowledged events will be redelivered; restarting in %.1f s", delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, 10.0)

    def _consume(self) -> None:
        conn = pika.BlockingConnection(parameters(self.settings))
        try:
            channel = declare(conn, self.settings)
            channel.basic_qos(prefetch_count=self.batch_size * 2)
            pending: list[tuple[int, object, bytes]] = []
            parked: list[tuple[int, object, bytes]] = []
            queue = self.settings.rabbitmq_queue
            channel.basic_consume(queue, lambda _ch, m, p, b: pending.append((m.delivery_tag, p, b)))
            # Its own channel: delivery tags are per channel, and the main batch's multiple-ack must
            # never settle a parked message that is still being handled.
            parked_channel = conn.channel()
            parked_channel.basic_qos(prefetch_count=10)
            parked_channel.basic_consume(parked_queue(queue), lambda _ch, m, p, b: parked.append((m.delivery_tag, p, b)))
            log.info("consuming %s", queue)
            deadline = 0.0
            tick = max(min(self.wait_s, 0.5), 0.01)
            while True:
                had = len(pending)
                conn.process_data_events(time_limit=tick if not pending else min(tick, max(0.0, deadline - time.monotonic())))
                if pending and not had:
                    deadline = time.monotonic() + self.wait_s
                if pending and (len(pending) >= self.batch_size or time.monotonic() >= deadline):
                    batch, pending[:] = list(pending), []
                    self._flush(conn, channel, batch)
                elif pending:
                    time.sleep(min(GATHER_S, max(0.0, deadline - time.monotonic())))
                if parked:
                    batch, parked[:] = list(parked), []
                    self._flush_parked(conn, parked_channel, batch)
                if self.stopping.is_set() and not pending:
                    break
        finally:
            if conn.is_open:
                conn.close()

    # -- the main queue -----------------------------------------------------------------------------
    def _flush(self, conn, channel, pending: list[tuple[int, object, bytes]]) -> None:
        delay = 0.5
        while True:
            try:
                report = self.replicator.ingest([body for _, _, body in pending], "amqp")
            except Exception as exc:  # noqa: BLE001
                log.error("ingest failed for a batch of %d events: %r", len(pending), exc)
                if not self.replicator.stores_ok():
                    if self.stopping.is_set():
                        raise ConnectionError("stopping during a store outage; the batch stays on the queue") from exc
                    log.error("stores unavailable: holding %d events, retrying in %.1f s", len(pending), delay)
                    conn.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self._isolate(channel, pending, exc)
                return
            channel.basic_ack(pending[-1][0], multiple=True)
            self.batches += 1
            if self.on_batch:
                self.on_batch(report)
            return

    def _isolate(self, channel, items, exc: Exception) -> None:
        """The stores answer but this batch fails: split it until each failing message is alone;
        acknowledge the rest as they are stored."""
        if len(items) == 1:
            self._poisoned(channel, items[0], exc)
            return
        mid = len(items) // 2
        for half in (items[:mid], items[mid:]):
            try:
                report = self.replicator.ingest([body for _, _, body in half], "amqp")
            except Exception as half_exc:  # noqa: BLE001
                self._isolate(channel, half, half_exc)
                continue
            for tag, _, _ in half:
                channel.basic_ack(tag)
            self.batches += 1
            if self.on_batch:
                self.on_batch(report)

    def _poisoned(self, channel, item, exc: Exception) -> None:
        tag, props, body = item
        deliveries = delivery_count(props) + 1
        self.poisoned += 1
        if deliveries >= self.limit:
            log.error("message failed %d deliveries, to the dead-letter store: %r", deliveries, exc)
            self.replicator.dead_letters.add(
                [(body, "(delivery)", f"failed {deliveries} deliveries: {type(exc).__name__}: {exc}", deliveries)],
                "amqp")
            channel.basic_ack(tag)
        else:
            log.error("message failed on its own (delivery %d of %d), returned to the queue: %r",
                      deliveries, self.limit, exc)
            channel.basic_nack(tag, requeue=True)

    # -- the parking queue --------------------------------------------------------------------------
    def _flush_parked(self, conn, channel, parked) -> None:
        """Messages the broker dead-lettered at the delivery limit (for example ones that killed
        the consumer before it could count them): one more try each, alone, then the dead-letter
        store with the reason."""
        for tag, props, body in parked:
            headers = getattr(props, "headers", None) or {}
            deaths = headers.get("x-death") or [{}]
            why = deaths[0].get("reason", b"")
            why = why.decode() if isinstance(why, bytes) else str(why)
            deliveries = delivery_count(props) or self.limit + 1
            try:
                self.replicator.ingest([body], "amqp-parked")
            except Exception as exc:  # noqa: BLE001
                if not self.replicator.stores_ok():
                    channel.basic_nack(tag, requeue=True)
                    conn.sleep(1.0)
                    continue
                log.error("parked message (%s) fails on its own too, to the dead-letter store: %r", why, exc)
                self.replicator.dead_letters.add(
                    [(body, "(delivery)", f"parked by RabbitMQ ({why or 'dead-lettered'}) after {deliveries} "
                      f"deliveries; fails on its own: {type(exc).__name__}: {exc}", deliveries)], "amqp-parked")
            channel.basic_ack(tag)

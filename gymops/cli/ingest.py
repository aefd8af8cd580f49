"""`gymops ingest {file,send,consume,serve}` and `gymops deadletters {list,replay}`: thin calls into
gymops.ingest (the replicator, the RabbitMQ consumer, the HTTP endpoint, the dead-letter store)."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from gymops.cli import add_group


def _replicator(settings):
    from gymops.ingest.replicator import Replicator

    return Replicator(settings)


def _jsonl_lines(path: str):
    handle = sys.stdin.buffer if path == "-" else open(path, "rb")
    with handle:
        for line in handle:
            if line.strip():
                yield line.rstrip(b"\r\n")


def _chunks(items, size):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_file(settings, args) -> int:
    replicator = _replicator(settings)
    replicator.recover()
    totals = {"stored": 0, "duplicates": 0, "deadLettered": 0}
    started = time.monotonic()
    for n, chunk in enumerate(_chunks(_jsonl_lines(args.file), args.batch_size or settings.batch_size), 1):
        report = replicator.ingest(chunk, "cli")
        for key, value in report.summary().items():
            totals[key] += value
        for o in report.outcomes:
            if o.status == "dead_letter":
                print(f"dead letter #{o.dead_letter_id}: {o.field}: {o.reason}", file=sys.stderr)
        print(f"batch {n}: {report.summary()}", file=sys.stderr)
    totals["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(totals))
    return 0


def cmd_send(settings, args) -> int:
    from gymops.settings import ensure_tokens
    from gymops.simulator.send import HttpSender, send_amqp

    settings = ensure_tokens(settings)
    lines = (line.decode("utf-8", errors="backslashreplace") for line in _jsonl_lines(args.file))
    if args.via == "amqp":
        n = send_amqp(settings, lines, args.rate)
        print(json.dumps({"published": n, "queue": settings.rabbitmq_queue}))
        return 0
    url = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
    totals = HttpSender(url, settings.ingest_token).send(lines, args.rate)
    print(json.dumps({**totals, "deadLettered": len(totals["deadLettered"])}))
    return 0


def cmd_consume(settings, args) -> int:
    from gymops.ingest.broker import Consumer, freeze_startup_heap

    log = logging.getLogger("gymops.consume")
    consumer = Consumer(settings, _replicator(settings), on_batch=lambda r: log.info("batch: %s", r.summary()))
    consumer.install_signal_handlers()
    freeze_startup_heap()
    consumer.run()
    return 0


def cmd_serve(settings, args) -> int:
    from gymops.ingest.http import serve
    from gymops.settings import ensure_tokens

    settings = ensure_tokens(settings)
    print(f"ingestion endpoint on http://{settings.ingest_host}:{settings.ingest_port}/v1/events "
          f"(token in {settings.home / 'ingest.token'} unless GYMOPS_INGEST_TOKEN is set)", flush=True)
    serve(settings, _replicator(settings))
    return 0


def _dead_letters(settings):
    from gymops.db import engine_for
    from gymops.ingest.deadletters import DeadLetterStore

    return DeadLetterStore(engine_for(settings))


def cmd_deadletters_list(settings, args) -> int:
    letters = _dead_letters(settings).list(include_replayed=args.all, limit=args.limit, offset=args.offset,
                                           reason=args.reason, source=args.source, field=args.field)
    for letter in letters:
        print(letter.summary())
        if args.payload:
            print(f"    {letter.payload}")
    print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


def cmd_deadletters_show(settings, args) -> int:
    letters = _dead_letters(settings).get([args.id])
    if not letters:
        print(f"no dead letter #{args.id}", file=sys.stderr)
        return 1
    print(json.dumps(letters[0].to_dict(), ensure_ascii=False, indent=2))
    return 0


def cmd_deadletters_replay(settings, args) -> int:
    from gymops.ingest.replicator import replay_dead_letters

    payload = Path(args.payload_file).read_text() if args.payload_file else None
    if payload is not None and len(args.ids) != 1:
        print("--payload-file replays exactly one dead letter: give its id", file=sys.stderr)
        return 2
    failed = 0
    for letter, outcome in replay_dead_letters(_replicator(settings), args.ids or None, payload,
                                               reason=args.reason, source=args.source, field=args.field):
        if outcome.status == "dead_letter":
            failed += 1
            print(f"#{letter.id}: still invalid: {outcome.field}: {outcome.reason}")
        else:
            print(f"#{letter.id}: {outcome.status}")
    return 1 if failed else 0


def register(sub) -> None:
    ingest = add_group(sub, "ingest", "events into the training history (Feast): a file, a sender, the consumer, the endpoint")
    p = ingest.add_parser("file", help="ingest a JSONL file of events (- for stdin) straight into Feast")
    p.add_argument("file")
    p.add_argument("--batch-size", type=int, default=0, help="events per push (default GYMOPS_BATCH_SIZE)")
    p.set_defaults(handler=cmd_file)

    p = ingest.add_parser("send", help="send a JSONL file of events through an ingestion path (HTTP or RabbitMQ), paced")
    p.add_argument("file")
    p.add_argument("--via", choices=("http", "amqp"), default="http")
    p.add_argument("--rate", type=float, default=0, help="events per second (0: as fast as possible)")
    p.add_argument("--url", help="ingestion endpoint (default: GYMOPS_INGEST_HOST/PORT)")
    p.set_defaults(handler=cmd_send)

    p = ingest.add_parser("consume", help="run the RabbitMQ consumer (until SIGTERM/SIGINT)")
    p.set_defaults(handler=cmd_consume)

    p = ingest.add_parser("serve", help="run the HTTP ingestion endpoint (POST /v1/events)")
    p.set_defaults(handler=cmd_serve)

    dead = add_group(sub, "deadletters", "list or replay events that failed validation")
    p = dead.add_parser("list", help="the open dead letters, oldest first, with the field and the reason (filters: --reason, --source, --field)")
    p.add_argument("--all", action="store_true", help="include replayed ones")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--payload", action="store_true", help="print each payload too")
    _filters(p)
    p.set_defaults(handler=cmd_deadletters_list)

    p = dead.add_parser("show", help="one dead letter with its full payload and delivery count (JSON)")
    p.add_argument("id", type=int)
    p.set_defaults(handler=cmd_deadletters_show)

    p = dead.add_parser("replay", help="re-validate and ingest; no ids: every open dead letter")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--payload-file", help="a corrected payload to replay in place of the stored one")
    _filters(p)
    p.set_defaults(handler=cmd_deadletters_replay)


def _filters(p) -> None:
    p.add_argument("--reason", help="only those whose reason contains this text")
    p.add_argument("--source", help="only those from this path: http, amqp, amqp-parked, cli, replay")
    p.add_argument("--field", help="only those rejected for this field (e.g. similarity, (body), (delivery))")

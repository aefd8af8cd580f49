"""The HTTP ingestion endpoint (for producers that do not speak AMQP).

POST /v1/events with ``Authorization: Bearer <GYMOPS_INGEST_TOKEN>``; the body is one event (a JSON
object, however it is formatted: pretty-printed JSON is still one event), a JSON array of events,
or NDJSON (one object per line). The response comes after the events are in both Feast stores (or
in the dead-letter store):

- 200 when every event was stored or was a duplicate;
- 422 when some were dead-lettered: ``deadLettered`` lists each with its index, field and reason
  (the others in the body were stored: a bad event never fails the good ones next to it);
- 401 without the token; 413 for a body over GYMOPS_INGEST_MAX_BODY_BYTES (read in chunks and
  refused as soon as it is over, never buffered whole);
- 503 only when a store is down: nothing of the body was acknowledged, resend it.

Nothing a client sends yields a 5xx: validation raises nothing but a validation failure
(gymops.ingest.events) and the batcher retries each caller's events on their own before it
reports a store failure to any of them.
"""
from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from gymops.ingest.events import MAX_DEPTH, EventValidationError, decode_json
from gymops.ingest.replicator import DEAD_LETTER, Batcher

log = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
MAX_LISTED = 1000


def _is_ndjson(lines: list[bytes]) -> bool:
    """Several lines, each a whole JSON object: NDJSON. A pretty-printed object's lines are not."""
    return len(lines) > 1 and all(line.startswith(b"{") and line.endswith(b"}") for line in lines)


def split_body(body: bytes, max_depth: int = MAX_DEPTH) -> list:
    """One event, a JSON array of events, or NDJSON. Undecodable parts stay raw for the dead-letter
    store; an array is decoded with the validator's bounded decoder (depth + 1 for the array)."""
    text = body.strip()
    if text.startswith(b"["):
        try:
            items = decode_json(text.decode("utf-8"), max_depth + 1)
        except (EventValidationError, UnicodeDecodeError):
            return [body]
        return items if isinstance(items, list) else [body]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines if _is_ndjson(lines) else [text]


def create_app(settings, batcher: Batcher, dead_letters) -> FastAPI:
    app = FastAPI(title="gymops ingestion", version="1")
    if not settings.ingest_token:
        raise ValueError("the ingestion endpoint needs a token: set GYMOPS_INGEST_TOKEN or call "
                         "gymops.settings.ensure_tokens first")
    token = settings.ingest_token.encode()
    max_body = getattr(settings, "ingest_max_body_bytes", MAX_BODY)
    max_depth = getattr(settings, "event_max_depth", MAX_DEPTH)

    def authorise(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        try:
            ok = scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token)
        except (TypeError, UnicodeEncodeError):
            ok = False
        if not ok:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def too_large() -> HTTPException:
        return HTTPException(413, f"body over {max_body} bytes; split it")

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length", "")
        if length.isdigit() and len(length) < 20 and int(length) > max_body:
            raise too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def rejected(field: str, reason: str) -> JSONResponse:
        return JSONResponse({"stored": 0, "duplicates": 0,
                             "deadLettered": [{"index": 0, "field": field, "reason": reason, "deadLetterId": None}]},
                            status_code=422)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "profile": settings.profile}

    @app.post("/v1/events")
    async def post_events(request: Request):
        authorise(request)
        body = await read_body(request)
        items = split_body(body, max_depth)
        if not items:
            return rejected("(body)", "no events in the body")
        from starlette.concurrency import run_in_threadpool

        try:
            outcomes = await run_in_threadpool(batcher.submit, items)
        except Exception as exc:  # a store is down: the batcher already retried this body on its own
            log.error("ingest unavailable: %r", exc)
            raise HTTPException(503, f"stores unavailable, nothing was acknowledged: {exc}") from None
        dead = [
            {"index": i, "field": o.field, "reason": o.reason, "deadLetterId": o.dead_letter_id}
            for i, o in enumerate(outcomes) if o.status == DEAD_LETTER
        ]
        result = {
            "stored": sum(o.status == "stored" for o in outcomes),
            "duplicates": sum(o.status == "duplicate" for o in outcomes),
            "deadLettered": dead,
        }
        return JSONResponse(result, status_code=422 if dead else 200)

    @app.get("/v1/deadletters")
    def list_dead_letters(request: Request, limit: int = Query(100, ge=1, le=MAX_LISTED),
                          offset: int = Query(0, ge=0, le=2**31 - 1), include_replayed: bool = False,
                          reason: str | None = Query(None, max_length=200),
                          source: str | None = Query(None, max_length=32),
                          field: str | None = Query(None, max_length=128)):
        authorise(request)
        letters = dead_letters.list(include_replayed=include_replayed, limit=limit, offset=offset,
                                    reason=reason, source=source, field=field)
        return [letter.to_dict() for letter in letters]

    return app


def serve(settings, replicator) -> None:
    import uvicorn

    batcher = Batcher(replicator, "http", settings.batch_size)
    app = create_app(settings, batcher, replicator.dead_letters)
    try:
        uvicorn.run(app, host=settings.ingest_host, port=settings.ingest_port, log_level="warning",
                    timeout_graceful_shutdown=10)
    finally:
        batcher.close()

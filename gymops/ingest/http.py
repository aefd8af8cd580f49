"""The HTTP ingestion endpoint (for producers that do not speak AMQP).

POST /v1/events with ``Authorization: Bearer <GYMOPS_INGEST_TOKEN>``; the body is one event, a JSON
array of events, or NDJSON. The response comes after the events are in both Feast stores (or in
the dead-letter store): 200 when every event was stored or was a duplicate, 422 when some were
dead-lettered (the body says which, with field and reason), 401 without the token, 413 for a body
over the limit, 503 when the stores are unavailable (then nothing was acknowledged: resend).
"""
from __future__ import annotations

import hmac
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from gymops.ingest.replicator import DEAD_LETTER, Batcher

log = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024


def split_body(body: bytes) -> list:
    """One event, a JSON array of events, or NDJSON. Undecodable parts stay raw for the dead-letter store."""
    text = body.strip()
    if text.startswith(b"["):
        try:
            items = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return [body]
        return items if items else []
    lines = [line for line in text.splitlines() if line.strip()]
    return lines if len(lines) > 1 else [text]


def create_app(settings, batcher: Batcher, dead_letters) -> FastAPI:
    app = FastAPI(title="gymops ingestion", version="1")
    if not settings.ingest_token:
        raise ValueError("the ingestion endpoint needs a token: set GYMOPS_INGEST_TOKEN or call "
                         "gymops.settings.ensure_tokens first")
    token = settings.ingest_token.encode()

    def authorise(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "profile": settings.profile}

    @app.post("/v1/events")
    async def post_events(request: Request):
        authorise(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise HTTPException(413, f"body over {MAX_BODY} bytes; split it")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"body over {MAX_BODY} bytes; split it")
        items = split_body(body)
        if not items:
            raise HTTPException(400, "no events in the body")
        from starlette.concurrency import run_in_threadpool

        try:
            outcomes = await run_in_threadpool(batcher.submit, items)
        except Exception as exc:
            log.error("ingest unavailable: %r", exc)
            raise HTTPException(503, f"stores unavailable, nothing was acknowledged: {exc}") from None
        rejected = [
            {"index": i, "field": o.field, "reason": o.reason, "deadLetterId": o.dead_letter_id}
            for i, o in enumerate(outcomes) if o.status == DEAD_LETTER
        ]
        result = {
            "stored": sum(o.status == "stored" for o in outcomes),
            "duplicates": sum(o.status == "duplicate" for o in outcomes),
            "deadLettered": rejected,
        }
        return JSONResponse(result, status_code=422 if rejected else 200)

    @app.get("/v1/deadletters")
    def list_dead_letters(request: Request, limit: int = 100, include_replayed: bool = False):
        authorise(request)
        return [
            {**letter.__dict__, "received_at": letter.received_at.isoformat(),
             "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None}
            for letter in dead_letters.list(include_replayed=include_replayed, limit=limit)
        ]

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

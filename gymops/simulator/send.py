"""Sending simulated events through the real ingestion paths (HTTP endpoint or RabbitMQ), paced."""
from __future__ import annotations

import json
import time
from typing import Iterable, Iterator

import requests


def paced(items: Iterable, rate: float | None) -> Iterator:
    """Yields items no faster than ``rate`` per second (None or 0: as fast as possible)."""
    began = time.monotonic()
    for n, item in enumerate(items):
        if rate:
            wait = began + n / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield item


def _body(event) -> str:
    return event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)


class HttpSender:
    """Posts events to the ingestion endpoint in small batches; returns the endpoint's verdicts."""

    def __init__(self, url: str, token: str, batch: int = 50, timeout: float = 60):
        self.url, self.batch, self.timeout = url.rstrip("/") + "/v1/events", batch, timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})

    def send(self, events: Iterable, rate: float | None = None) -> dict:
        totals = {"stored": 0, "duplicates": 0, "deadLettered": []}
        chunk: list[str] = []
        for event in paced(events, rate):
            chunk.append(_body(event))
            if len(chunk) >= self.batch:
                self._post(chunk, totals)
                chunk = []
        if chunk:
            self._post(chunk, totals)
        return totals

    def _post(self, chunk: list[str], totals: dict) -> None:
        for attempt in range(5):
            resp = self.session.post(self.url, data="\n".join(chunk).encode(), timeout=self.timeout)
            if resp.status_code != 503:
                break
            time.sleep(0.5 * 2**attempt)  # stores unavailable: nothing was acknowledged, resend
        if resp.status_code not in (200, 422):
            raise RuntimeError(f"ingestion endpoint answered {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        totals["stored"] += body["stored"]
        totals["duplicates"] += body["duplicates"]
        totals["deadLettered"].extend(body["deadLettered"])


def send_amqp(settings, events: Iterable, rate: float | None = None) -> int:
    from gymops.ingest.broker import Publisher

    publisher = Publisher(settings)
    try:
        return publisher.publish_many(_body(e) for e in paced(events, rate))
    finally:
        publisher.close()

"""A small client of the served laundry model, over gRPC or HTTP (tritonclient).

>>> client = LaundryClient("127.0.0.1:8001")                 # gRPC; protocol="http" for port 8000
>>> label, probabilities, model_version = client.classify(jpeg_bytes)
>>> client.classify_batch([jpeg1, jpeg2])                    # one request per max_batch_size photos
>>> generate(store, cfg, ai_verdict=client.ai_verdict)       # the simulator's AiVerdict

Clients never name a model version: "laundry" is the stable public name, and the version that
served a request comes back in model_version. Transient failures (connection refused/reset,
UNAVAILABLE, deadline exceeded, HTTP 502/503/504) are retried with a short backoff; a photo the
model cannot decode raises InvalidPhoto at once. A LaundryClient may be shared between threads:
each thread gets its own underlying tritonclient (the HTTP one is not thread-safe).
"""
from __future__ import annotations

import threading
import time
from typing import NamedTuple, Sequence

import numpy as np

MODEL = "laundry"
MAX_BATCH = 8  # the model's max_batch_size
OUTPUTS = ("label", "probabilities", "model_version")
_TRANSIENT_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
                   "StatusCode.ABORTED"}
_TRANSIENT_HTTP = {"429", "502", "503", "504"}


class Verdict(NamedTuple):
    label: str
    probabilities: tuple[float, float]  # (good, defective)
    model_version: str


class ClassifyError(RuntimeError):
    pass


class InvalidPhoto(ClassifyError, ValueError):
    """The server could not decode the photo (not retried)."""


def _strip_scheme(url: str) -> str:
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            return url[len(prefix):].rstrip("/")
    return url.rstrip("/")


class LaundryClient:
    def __init__(self, url: str, protocol: str = "grpc", model: str = MODEL, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.1, headers: dict[str, str] | None = None):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url = _strip_scheme(url)
        self.protocol = protocol
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.headers = dict(headers or {})
        self.attempts = 0  # calls made to the server, retries included (for observing flakiness)
        self.retried = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list = []
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self._module = module

    # -- plumbing ----------------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                client = self._module.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Forget this thread's client after a connection error (a fresh one reconnects)."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass

    def __enter__(self) -> "LaundryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transient(self, exc: Exception) -> bool:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            return status in (_TRANSIENT_GRPC if self.protocol == "grpc" else _TRANSIENT_HTTP)
        return isinstance(exc, (OSError, TimeoutError))  # refused/reset connections, socket timeouts

    def _infer(self, photos: Sequence[bytes]):
        from tritonclient.utils import InferenceServerException

        data = np.empty((len(photos), 1), dtype=object)
        for i, photo in enumerate(photos):
            if not isinstance(photo, (bytes, bytearray, memoryview)):
                raise InvalidPhoto(f"photo {i} must be bytes, got {type(photo).__name__}")
            if len(photo) == 0:
                raise InvalidPhoto(f"photo {i} is empty (0 bytes)")
            data[i, 0] = bytes(photo)
        module = self._module
        for attempt in range(self.retries + 1):
            client = self._client()
            inp = module.InferInput("photo", list(data.shape), "BYTES")
            inp.set_data_from_numpy(data)
            outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
            with self._lock:
                self.attempts += 1
            try:
                if self.protocol == "grpc":
                    return client.infer(self.model, [inp], outputs=outputs, client_timeout=self.timeout,
                                        headers=self.headers or None)
                return client.infer(self.model, [inp], outputs=outputs, headers=self.headers or None)
            except Exception as exc:  # noqa: BLE001 -- sorted into transient / invalid / other below
                if isinstance(exc, InferenceServerException) and "photo" in str(exc.message() or "") \
                        and str(exc.status() or "") in ("StatusCode.INVALID_ARGUMENT", "400"):
                    raise InvalidPhoto(exc.message()) from None
                if attempt >= self.retries or not self._transient(exc):
                    message = exc.message() if isinstance(exc, InferenceServerException) else repr(exc)
                    raise ClassifyError(f"{self.model} over {self.protocol} at {self.url}: {message}") from exc
                if not isinstance(exc, InferenceServerException):
                    self._drop_client()
                with self._lock:
                    self.retried += 1
                time.sleep(self.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    # -- API ---------------------------------------------------------------------------------------
    def classify(self, photo_bytes: bytes) -> Verdict:
        """(label, (p_good, p_defective), model_version) of one encoded photo."""
        return self.classify_batch([photo_bytes])[0]

    def classify_batch(self, photos: Sequence[bytes]) -> list[Verdict]:
        """Verdicts of several photos, in order; sent MAX_BATCH photos per request."""
        verdicts: list[Verdict] = []
        for start in range(0, len(photos), MAX_BATCH):
            result = self._infer(photos[start:start + MAX_BATCH])
            labels = result.as_numpy("label").reshape(-1)
            probabilities = result.as_numpy("probabilities").reshape(-1, 2)
            versions = result.as_numpy("model_version").reshape(-1)
            for label, p, version in zip(labels, probabilities, versions):
                verdicts.append(Verdict(label.decode(), (float(p[0]), float(p[1])), version.decode()))
        return verdicts

    def ai_verdict(self, photo_bytes: bytes) -> tuple[str, str]:
        """gymops.simulator.traffic.AiVerdict: photo bytes -> (label, model version)."""
        verdict = self.classify(photo_bytes)
        return verdict.label, verdict.model_version

    def ready(self) -> bool:
        try:
            return bool(self._client().is_model_ready(self.model))
        except Exception:  # noqa: BLE001
            return False

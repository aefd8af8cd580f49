"""Verify and identify: a probe photo against the gallery of the model version that embedded it.

Where matching runs: in the Access service's process, beside Triton, not in a Triton model. Triton
embeds (the public name "face", gymops/face/serving.py writes its version folders); this module
searches. Why: the gallery changes with every enrolment and must be searched with the exact version
that embedded the probe; in-process, one numpy matmul searches 10^4 members in ~0.1 ms (measured in
tests/test_face_gallery.py; ../shared/notes/stack-facts.md: numpy 0.13 ms vs faiss IndexFlatIP 0.20 ms
at 10^4 x 128, 1.35 vs 2.2 ms at 10^5), where a Triton matching model would need a reload or a side
channel for every enrolment and another stub round trip per request. faiss-cpu adds nothing at these
sizes (exact search is faster in numpy up to 10^6 vectors here), so it is not a dependency.

The one-version rule: an embedder returns each embedding WITH the model_version that made it (Triton's
response carries it), and the matcher compares it only with that version's GalleryIndex. A probe whose
version has no gallery loaded raises GalleryNotReady instead of falling back to another version's:
the swap (item 5) loads the candidate's gallery before it flips the served model, so during a swap
each request is matched within whichever version answered it. ``comparisons`` counts per version and
``cross_version`` stays 0 by construction (checked, not assumed: a mismatch raises).

Another process's flip: the nightly batch (gymops.face.release, run by Dagster) flips Triton from its
own process, so the Access service's matcher never saw the candidate's gallery being loaded. With a
``loader`` (gymops.face.swap.gallery_loader) a probe of a version with no loaded gallery loads it
from the database once, and only a COMPLETE one (ready, active or previous: the flip marks the
candidate ready before Triton serves it); an incomplete or unknown version still raises.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from gymops.face.gallery import GalleryIndex


class Embedder(Protocol):
    def embed(self, photos: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        """(N, 128) unit vectors and, per photo, the model_version that embedded it."""


class InvalidPhoto(ValueError):
    """The photo could not be decoded (the caller's fault: HTTP 400 / gRPC INVALID_ARGUMENT)."""


class GalleryNotReady(RuntimeError):
    """No gallery is loaded for the model version that embedded the probe."""


@dataclass(frozen=True)
class Verification:
    match: bool
    similarity: float | None  # None: the member has no vector in this version's gallery
    threshold: float
    model_version: str


@dataclass(frozen=True)
class Identification:
    user_id: str | None  # None: nobody in the gallery is above the threshold
    similarity: float
    threshold: float
    model_version: str


class LocalEmbedder:
    """A face version folder run in-process with onnxruntime, exactly as Triton's model.py runs it
    (the folder's own preprocess.py). For the re-index, tests and the embedded demo."""

    def __init__(self, version_dir: Path, threads: int = 1):
        import importlib.util
        import json

        import onnxruntime as ort

        version_dir = Path(version_dir)
        meta = json.loads((version_dir / "metadata.json").read_text())
        self.model_version = str(meta["version"])
        self.threshold = float(meta["threshold"])
        spec = importlib.util.spec_from_file_location(f"_face_pre_{id(self)}", version_dir / "preprocess.py")
        self._pre = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self._pre)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(version_dir / meta.get("onnx_file", "model.onnx")), options,
                                             providers=["CPUExecutionProvider"])

    def embed(self, photos: Sequence[bytes], batch_size: int = 16) -> tuple[np.ndarray, list[str]]:
        out = []
        for i in range(0, len(photos), batch_size):
            try:
                x = np.stack([self._pre.preprocess(p) for p in photos[i:i + batch_size]]).astype(np.float32)
            except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
                raise InvalidPhoto(f"undecodable face photo: {exc}") from exc
            out.append(self._session.run(["embedding"], {"image": x})[0])
        e = self._pre.normalise(np.concatenate(out)) if out else np.zeros((0, 128), np.float32)
        return e, [self.model_version] * len(e)


class TritonEmbedder:
    """The served public name over gRPC or HTTP (tritonclient); one client per thread."""

    def __init__(self, url: str, protocol: str = "grpc", model: str = "face", timeout: float = 10.0):
        self.url, self.protocol, self.model, self.timeout = url, protocol, model, timeout
        self._local = threading.local()

    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            c = self._local.client = (tc, tc.InferenceServerClient(self.url))
        return c

    def embed(self, photos: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        tc, client = self._client()
        vectors, versions = [], []
        for photo in photos:  # one request per photo: Triton batches them, and each carries its version
            inp = tc.InferInput("photo", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[bytes(photo)]], dtype=object))
            outs = [tc.InferRequestedOutput("embedding"), tc.InferRequestedOutput("model_version")]
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            try:
                result = client.infer(self.model, [inp], outputs=outs, **kwargs)
            except Exception as exc:  # noqa: BLE001 - tritonclient raises one type for everything
                if "undecodable" in str(exc):
                    raise InvalidPhoto(str(exc)) from exc
                raise
            vectors.append(result.as_numpy("embedding")[0])
            v = result.as_numpy("model_version").reshape(-1)[0]
            versions.append(v.decode() if isinstance(v, bytes) else str(v))
        return np.stack(vectors).astype(np.float32), versions


class FaceMatcher:
    """verify / identify against per-version galleries (see the module docstring)."""

    def __init__(self, embedder: Embedder, indexes: dict[str, GalleryIndex] | None = None,
                 loader: Callable[[str], GalleryIndex | None] | None = None):
        self.embedder = embedder
        self._indexes: dict[str, GalleryIndex] = dict(indexes or {})
        self._lock = threading.Lock()
        self.loader = loader
        self._load_lock = threading.Lock()
        self.comparisons: Counter = Counter()
        self.cross_version = 0

    def set_index(self, index: GalleryIndex) -> None:
        with self._lock:
            self._indexes = {**self._indexes, index.version: index}

    def drop_index(self, version: str) -> None:
        with self._lock:
            self._indexes = {k: v for k, v in self._indexes.items() if k != version}

    def loaded(self, version: str) -> GalleryIndex | None:
        return self._indexes.get(version)

    def index(self, version: str) -> GalleryIndex:
        index = self._indexes.get(version)
        if index is None and self.loader is not None:
            with self._load_lock:  # one load per version, however many probes arrive at once
                index = self._indexes.get(version)
                if index is None:
                    index = self.loader(version)
                    if index is not None:
                        self.set_index(index)
        if index is None:
            raise GalleryNotReady(f"no gallery loaded for model version {version}")
        return index

    def _probe(self, photo: bytes) -> tuple[np.ndarray, GalleryIndex]:
        vectors, versions = self.embedder.embed([photo])
        index = self.index(versions[0])
        if index.version != versions[0]:  # the invariant this class exists for
            self.cross_version += 1
            raise AssertionError(f"probe of {versions[0]} about to meet the gallery of {index.version}")
        return vectors[0], index

    def verify(self, photo: bytes, user_id: str) -> Verification:
        probe, index = self._probe(photo)
        similarity = index.similarity(probe, user_id)
        self.comparisons[index.version] += 1
        match = similarity is not None and similarity >= index.threshold
        return Verification(match, similarity, index.threshold, index.version)

    def identify(self, photo: bytes) -> Identification:
        probe, index = self._probe(photo)
        user_id, similarity = index.best(probe)
        self.comparisons[index.version] += len(index)
        return Identification(user_id if user_id is not None and similarity >= index.threshold else None,
                              similarity, index.threshold, index.version)

"""The face model's release: the registry, Triton's version folders, the galleries and the served
model, moved together (issue 12, item 5's wiring). Plain Python, no Dagster.

Four records must agree: the registry (model_versions, model type "face": which version is active,
with ModelDeployed/RolledBack events in the outbox), the version folders under the Triton repository
(each holds its ONNX and its own threshold), the gallery pair states (gymops.face.swap: which
version's gallery is active, previous, being re-indexed), and what Triton serves under the public
name. ``deploy`` moves them in this order:

    reconcile   finish whatever a crashed deploy or rollback left half done (below)
    folder      write the candidate's version folder from the registered ONNX (the registered sha256
                is what serves) with the threshold its gate derived
    begin       the candidate's gallery becomes live (indexing): enrolments from now on go to it too
    reindex     every enrolled member's stored photo embedded by the candidate (resumable)
    complete    indexing -> ready once no member is missing
    flip        the galleries' flip: candidate index loaded, then ``serve`` (Triton's swap), then the
                pair states (candidate active, old active previous, older previous archived)
    registry    the candidate active in the registry, the old one retired, ModelDeployedEvent
    archive     versions beyond the newest ``keep`` archived in the registry and their folders moved out
                of the repository, except a version whose gallery is live (the previous pair: a run of
                rejected candidates must not take the rollback target away)

Why this order: until ``flip`` nothing that answers an entry has changed, so a crash or a killed
re-index leaves the active pair serving (the candidate is only "indexing"; the next deploy resumes
it). The galleries are the record of what was served, and they change in one transaction right
after the swap; the registry follows. ``reconcile`` reads where a crash stopped from the galleries:
a gallery pair active whose registry version is still a candidate was flipped (its gate had passed:
only a passed candidate is begun), so the registry catches up; a registry rolled back whose galleries
were not, gets the gallery rollback. Rollback goes registry first, as laundry's does
(gymops.deploy.rollback): a crash after it is finished towards the older, known-good version.

``TritonServe`` is the ``serve`` callable: one ModelControl.swap (gRPC; a load pinned to the version,
the old version answers until the new one is loaded and warm: no request fails), a no-op when that
version alone is served already, so restarts and retries may call it freely.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gymops.deploy.folders import VersionFolders, artifact_path
from gymops.face.gallery import GalleryStore
from gymops.face.matching import FaceMatcher, LocalEmbedder
from gymops.face.serving import write_face_onnx
from gymops.face.swap import FaceGalleries
from gymops.lifecycle.registry import KEEP_LOADABLE, ModelRegistry
from gymops.lifecycle.versions import (ACTIVE, ARCHIVABLE, ARCHIVED, CANDIDATE, ROLLED_BACK, ModelVersion,
                                      VersionNotFound)
from gymops.serving.control import METADATA_FILE, version_dir

FACE = "face"  # the registry's model type
ARCHITECTURE = "dlib-resnet-128"  # every face version: dlib's descriptor, its last stage fine-tuned


class ReleaseError(RuntimeError):
    """The registry, the folders and the galleries disagree, or a version cannot be released."""


class TritonServe:
    """``serve(version)`` for FaceGalleries: Triton's public face name answers with that registry
    version (see the module docstring). ``swaps`` keeps (version, load seconds) of real swaps."""

    def __init__(self, control, registry: ModelRegistry, model_name: str = "face", timeout: float = 120.0):
        self.control, self.registry, self.model_name, self.timeout = control, registry, model_name, timeout
        self.swaps: list[tuple[str, float]] = []

    def __call__(self, version: str) -> None:
        number = self.registry.get(FACE, version).triton_version
        if self.control.served_versions(self.model_name) == [number]:
            return
        result = self.control.swap(self.model_name, number, wait_old=True, timeout=self.timeout)
        self.swaps.append((version, round(result.load_seconds, 3)))


class _NoProbes:
    """The releasing process answers no entries (the Access service does); its matcher only holds
    the galleries FaceGalleries loads."""

    def embed(self, photos):
        raise RuntimeError("the face release process does not embed probes; the Access service does")


@dataclass
class ReleaseReport:
    version: str
    triton_version: int
    previous_version: str | None
    members: int  # members in the new active gallery
    reindexed: int  # vectors this call wrote (0 when an earlier, interrupted call had written them)
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    actions: list[str] = field(default_factory=list)  # what reconcile and clean-up did first
    already_active: bool = False

    @property
    def seconds(self) -> float:
        return round(sum(self.steps.values()), 3)

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "seconds": self.seconds}


@dataclass
class RollbackReport:
    from_version: str
    to_version: str
    seconds: float
    actions: list[str]


class FaceRelease:
    """See the module docstring. ``serve``: TritonServe in production; ``matcher``: this process's
    (default: one that answers no probes); ``archive_dir``: where archived version folders go
    (outside the repository); ``keep``: versions that stay loadable."""

    def __init__(self, registry: ModelRegistry, store: GalleryStore, repository: Path,
                 serve: Callable[[str], None], matcher: FaceMatcher | None = None, model_name: str = "face",
                 archive_dir: Path | None = None, keep: int = KEEP_LOADABLE):
        self.registry, self.repository, self.model_name = registry, Path(repository), model_name
        self.folders, self.keep = VersionFolders(repository, model_name, archive_dir), keep
        self._embedders: dict[str, LocalEmbedder] = {}
        self.pairs = FaceGalleries(store, matcher or FaceMatcher(_NoProbes()), self.embedder, serve)

    # -- versions and folders ---------------------------------------------------------------------
    def folder(self, version: str) -> Path:
        return version_dir(self.repository, self.model_name, self.registry.get(FACE, version).triton_version)

    def embedder(self, version: str) -> LocalEmbedder:
        """The version's folder run in-process, as Triton runs it (the re-index embeds with it)."""
        if version not in self._embedders:
            self._embedders[version] = LocalEmbedder(self.folder(version))
        return self._embedders[version]

    def threshold(self, version: str) -> float:
        return float(json.loads((self.folder(version) / METADATA_FILE).read_text())["threshold"])

    def write_folder(self, mv: ModelVersion, threshold: float) -> Path:
        """The version folder from the registered ONNX; an existing one must be this very version."""
        folder = version_dir(self.repository, self.model_name, mv.triton_version)
        if (folder / METADATA_FILE).exists():
            meta = json.loads((folder / METADATA_FILE).read_text())
            if (meta.get("version"), meta.get("onnx_sha256"), meta.get("threshold")) != \
                    (mv.version, mv.artifact_sha256, float(threshold)):
                raise ReleaseError(
                    f"{folder} holds version {meta.get('version')} (sha256 {str(meta.get('onnx_sha256'))[:12]}, "
                    f"threshold {meta.get('threshold')}), not face {mv.version} (sha256 "
                    f"{str(mv.artifact_sha256)[:12]}, threshold {threshold}): folders are never rewritten")
            return folder
        return write_face_onnx(self.repository, mv.triton_version, artifact_path(mv.artifact_uri), mv.version,
                               threshold, self.model_name, extra={"model_type": FACE, "dataset_id": mv.dataset_id})

    def _registered(self, version: str) -> ModelVersion | None:
        try:
            return self.registry.get(FACE, version)
        except VersionNotFound:
            return None

    # -- crash recovery ---------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Make the registry and the galleries agree after a crash (module docstring), then serve
        the active pair (FaceGalleries.recover: galleries loaded, ``serve`` idempotent). Returns
        what was done; ReleaseError when they disagree in a way none of these steps leaves."""
        actions: list[str] = []
        pair, active = self.pairs.active(), self.registry.active(FACE)
        if pair is None and active is None:
            return actions
        if pair is None:
            self.pairs.initialise(active.version, self.threshold(active.version))
            return [f"initialised the empty gallery of the registry's active {active.version}"]
        if active is None or pair.model_version != active.version:
            mv = self._registered(pair.model_version)
            previous = [s.model_version for s in self.pairs.in_state("previous")]
            if mv is not None and mv.status == CANDIDATE:
                self.registry.activate(FACE, mv.version, reason="reconcile: its gallery pair was flipped, the "
                                                                "registry had not recorded it")
                actions.append(f"registry: activated {mv.version} (flipped before a crash)")
            elif mv is not None and mv.status == ROLLED_BACK and active is not None and previous == [active.version]:
                self.pairs.rollback()
                actions.append(f"galleries: rolled back {mv.version} -> {active.version} (the registry had)")
            else:
                raise ReleaseError(
                    f"face: the active gallery pair is {pair.model_version} (registry: "
                    f"{mv.status if mv else 'unknown'}), the registry's active version is "
                    f"{active.version if active else 'none'}; no release step leaves them so")
        self.pairs.recover()
        return actions

    # -- the first version ------------------------------------------------------------------------
    def ensure_first(self, onnx_path: Path, threshold: float, metrics: dict, run_id: str | None = None,
                     dataset_id: str | None = None) -> tuple[ModelVersion, list[str]]:
        """The active version, establishing the first one when none is: ``onnx_path`` (the pretrained
        descriptor) registered, its folder written with ``threshold``, its (empty) gallery initialised
        and served, activated with a ModelDeployedEvent. Enrolment needs a live gallery, and a
        candidate needs an active version to be gated against and to roll back to."""
        actions = self.reconcile()
        active = self.registry.active(FACE)
        if active is not None:
            return active, actions
        mv = self.registry.register_candidate(FACE, ARCHITECTURE, {**metrics, "threshold": float(threshold)},
                                              dataset_id, run_id, str(onnx_path))
        if mv.status != CANDIDATE:
            raise ReleaseError(f"face {mv.version}, the registered artifact {onnx_path}, is {mv.status}: "
                               "it cannot become the first version")
        self.write_folder(mv, threshold)
        self.pairs.initialise(mv.version, float(threshold))  # serves it
        mv = self.registry.activate(FACE, mv.version, reason="the first face version (pretrained)")
        return mv, actions + [f"first version {mv.version} (threshold {threshold:.4f}) served"]

    # -- deploy and rollback ----------------------------------------------------------------------
    def deploy(self, version: str, threshold: float, photo_for: Callable[[str], bytes],
               on_step: Callable[[str, float], None] | None = None,
               progress: Callable[[int, int], None] | None = None, batch_size: int = 32) -> ReleaseReport:
        """Release a candidate that passed its gate (module docstring). Safe to call again after a
        crash anywhere: it resumes the re-index, and finishes a flip the registry missed."""
        steps: dict[str, float] = {}
        started = time.monotonic()

        def step(name: str, fn):
            t = time.monotonic()
            out = fn()
            steps[name] = round(time.monotonic() - t, 3)
            if on_step:
                on_step(name, steps[name])
            return out

        actions = step("reconcile", self.reconcile)
        mv = self.registry.get(FACE, version)
        previous = self.registry.active(FACE)
        if mv.status == ACTIVE:
            return ReleaseReport(version, mv.triton_version, mv.previous_version, self._members(version), 0, steps,
                                 actions, already_active=True)
        if mv.status != CANDIDATE:
            raise ReleaseError(f"face {version} is {mv.status}: only a candidate that passed its gate is deployed")
        step("folder", lambda: self.write_folder(mv, threshold))
        for s in self.pairs.in_state("indexing", "ready"):
            if s.model_version != version:  # a candidate an earlier night left behind
                self.pairs.abort(s.model_version)
                actions.append(f"aborted the unfinished gallery of {s.model_version}")
        state = self.pairs.states().get(version)
        if state is not None and state.state not in ("indexing", "ready"):
            raise ReleaseError(f"the gallery of face {version} is {state.state}; a candidate's gallery is new")
        if state is not None and state.threshold != float(threshold):
            raise ReleaseError(f"the gallery of face {version} was begun with threshold {state.threshold}, "
                               f"the gate derived {threshold}")
        written = 0
        if state is None or state.state == "indexing":
            step("begin", lambda: self.pairs.begin(version, float(threshold)))
            written = step("reindex", lambda: self.pairs.reindex(version, photo_for, batch_size, progress))
            step("complete", lambda: self.pairs.complete(version, photo_for))
        step("flip", lambda: self.pairs.flip(version, photo_for))
        total = time.monotonic() - started
        step("registry", lambda: self.registry.activate(FACE, version, deploy_seconds=round(total, 3)))
        step("archive", lambda: self._archive(actions))
        return ReleaseReport(version, mv.triton_version, previous.version if previous else None,
                             self._members(version), written, steps, actions)

    def rollback(self, reason: str = "operator rollback", to_version: str | None = None) -> RollbackReport:
        """Serve the previous model-and-gallery pair again: registry (ModelRolledBackEvent), then the
        galleries' rollback (index loaded, Triton swapped, states). Only the previous pair can be
        the target: older galleries were archived by later flips (deploy such a version again)."""
        actions = self.reconcile()
        current, target = self.registry.rollback_target(FACE, to_version)
        previous = [s.model_version for s in self.pairs.in_state("previous")]
        if previous != [target.version]:
            raise ReleaseError(f"face rollback {current.version} -> {target.version}: the galleries keep "
                               f"{previous[0] if previous else 'no'} previous pair; {target.version}'s gallery "
                               "was archived by a later flip")
        event_id = str(uuid.uuid4())
        started = time.monotonic()
        self.registry.rollback(FACE, target.version, reason=reason, event_id=event_id)
        self.pairs.rollback()
        seconds = round(time.monotonic() - started, 3)
        if self.registry.outbox is not None:
            self.registry.outbox.amend_pending(event_id, {"seconds": seconds})
        return RollbackReport(current.version, target.version, seconds, actions)

    def _archive(self, actions: list[str]) -> None:
        """After a release: a failure here only leaves old folders in place (the next one retries)."""
        try:
            live = set(self.pairs.live_versions())
            kept = [mv for mv in self.registry.history(FACE, limit=1_000_000) if mv.status != ARCHIVED]
            archived = []
            for mv in kept[self.keep:]:
                if mv.status in ARCHIVABLE and mv.version not in live:
                    self.registry.set_status(FACE, mv.version, ARCHIVED, f"beyond the newest {self.keep}")
                    archived.append(mv.version)
            moved = self.folders.move_archived(self.registry.history(FACE, limit=1_000_000))
        except Exception as exc:  # noqa: BLE001 - the release itself is done
            actions.append(f"archiving old versions failed ({type(exc).__name__}: {exc}); the next release retries")
            return
        if archived or moved:
            actions.append(f"archived {archived}; folders {moved} moved to {self.folders.archive_dir}")

    def _members(self, version: str) -> int:
        return self.pairs.store.counts().get(version, 0)


def open_release(settings, registry: ModelRegistry | None = None, control=None) -> FaceRelease:
    """The release of these settings: the tier's database, Triton's repository and model control
    (gRPC, with the deploy token), the public name settings.face.model_name."""
    from gymops.db import engine_for
    from gymops.lifecycle.outbox import Outbox
    from gymops.serving.control import ModelControl
    from gymops.settings import ensure_tokens

    engine = engine_for(settings)
    registry = registry or ModelRegistry(engine, outbox=Outbox(engine))
    ss = ensure_tokens(settings).serving
    control = control or ModelControl.for_settings(ss)
    serve = TritonServe(control, registry, settings.face.model_name)
    return FaceRelease(registry, GalleryStore(engine), ss.repository, serve, model_name=settings.face.model_name,
                       archive_dir=ss.triton_home / "archive")

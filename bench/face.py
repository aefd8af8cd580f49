#!/usr/bin/env python
"""Face benchmark (issue 12, item 8), on SYNTHETIC faces (gymops.simulator.faces: cartoon stand-ins;
no figure here says anything about real faces).

1. Nightly fine-tune: gymops.face.train.train_face on ``--identities`` synthetic identities (4 photos
   each; 20% held out by the frozen-holdout rule, never trained on), then the candidate gate
   (gymops.face.gates.face_gate) on the held-out identities: TAR at FAR 1e-3 of the pretrained
   model (before) and of the fine-tuned one (after), each at its own threshold. Both are released
   as production releases them (gymops.face.release.FaceRelease, a registry of this run's own):
   1.0.0 (pretrained, the first version) and 1.1.0 (fine-tuned, a candidate), each with the
   threshold the gate derived for it.
2. Sizing: photo generation and embedding rates are measured first (200 photos); the gallery is
   ``--members`` (default 10,000) unless the estimate exceeds ``--seed-budget-s``, and the JSON says
   what it did. Members are enrolled into 1.0.0's gallery through GalleryStore.enrol (one
   transaction each) with vectors embedded in batches; their photos go to the photo store (files).
3. Search at that size: a probe (another photo of an enrolled member) against the gallery in
   memory, numpy brute force (GalleryIndex, what the matcher runs) and faiss-cpu IndexFlatIP
   (1 thread, exact) when faiss is importable: p50/p99 per probe and the ratio. End to end: verify
   and identify through the FaceMatcher (embedding included), one client.
4. The swap under ``--clients`` (>= 4) concurrent entry clients (verify, no retries): FaceRelease.deploy
   of 1.1.0 (folder, begin, re-index of every member from the stored enrolment photos: faces/s
   under the clients' load, complete, FaceGalleries.flip with Triton's gRPC swap when tritonserver
   runs here, else the in-process serve callable: ``swap_mode`` says which, registry), a hold,
   FaceRelease.rollback, a hold. Failed requests and cross-version comparisons (FaceMatcher counts)
   over the whole run.
5. Enrolments as they arrive: ``--follow`` UserCreatedEvents ingested into Feast (embedded profile),
   then one catch-up of the enrolment follower (gymops.face.enrolments): events/s, each embedded by
   both live versions.

    python -m bench.face              # writes bench/results/face.json
    python -m bench.face --quick      # a smoke run: 600 members, a short fine-tune (writes only with --out)
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.load import Load
from bench.models import RESULTS, MachineMeter, emit, free_port, latency_summary, log, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = RESULTS / "face.json"
STORE_ENROL_PER_S = 240.0  # GalleryStore.enrol on SQLite here (one transaction each), for the estimate
DATA = "SYNTHETIC cartoon faces (gymops.simulator.faces), not real faces"


def _jpeg(user: str, rng) -> bytes:
    from gymops.simulator.faces import face_photo
    from gymops.simulator.garments import encode_jpeg

    return encode_jpeg(face_photo(user, rng), 90)


def _member(i: int) -> str:
    return f"bench-member-{i:05d}"


def fine_tune(work: Path, identities: int, epochs: int | None, seed: int) -> dict:
    """The nightly fine-tune and gate on synthetic identities; both models exported to ONNX."""
    from gymops.face.dataset import build_face_dataset, synthetic_samples
    from gymops.face.gates import FaceGateLimits, face_gate
    from gymops.face.model import export_onnx, load_pretrained
    from gymops.face.train import FaceTrainConfig, train_face

    t0 = time.perf_counter()
    cfg = FaceTrainConfig(seed=seed, **({"max_epochs": epochs} if epochs else {}))
    dataset = build_face_dataset(synthetic_samples(identities, 4, seed), work / "holdout", seed=seed)
    base = load_pretrained()
    result = train_face(dataset, cfg, work / "ckpt", base=base)
    gate = face_gate(result.model, base, holdout=dataset.holdout, limits=FaceGateLimits(far=cfg.far),
                     names=("fine-tuned", "pretrained"), performance=False)
    return {"data": DATA, "identities": identities, "photos_per_identity": 4, "dataset": dataset.summary(),
            "far": cfg.far, "epochs": result.epochs, "best_epoch": result.best_epoch,
            "tar_before": gate.active.tar.value, "tar_after": gate.candidate.tar.value,
            "tar_before_ci": gate.active.tar.interval, "tar_after_ci": gate.candidate.tar.interval,
            "threshold_before": gate.active.threshold, "threshold_after": gate.candidate.threshold,
            "genuine_pairs": gate.genuine_pairs, "impostor_pairs": gate.impostor_pairs, "gate_passed": gate.passed,
            "gate_reasons": gate.reasons, "train_timings": result.timings, "seconds": time.perf_counter() - t0,
            "onnx": {"pretrained": str(export_onnx(base, work / "pretrained.onnx")),
                     "fine_tuned": str(export_onnx(result.model, work / "fine-tuned.onnx"))}}


def rates(embedder, n: int = 200) -> dict:
    t = time.perf_counter()
    photos = [_jpeg(f"bench-rate-{i}", np.random.default_rng(i)) for i in range(n)]
    gen = n / (time.perf_counter() - t)
    embedder.embed(photos[:16])
    t = time.perf_counter()
    embedder.embed(photos)
    return {"photo_gen_per_s": gen, "embed_per_s": n / (time.perf_counter() - t), "photos": n}


def seed_members(store, photos, embedder, version: str, members: int, seed: int, chunk: int = 256) -> dict:
    """Enrol ``members`` synthetic members into ``version``'s gallery (photos into the photo store)."""
    from gymops.face.gallery import Enrolment

    at = datetime(2026, 11, 1, tzinfo=timezone.utc)
    t0, gen_s, embed_s, store_s = time.perf_counter(), 0.0, 0.0, 0.0
    for start in range(0, members, chunk):
        t = time.perf_counter()
        ids = [_member(i) for i in range(start, min(members, start + chunk))]
        blobs = [_jpeg(u, np.random.default_rng([seed, i, 0])) for u, i in zip(ids, range(start, start + chunk))]
        urls = [photos.put(f"faces/{u}/enrol.jpg", b) for u, b in zip(ids, blobs)]
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        vectors, _ = embedder.embed(blobs, batch_size=32)
        embed_s += time.perf_counter() - t
        t = time.perf_counter()
        for u, url, v in zip(ids, urls, vectors):
            store.enrol(Enrolment(u, url, at, "member", "BR-1"), {version: v})
        store_s += time.perf_counter() - t
        if (start // chunk) % 8 == 0:
            log(f"enrolled {start + len(ids)}/{members}")
    return {"seconds": time.perf_counter() - t0, "generate_and_store_photos_s": gen_s, "embed_s": embed_s,
            "gallery_store_s": store_s}


def search_figures(index, probes: np.ndarray, users: list[str]) -> dict:
    """Search alone, per probe: numpy (GalleryIndex) and, when importable, faiss IndexFlatIP (1 thread)."""
    out: dict = {"gallery": len(index), "probes": len(probes)}
    t_id, t_ver, hits = [], [], 0
    for p, u in zip(probes, users):
        t = time.perf_counter()
        best, score = index.best(p)
        t_id.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.similarity(p, u)
        t_ver.append(time.perf_counter() - t)
        hits += best == u and score >= index.threshold
    out["numpy"] = {"identify": latency_summary(t_id), "verify": latency_summary(t_ver)}
    out["identify_correct_rate"] = hits / len(probes)  # the member found, above the threshold (synthetic)
    try:
        import faiss
    except ImportError:
        out["faiss"] = None
        out["faiss_note"] = "faiss not importable here: numpy only"
        return out
    faiss.omp_set_num_threads(1)
    ids, _, matrix = index._snap  # the same vectors the matcher searches
    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(np.ascontiguousarray(matrix))
    t_f, agree = [], 0
    for p in probes:
        q = np.ascontiguousarray(p.reshape(1, -1), np.float32)
        t = time.perf_counter()
        _, found = flat.search(q, 1)
        t_f.append(time.perf_counter() - t)
        agree += ids[int(found[0, 0])] == index.best(p)[0]
    out["faiss"] = {"identify": latency_summary(t_f), "version": faiss.__version__, "threads": 1,
                    "same_answer_rate": agree / len(probes)}
    out["faiss_over_numpy_p50"] = out["faiss"]["identify"]["p50_ms"] / out["numpy"]["identify"]["p50_ms"]
    out["faiss_over_numpy_p99"] = out["faiss"]["identify"]["p99_ms"] / out["numpy"]["identify"]["p99_ms"]
    return out


class Clients(Load):
    """``n`` entry clients verifying (probe photo, member) back to back through the matcher, no
    retries (bench.load.Load's threads and stop). A record: (sent, answered, version, match, error)."""

    def __init__(self, matcher, probes: list[tuple[str, bytes]], n: int):
        super().__init__({}, b"", protocols=tuple(range(n)))  # one thread per client number
        self.matcher, self.probes = matcher, probes

    def _run(self, k: int) -> None:
        rng = np.random.default_rng(1000 + k)
        while not self._stop.is_set():
            user, photo = self.probes[int(rng.integers(len(self.probes)))]
            t = time.perf_counter()
            try:
                r = self.matcher.verify(photo, user)
                record = (t, time.perf_counter(), r.model_version, r.match, None)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                record = (t, time.perf_counter(), None, False, repr(exc)[:200])
            with self._lock:
                self.records.append(record)

    def window(self, lo: float, hi: float) -> dict:
        rows = [r for r in self.records if lo <= r[0] < hi]
        ok = [r for r in rows if r[4] is None]
        versions = sorted({r[2] for r in ok})
        return {"requests": len(rows), "failed": len(rows) - len(ok), "versions": versions,
                "latency": latency_summary([r[1] - r[0] for r in ok]),
                "match_rate": {v: sum(r[3] for r in ok if r[2] == v) / max(1, sum(r[2] == v for r in ok))
                               for v in versions}}


def follow_enrolments(settings, pairs, photos, n: int, seed: int) -> dict:
    """``n`` UserCreatedEvents through ingestion into Feast, then one catch-up of the follower."""
    from gymops.face.enrolments import EnrolmentFollower
    from gymops.history import feature_store
    from gymops.ingest.replicator import Replicator

    t = time.perf_counter()
    feature_store.apply(settings)
    replicator = Replicator(settings)
    setup_s = time.perf_counter() - t
    now = datetime.now(timezone.utc)
    events = [{"eventType": "UserCreatedEvent", "eventId": f"bench-{uuid.uuid4()}", "userId": f"bench-new-{i:05d}",
               "role": "member", "branchId": "BR-1", "timestamp": now.isoformat(),
               "facePhotoUrl": photos.put(f"faces/bench-new-{i:05d}/enrol.jpg",
                                          _jpeg(f"bench-new-{i:05d}", np.random.default_rng([seed, 10**6 + i])))}
              for i in range(n)]
    t = time.perf_counter()
    stored = replicator.ingest([json.dumps(e) for e in events], "bench").summary()["stored"]
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    report = EnrolmentFollower(settings, pairs).catch_up()
    follow_s = time.perf_counter() - t
    return {"events": n, "stored": stored, "ingest_s": ingest_s, "feast_setup_s": setup_s,
            "follower_s": follow_s, "enrolled": report.enrolled, "rejected": len(report.rejected),
            "live_versions": pairs.live_versions(), "per_s": report.enrolled / follow_s if follow_s else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="600 members, 120 identities, 3 epochs: a smoke run")
    ap.add_argument("--members", type=int, help="members enrolled (default 10000, quick 600)")
    ap.add_argument("--seed-budget-s", type=float, default=900.0,
                    help="fewer members when the measured rates say seeding would take longer")
    ap.add_argument("--identities", type=int, help="synthetic identities of the fine-tune (default 300, quick 120)")
    ap.add_argument("--epochs", type=int, help="fine-tune epochs (default the training's own, quick 3)")
    ap.add_argument("--probes", type=int, help="probe photos of enrolled members (default 1000, quick 200)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent entry (verify) clients")
    ap.add_argument("--hold", type=float, help="seconds of traffic before/after each swap (default 5, quick 2)")
    ap.add_argument("--follow", type=int, help="enrolments through ingestion and the follower (default 200, quick 20)")
    ap.add_argument("--serving", choices=("auto", "triton", "local"), default="auto",
                    help="auto: Triton when tritonserver runs here, else the in-process serve callable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this long for other work to stop first")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    q = args.quick
    members_wanted = args.members or (600 if q else 10_000)
    identities, epochs = args.identities or (120 if q else 300), args.epochs or (3 if q else None)
    n_probes, hold, n_follow = args.probes or (200 if q else 1000), args.hold or (2.0 if q else 5.0), args.follow or (20 if q else 200)
    out = args.out or (None if q else DEFAULT_OUT)
    if args.clients < 1:
        ap.error("--clients: at least 1")

    quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet else None
    meter = MachineMeter()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gymops-bench-face-"))
    server = None
    figures: dict = {"data": DATA, "quick": q, "other_cores_busy_at_start": quiet}
    try:
        from gymops.db import engine_for
        from gymops.face.gallery import GalleryStore
        from gymops.face.matching import FaceMatcher
        from gymops.face.release import ARCHITECTURE, FACE, FaceRelease, TritonServe
        from gymops.face.service import LocalServing
        from gymops.lifecycle.registry import ModelRegistry
        from gymops.settings import PROJECT_ROOT, Settings
        from gymops.storage.photos import photo_store_for

        repo = work / "repo"
        (repo / "face").mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
        settings = Settings(profile="embedded", home=work / "home").replace(serving={
            "repository": repo, "deploy_token": secrets.token_urlsafe(24), "http_port": free_port(),
            "grpc_port": free_port(), "metrics_port": free_port()})

        log(f"fine-tune on {identities} synthetic identities")
        tune = fine_tune(work, identities, epochs, args.seed)
        figures["fine_tune"] = {k: v for k, v in tune.items() if k != "onnx"}
        figures["tar_at_far_before"], figures["tar_at_far_after"] = tune["tar_before"], tune["tar_after"]
        figures["far"] = tune["far"]
        log(f"TAR at FAR {tune['far']}: {tune['tar_before']:.3f} -> {tune['tar_after']:.3f}")

        mode = args.serving
        if mode == "auto":
            from gymops.serving.server import TritonUnavailable, check_runnable
            from gymops.serving.stubenv import ensure_stub_site

            try:
                check_runnable()
                ensure_stub_site()
                mode = "triton"
            except (TritonUnavailable, RuntimeError) as exc:
                log(f"tritonserver cannot run here ({exc}): the in-process serve callable")
                mode = "local"
        engine = engine_for(settings)
        registry, store, photos = ModelRegistry(engine), GalleryStore(engine), photo_store_for(settings)
        release = None
        if mode == "triton":
            from gymops.face.matching import TritonEmbedder
            from gymops.serving.control import ModelControl
            from gymops.serving.server import TritonServer

            server = TritonServer.from_settings(settings.serving).start()
            serving = TritonServe(ModelControl.for_server(server), registry, "face")
            embedder = TritonEmbedder(settings.serving.grpc_url, "grpc", "face")
        else:
            serving = embedder = LocalServing(lambda version: release.embedder(version))
        swap_seconds: list[float] = []

        def serve(version: str) -> None:
            t = time.perf_counter()
            (serving.serve if mode == "local" else serving)(version)
            swap_seconds.append(time.perf_counter() - t)

        matcher = FaceMatcher(embedder)
        release = FaceRelease(registry, store, repo, serve, matcher, "face")
        t = time.perf_counter()
        first, _ = release.ensure_first(Path(tune["onnx"]["pretrained"]), tune["threshold_before"],
                                        {"source": "pretrained", "bench": "face"})
        figures["first_version_s"] = time.perf_counter() - t  # registered, folder, gallery, first swap
        figures["swap_mode"] = "triton gRPC model control (gymops.face.release.TritonServe)" if mode == "triton" \
            else "in-process serve callable (gymops.face.service.LocalServing)"

        v1 = release.embedder(first.version)
        r = rates(v1)
        per_member = 1 / r["photo_gen_per_s"] + 1 / r["embed_per_s"] + 1 / STORE_ENROL_PER_S
        members = min(members_wanted, int(args.seed_budget_s / per_member))
        figures["sizing"] = {**r, "store_enrol_per_s_assumed": STORE_ENROL_PER_S, "members_requested": members_wanted,
                             "seed_estimate_s": members_wanted * per_member, "seed_budget_s": args.seed_budget_s,
                             "members": members, "cut_by_budget": members < members_wanted}
        log(f"rates: {r['photo_gen_per_s']:.0f} photos/s, {r['embed_per_s']:.0f} embeddings/s: {members} members "
            f"(~{members * per_member:.0f} s)")
        figures["seeding"] = seed_members(store, photos, v1, first.version, members, args.seed)
        figures["members"] = members
        t = time.perf_counter()
        release.pairs.recover()  # the active gallery loaded whole, as a (re)started service loads it
        figures["gallery_load_s"] = time.perf_counter() - t
        picks = np.random.default_rng(args.seed).choice(members, size=min(n_probes, members), replace=False)
        probes = [(_member(int(i)), _jpeg(_member(int(i)), np.random.default_rng([args.seed, int(i), 1]))) for i in picks]
        candidate = registry.register_candidate(FACE, ARCHITECTURE, {"source": "fine-tuned", "bench": "face"},
                                                tune["dataset"]["dataset_id"], "bench-face", tune["onnx"]["fine_tuned"])
        versions = (first.version, candidate.version)

        log("search at gallery size")
        release.write_folder(candidate, tune["threshold_after"])  # deploy would write it: the probes' vectors first
        probe_vectors = {v: release.embedder(v).embed([p for _, p in probes])[0] for v in versions}
        figures["search"] = {first.version: search_figures(matcher.loaded(first.version), probe_vectors[first.version],
                                                           [u for u, _ in probes])}
        e2e_v, e2e_i = [], []
        for user, photo in probes[:200]:
            t = time.perf_counter()
            matcher.verify(photo, user)
            e2e_v.append(time.perf_counter() - t)
            t = time.perf_counter()
            matcher.identify(photo)
            e2e_i.append(time.perf_counter() - t)
        figures["end_to_end_one_client"] = {"verify": latency_summary(e2e_v), "identify": latency_summary(e2e_i)}
        for name, values in (("verify", e2e_v), ("identify", e2e_i)):
            summary = latency_summary(values)
            figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = summary["p50_ms"], summary["p99_ms"]
        figures["search_identify_p99_ms_numpy"] = figures["search"][first.version]["numpy"]["identify"]["p99_ms"]

        log(f"deploy and rollback under {args.clients} entry clients")
        marks: dict[str, float] = {}

        def on_step(name: str, seconds: float) -> None:
            marks[f"{name}_end"] = time.perf_counter()
            marks[f"{name}_start"] = marks[f"{name}_end"] - seconds

        with Clients(matcher, probes, args.clients) as clients:
            time.sleep(hold)
            marks["deploy"] = time.perf_counter()
            deployed = release.deploy(candidate.version, tune["threshold_after"], photos.get, on_step=on_step,
                                      batch_size=64)
            marks["deployed"] = time.perf_counter()
            time.sleep(hold)
            marks["rollback"] = time.perf_counter()
            back = release.rollback("bench: rollback under load")
            marks["rolled_back"] = time.perf_counter()
            time.sleep(hold)
            marks["end"] = time.perf_counter()
        reindex_s = deployed.steps["reindex"]
        figures["reindex_faces"] = deployed.reindexed
        figures["reindex_s"] = reindex_s
        figures["reindex_faces_per_s"] = deployed.reindexed / reindex_s
        figures["deploy_steps_s"] = deployed.steps
        figures["flip_s"] = deployed.steps["flip"]
        figures["rollback_s"] = back.seconds
        figures["serve_calls_s"] = swap_seconds  # every serve call: the first version, restarts (no-ops), flip, rollback
        figures["search"][candidate.version] = search_figures(matcher.loaded(candidate.version),
                                                              probe_vectors[candidate.version], [u for u, _ in probes])
        start = min(r[0] for r in clients.records) if clients.records else marks["deploy"]
        figures["traffic"] = {
            "clients": args.clients,
            "whole_run": clients.window(start, marks["end"] + 60),
            "steady_before": clients.window(start, marks["deploy"]),
            "during_reindex": clients.window(marks["reindex_start"], marks["reindex_end"]),
            "around_flip": clients.window(marks["flip_start"] - 1, marks["flip_end"] + 1),
            "after_flip": clients.window(marks["flip_end"], marks["rollback"]),
            "around_rollback": clients.window(marks["rollback"] - 1, marks["rolled_back"] + 1),
            "after_rollback": clients.window(marks["rolled_back"], marks["end"] + 60),
            "errors": sorted({r[4] for r in clients.records if r[4]})[:5],
        }
        figures["failed"] = figures["traffic"]["whole_run"]["failed"]
        figures["requests"] = figures["traffic"]["whole_run"]["requests"]
        figures["cross_version_comparisons"] = matcher.cross_version
        figures["comparisons_by_version"] = dict(matcher.comparisons)
        figures["active_after"] = back.to_version
        figures["registry_active_after"] = registry.active(FACE).version

        log(f"{n_follow} enrolments through ingestion and the follower")
        figures["enrol_follower"] = follow_enrolments(settings, release.pairs, photos, n_follow, args.seed)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures["seconds"] = time.perf_counter() - started
    figures["machine"] = meter.report()
    emit(figures, out)
    return 0 if figures.get("failed") == 0 and figures.get("cross_version_comparisons") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

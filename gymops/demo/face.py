"""`make demo`, the face act (issue 12 item 9): members enrol, entries flow, and the nightly face batch
retrains, re-indexes and swaps under entry traffic. SYNTHETIC faces (gymops.simulator.faces: cartoon
stand-ins; no figure here says anything about real faces).

1. members: the Auth service's UserCreatedEvents (one enrolment photo each, the morning of gym day
   D1) and the FaceAuthenticatedEvents of their entries from that afternoon to the evening of D2
   (~3 a member, a third of them on D1), sent through the demo's ingestion endpoint into Feast;
2. night D1: the Dagster job face_nightly (assets/jobs.run_face_nightly, the schedule's run for
   that gym day). No face version serves yet, so the pretrained descriptor is released as 1.0.0
   (threshold from its own impostor scores on the holdout; provisional while the holdout cannot
   resolve the design FAR). The fine-tuned candidate is gated against it at the design FAR; after
   one day the holdout's ~2,000 impostor pairs cannot measure FAR 1e-3 (3,000 needed), so the
   blocking gate rejects it: 1.0.0 keeps serving. (Had it passed, it would be swapped in with an
   empty gallery: nobody can enrol before a gallery is live.)
3. the enrolment follower (gymops.face.enrolments, as `gymops face serve` runs it) enrols every
   member in the history into the live gallery;
4. night D2, under entry traffic: the window's samples (D1 and D2), a new candidate fine-tuned,
   gated against 1.0.0 on the grown holdout, every enrolled member re-embedded into the candidate's
   gallery, then the flip (Triton's gRPC swap of the public name "face"), while entry clients keep
   verifying members through the Access service's matcher (TritonEmbedder + the galleries loaded
   from the database, its sync loop beside it: `gymops face serve` without the HTTP/gRPC front);
5. what happened: members enrolled, the gate's TAR at FAR before/after on the held-out identities
   with its n, the verdict, re-index and flip seconds, entry requests / failed / cross-version
   comparisons, and every member verified again with the new version.

Production rules throughout: the gate's FAR, margin and limits are settings.face's (the design's);
the dataset's split rules and the training configuration are production's. Only the size is the
demo's: 156 people with ~4 photos each over two nights (the act took 69 s of a 391 s `make demo` on
2 shared cores). Entry probes are the members' enrolment photos, so every answer must be a match:
the traffic checks consistency (which model and which gallery answered), the gate's figures are the
accuracy.
"""
from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timedelta
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class FaceActConfig:
    members: int = 150  # + 2 helpers per branch: every one enrols
    entries_per_user: float = 3.0  # entries (D1 afternoon .. D2 evening): ~4 photos a person in all
    branches: int = 3
    # user ids m17-..., h17-...: apart from the laundry acts' simulated users. The seed fixes who is
    # held out (a hash of the id) and when each entry falls: with it, D1's holdout has 25 identities,
    # 64 photos, 1,945 impostor pairs (the first version's provisional threshold, no candidate judged
    # at 1e-3), the window D1..D2's 115 photos 262 genuine / 6,293 impostor pairs (judged at 1e-3).
    # Measured on a tier of this act alone; in `make demo` the laundry acts' simulated members add a
    # few (26 identities, 2,009 impostor pairs on D1; 27, 263 / 6,640 over the window).
    seed: int = 17
    start_hour: int = 6  # enrolments from this hour of D1 (gym time), in the first fifth of the span
    span_hours: int = 36  # entries after them, until start + span (at most D2's end)
    epochs: int | None = None  # None: production's (FaceTrainConfig: 10, early stopping after 3 without gain)
    dataset: dict | None = None  # FaceDatasetConfig overrides (default: production's)
    clients: int = 3  # entry clients verifying members during night D2
    pause_s: float = 0.05  # between one client's requests (leaves the cores to the batch)


def say_default(line: str) -> None:
    print(line, flush=True)


def gym_nights(now: datetime | None = None) -> tuple[date, date]:
    """The two last finished gym days (Asia/Seoul): D1, D2 (the face partitions end yesterday)."""
    from assets.partitions import GYM_TIMEZONE

    today = (now or datetime.now(ZoneInfo(GYM_TIMEZONE))).astimezone(ZoneInfo(GYM_TIMEZONE)).date()
    return today - timedelta(days=2), today - timedelta(days=1)


def member_events(store, cfg: FaceActConfig, d1: date) -> list[dict]:
    """Enrolments from ``start_hour`` on D1 (gym time; the first fifth of the span), entries after them
    until ``span_hours`` later (the default: 06:00-13:12 on D1, entries until 18:00 on D2)."""
    from assets.partitions import GYM_TIMEZONE
    from gymops.simulator.traffic import TrafficConfig, generate

    users = cfg.members + 2 * cfg.branches
    start = datetime.combine(d1, dtime(cfg.start_hour, 0), tzinfo=ZoneInfo(GYM_TIMEZONE))
    if cfg.start_hour + cfg.span_hours > 48:
        raise ValueError(f"start_hour + span_hours: {cfg.start_hour} + {cfg.span_hours} ends after D2")
    traffic = TrafficConfig(seed=cfg.seed, tasks=0, members=cfg.members, entries=round(cfg.entries_per_user * users),
                            branches=cfg.branches, start=start, span=timedelta(hours=cfg.span_hours))
    return list(generate(store, traffic))


class EntryClients:
    """Entry terminals: threads verifying members (their enrolment photo) through the matcher, each
    answer recorded with its version and time; an exception is a failed entry, a non-match a
    rejected one (with the member's own enrolment photo it must not happen)."""

    def __init__(self, matcher, probes: dict[str, bytes], threads: int = 3, pause_s: float = 0.05):
        self.matcher, self.probes, self.pause_s = matcher, probes, pause_s
        self.users = sorted(probes)
        self.answers: list[tuple[float, str]] = []  # (monotonic, model version)
        self.failures: list[str] = []
        self.rejected: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        while not self.stop_flag.is_set():
            user = rng.choice(self.users)
            try:
                v = self.matcher.verify(self.probes[user], user)
                with self.lock:
                    self.answers.append((time.monotonic(), v.model_version))
                    if not v.match:
                        self.rejected.append((user, v.model_version))
            except Exception as exc:  # noqa: BLE001 -- counted: every failure is reported
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            self.stop_flag.wait(self.pause_s)

    @property
    def requests(self) -> int:
        return len(self.answers) + len(self.failures)

    def versions(self) -> dict[str, int]:
        return dict(Counter(v for _, v in self.answers))

    def switch(self, old: str, new: str) -> float | None:
        """Seconds from the first answer by ``new`` to the last by ``old`` (positive: both answered for
        a while, each from its own gallery, as Triton's swap drains the old version's requests)."""
        last_old = max((t for t, v in self.answers if v == old), default=None)
        first_new = min((t for t, v in self.answers if v == new), default=None)
        if last_old is None or first_new is None:
            return None
        return round(last_old - first_new, 3)

    def __enter__(self) -> "EntryClients":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def _orphans_aside(settings, registry, say) -> None:
    """Numbered face folders in Triton's repository that this tier's registry does not know (an
    earlier demo's, before `make clean`): moved aside into the archive, since FaceRelease never
    rewrites a version folder and the fresh registry numbers its versions from 1 again."""
    from gymops.deploy.folders import VersionFolders, move_folder
    from gymops.face.release import FACE

    ss = settings.serving
    folders = VersionFolders(ss.repository, settings.face.model_name, ss.triton_home / "archive")
    known = {mv.triton_version for mv in registry.history(FACE, limit=1_000_000)}
    for n in folders.orphans(known):
        aside = folders.archive_dir / settings.face.model_name / f".orphan-{n}-{uuid.uuid4().hex[:8]}"
        move_folder(folders.folder(n), aside)
        say(f"   {folders.folder(n)}: a face version folder this registry does not know (an earlier run's), "
            f"moved aside to {aside}")


def _deploy_steps(markdown: str) -> dict[str, float]:
    """face_deployed's "steps" metadata (a markdown table of seconds per release step) as a dict."""
    out = {}
    for line in (markdown or "").splitlines():
        m = re.match(r"^\|\s*([a-z_]+)\s*\|\s*([0-9.]+)\s*\|$", line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _night(settings, instance, night: str, run_config: dict, tags: dict) -> dict:
    """face_nightly for one gym night, and what it did (from its events and the registry)."""
    from assets import jobs as runs

    t0 = time.monotonic()
    result = runs.run_face_nightly(settings, instance, night, run_config=run_config, tags=tags)
    checks = runs.check_results(result)
    gate = checks.get("face_gate")
    return {
        "night": night, "run_id": result.run_id, "success": result.success, "seconds": round(time.monotonic() - t0, 1),
        "steps": runs.step_seconds(instance, result.run_id),
        "samples": runs.metadata(result, "face_samples_daily"), "dataset": runs.metadata(result, "face_dataset"),
        "checkpoint": runs.metadata(result, "face_checkpoint"), "candidate": runs.metadata(result, "face_candidate"),
        "gate_passed": gate.passed if gate else None,
        "gate": {k: v.value for k, v in gate.metadata.items()} if gate else {},
        "deployed": runs.metadata(result, "face_deployed"),
    }


def _say_night(n: dict, registry, design_far: float, say) -> None:
    from gymops.face.release import FACE

    s, d, c, k = n["samples"], n["dataset"], n["checkpoint"], n["candidate"]
    say(f"   run {n['run_id'][:8]} {'succeeded' if n['success'] else 'did not succeed'} in {n['seconds']:.0f} s; "
        f"seconds per step {n['steps']}")
    if s:
        say(f"   face_samples_daily {n['night']}: {s.get('samples', '?')} samples of {s.get('members', '?')} members "
            f"({s.get('enrolments', '?')} enrolments, {s.get('entries', '?')} entries)")
    if d:
        cand = registry.get(FACE, k["version"]) if k else None
        ds = cand.metrics.get("dataset", {}) if cand else {}
        split = (f"train {ds['train_photos']} photos / {ds['train_identities']} identities, val "
                 f"{ds['val_photos']} / {ds['val_identities']}, holdout {ds['holdout_photos']} / "
                 f"{ds['holdout_identities']} (version {ds['holdout_version']})") if ds else "split: see the run"
        say(f"   face_dataset: nights {d.get('nights')}, {d.get('samples')} samples of {d.get('identities')} "
            f"identities; {split}")
    if c:
        say(f"   face_checkpoint: {c['epochs']} epochs (best {c['best_epoch']}) in {c['train_s']:.0f} s, frozen-part "
            f"features {c['features_s']:.0f} s ({c['feature_cache_misses']} photos extracted, "
            f"{c['feature_cache_hits']} from the cache); validation TAR {c['val_tar_before']:.3f} -> {c['val_tar']:.3f}")
    if k:
        first = registry.get(FACE, k["active_version"])
        if k.get("first_version_now"):
            h = first.metrics.get("holdout", {})
            provisional = h.get("far", 0) > design_far * (1 + 1e-9)
            say(f"   face_candidate: no face version served yet -> {first.version} = the pretrained descriptor, served "
                f"(Triton version {first.triton_version}), threshold {h.get('threshold', float('nan')):.4f} from "
                f"{h.get('impostor_pairs', 0):,} impostor pairs at FAR {h.get('far', float('nan')):.2g}"
                + (" (PROVISIONAL: the holdout cannot resolve the design FAR yet)" if provisional else "")
                + "; its gallery is live (empty)")
        say(f"   face_candidate: fine-tuned {k['version']} registered (validation TAR {k['val_tar']:.3f}, ONNX vs "
            f"PyTorch max |diff| {k['onnx_max_abs_diff']:.1e})")


def _say_gate(n: dict, say) -> None:
    g = n["gate"]
    if n["gate_passed"] is None:
        say("   face_gate: not evaluated (an earlier step failed)")
        return
    verdict = "PASSED" if n["gate_passed"] else ("FAILED (blocking: the candidate is rejected and nothing that serves "
                                                 "changes; the run's failure in Dagster's log above is this)")
    if "tar_candidate" not in g:
        say(f"   face_gate {verdict}: {str(g.get('reasons', '')).lstrip('- ')}")
        return
    say(f"   face_gate {verdict}, against {g['against']} on the frozen holdout (version {g['holdout_version']}): "
        f"{g['identities']} held-out identities, {g['genuine_pairs']} genuine / {g['impostor_pairs']:,} impostor pairs")
    if not n["gate_passed"]:
        say(f"      reasons: {str(g.get('reasons', '')).lstrip('- ')}")


def run(settings, instance, ingest_url: str, ingest_token: str, cfg: FaceActConfig = FaceActConfig(),
        say: Callable[[str], None] = say_default, now: datetime | None = None) -> dict:
    """The act on ``settings``' tier: Triton serving ``settings.serving`` must be up (the face model's
    folder in its repository), the ingestion endpoint at ``ingest_url``; ``instance`` the Dagster
    instance. Returns what happened (also printed through ``say``); leaves nothing running."""
    from assets.jobs import face_run_config
    from gymops.face import assets
    from gymops.face.enrolments import EnrolmentFollower
    from gymops.face.release import FACE
    from gymops.face.service import GallerySync, SyncLoop, face_parts
    from gymops.simulator.send import HttpSender
    from gymops.storage.photos import photo_store_for

    began = time.monotonic()
    fs = settings.face
    if not (Path(fs.assets_dir) / "face-api" / assets.WEIGHTS_FILE).is_file():
        say(f"   face act skipped: the pretrained face weights are absent from {fs.assets_dir} ({assets.BOOTSTRAP_HINT})")
        return {"skipped": "face weights absent"}
    store = photo_store_for(settings)
    parts = face_parts(settings, probes=True)  # the Access service's: matcher by Triton, galleries from the DB
    registry = parts.release.registry
    out: dict = {"members": cfg.members}
    try:
        served = registry.active(FACE)
        if served is not None:
            say(f"   face {served.version} is active already: this tier has run the face act before (its members "
                "are stored, their events would be duplicates); the act shows a fresh tier's first two nights: "
                "`make clean` and `make demo` to see it again")
            out.update(skipped="a face version is active already", active=served.version)
            return out
        _orphans_aside(settings, registry, say)
        d1, d2 = gym_nights(now)
        t0 = time.monotonic()
        events = member_events(store, cfg, d1)
        kinds = Counter(e["eventType"] for e in events)
        sent = HttpSender(ingest_url, ingest_token, batch=100).send(events)
        say(f"   {kinds['UserCreatedEvent']} UserCreatedEvents (an enrolment photo each, the morning of {d1}) and "
            f"{kinds['FaceAuthenticatedEvent']} FaceAuthenticatedEvents (entries until the evening of {d2}, gym time) "
            f"through the ingestion endpoint into Feast in {time.monotonic() - t0:.1f} s: stored {sent['stored']}, "
            f"duplicates {sent['duplicates']}, dead-lettered {len(sent['deadLettered'])}")

        training = {} if cfg.epochs is None else {"max_epochs": cfg.epochs, "patience": min(3, cfg.epochs)}
        run_config = face_run_config(cfg.dataset or {}, training)
        say(f"   gate (settings.face): TAR at FAR {fs.gate_far:g} non-inferior to the active version (margin "
            f"{fs.gate_margin:g}, one-sided 95%, paired), latency <= {fs.gate_latency_ms:g} ms/photo, peak memory <= "
            f"{fs.gate_memory_mb:g} MB; training: "
            + ("production's configuration" if cfg.epochs is None else f"{cfg.epochs} epochs (production 10)"))

        say(f"\n== face night {d1} (Dagster face_nightly, gym day {d1}): no face version serves yet")
        first = _night(settings, instance, d1.isoformat(), run_config, {"gymops/trigger": "demo: face night 1"})
        _say_night(first, registry, fs.gate_far, say)
        _say_gate(first, say)
        nights = [first]
        if first["deployed"]:
            say(f"   face_deployed: {first['deployed']['version']} active with {first['deployed']['members']} "
                "members (nobody could enrol before a gallery was live)")
        before = registry.active(FACE)
        if before is None:
            say("   no face version serves after the first night (see above): the face act stops here")
            out.update(nights=nights, active=None, seconds=round(time.monotonic() - began, 1))
            return out
        say(f"   serving: face {before.version} (Triton version {before.triton_version})")

        say(f"\n== enrolment: the follower reads the UserCreatedEvents Feast holds and enrols each member into every "
            f"live gallery ({', '.join(parts.pairs.live_versions())})")
        follower = EnrolmentFollower(settings, parts.pairs)
        t0 = time.monotonic()
        enrolled = follower.catch_up()
        sync = GallerySync(parts.pairs)
        sync.once()
        members = parts.pairs.store.active_enrolments()
        others = len(members) - cfg.members - 2 * cfg.branches
        say(f"   {enrolled.enrolled} enrolled ({enrolled.unchanged} unchanged, {len(enrolled.rejected)} rejected) in "
            f"{time.monotonic() - t0:.1f} s: {len(members)} members in {before.version}'s gallery"
            + (f" (this act's {cfg.members + 2 * cfg.branches}, and {others} staff and members the laundry acts' "
               "simulator enrolled)" if others > 0 else ""))
        probes = {m.user_id: store.get(m.photo_url) for m in members}
        out.update(enrolled=len(members), enrolled_now=enrolled.enrolled)

        say(f"\n== face night {d2} under entry traffic: {cfg.clients} entry clients verify members through the Access "
            f"service's matcher (Triton embeds, the galleries come from the database; its sync loop runs beside) "
            f"while face_nightly retrains, gates, re-indexes and swaps")
        loop = SyncLoop(fs.sync_interval_s, follower, sync).start()
        try:
            with EntryClients(parts.matcher, probes, cfg.clients, cfg.pause_s) as clients:
                time.sleep(1.0)
                second = _night(settings, instance, d2.isoformat(), run_config,
                                {"gymops/trigger": "demo: face night 2"})
                time.sleep(1.5)  # entries after the flip: the new pair alone
        finally:
            loop.stop()
        nights.append(second)
        _say_night(second, registry, fs.gate_far, say)
        _say_gate(second, say)
        after = registry.active(FACE)
        dep = second["deployed"]
        steps = _deploy_steps(str(dep.get("steps", ""))) if dep else {}
        handover = clients.switch(before.version, after.version)
        g = second["gate"]
        if dep:
            say(f"   face_deployed: {dep['version']} active (Triton version {dep['triton_version']}), previous "
                f"{dep['previous_version']} kept for rollback; re-indexed {dep['reindexed']} members in "
                f"{steps.get('reindex', float('nan')):.2f} s, flip {steps.get('flip', float('nan')):.2f} s "
                f"(candidate gallery loaded, Triton's gRPC swap, pair states), release {dep['deploy_seconds']:.2f} s")

        step_result = {"requests": clients.requests, "failed": len(clients.failures), "rejected": len(clients.rejected),
                       "cross_version": parts.matcher.cross_version, "versions": clients.versions()}
        # every member again, with whatever serves now
        answers = [parts.matcher.verify(probes[u], u) for u in sorted(probes)]
        verified = sum(a.match for a in answers)
        by = dict(Counter(a.model_version for a in answers))

        say("\n== face result (SYNTHETIC faces: cartoon stand-ins, no figure says anything about real faces)")
        say(f"   members enrolled: {len(members)}")
        if "tar_candidate" in g:
            mv = registry.get(FACE, second["candidate"]["version"])
            gate = mv.metrics.get("gate") or {}
            tc, ta = gate.get("candidate", {}).get("tar", {}), gate.get("active", {}).get("tar", {})
            say(f"   TAR at FAR {g['far']:g} on {g['identities']} held-out identities ({g['genuine_pairs']} genuine / "
                f"{g['impostor_pairs']:,} impostor pairs): {g['against']} {g['tar_active']:.3f}"
                + (f" [{ta['ci_low']:.2f}, {ta['ci_high']:.2f}]" if ta else "")
                + f" -> {mv.version} {g['tar_candidate']:.3f}"
                + (f" [{tc['ci_low']:.2f}, {tc['ci_high']:.2f}]" if tc else "")
                + f"; difference {g['tar_difference']:+.3f}, one-sided 95% lower bound {g['difference_ci_low']:+.3f} "
                  f"vs margin -{g['margin']:g} ({g['discordant']}, McNemar p {g['mcnemar_p']:.2g}); thresholds "
                  f"{g['threshold_active']:.4f} -> {g['threshold_candidate']:.4f}")
            out.update(tar_before=g["tar_active"], tar_after=g["tar_candidate"], genuine_pairs=g["genuine_pairs"],
                       impostor_pairs=g["impostor_pairs"], far=g["far"])
        say(f"   gate verdict: {second['candidate'].get('version', '?')} "
            f"{'PASSED' if second['gate_passed'] else 'FAILED'} against {g.get('against', '?')}"
            + (f" on n = {g['genuine_pairs']} genuine pairs" if "genuine_pairs" in g else ""))
        if dep:
            if handover is None:
                seen = ""
            elif handover > 0:
                seen = (f"; the entry clients got answers from both for {handover:.2f} s (Triton drains the old "
                        "version's requests), each probe matched in the gallery of the version that embedded it")
            else:
                seen = (f"; the entry clients' answers went from {before.version} to {after.version} with no overlap "
                        f"({-handover:.2f} s between the last of one and the first of the other)")
            say(f"   re-index: {dep['reindexed']} members in {steps.get('reindex', float('nan')):.2f} s; flip "
                f"{steps.get('flip', float('nan')):.2f} s{seen}")
        say(f"   entries during night {d2}'s run: {step_result['requests']} requests, failed {step_result['failed']}, "
            f"rejected {step_result['rejected']}, cross-version comparisons {step_result['cross_version']}; answered "
            f"by version {step_result['versions']}")
        say(f"   registry: face {after.version} active, previous {after.previous_version}; every member verified "
            f"again: {verified}/{len(answers)} matched, by version {by}")
        for f in clients.failures[:3]:
            say(f"      failed entry: {f[:160]}")
        out.update(step_result, nights=nights, before=before.version, active=after.version,
                   swapped=after.version != before.version, reindexed=dep.get("reindexed") if dep else None,
                   reindex_s=steps.get("reindex"), flip_s=steps.get("flip"), handover_s=handover,
                   gate_passed=second["gate_passed"], verified=verified, verified_by=by,
                   seconds=round(time.monotonic() - began, 1))
        say(f"   face act: {out['seconds']:.0f} s")
        return out
    finally:
        control = getattr(parts.pairs.serve, "control", None)
        if control is not None:
            control.close()

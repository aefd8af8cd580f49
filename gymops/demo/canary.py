"""`make demo`, last act (issue 11 item 8): a deliberately faulty candidate goes to canary behind the
served model and the watcher rolls it back on its own; the demo prints what the watcher saw and when
it acted.

Why this candidate: the served model's own ONNX with a broken tail -- its probabilities plus
sqrt(-sum|image|), which is 0 for the all-zero warm-up input (so it loads: model.py checks warm-up
outputs are finite) and NaN for every real photo. That is the classic broken export that passes a
load check and fails in production: the served model.py answers such a request with an error
and counts it per model_version (Triton itself would count it a success, server #7713), and the
watcher's errors signal (exact binomial test against the active's rate + 1 %, alpha 0.001) fails
after a handful of canary requests. It needs no label, so it acts within seconds; the other
signals (latency, mix, live accuracy by SPRT) are printed as the watcher saw them.

Production parts throughout: the registry (candidate -> canary -> rolled_back), Deployer.start_canary
(route folder, one zero-failure swap), the Watcher with the profile's DeliverySettings and signals
source, the board the Dagster UI shows (gymops.serving.live), ModelRolledBackEvent in the outbox.
Only the traffic is the demo's: a few gRPC clients (the Helper app) whose failures are split into
the candidate's own (its version is in the error) and the stable version's (must be 0).
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path


def faulty_copy(source: Path, target: Path) -> Path:
    """``source`` ONNX with NaN probabilities for any non-zero image (finite on the zero warm-up)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    graph = model.graph
    output = graph.output[0].name
    image = graph.input[0].name
    raw = output + "_before_fault"
    for node in graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
        node.input[:] = [raw if i == output else i for i in node.input]
    graph.node.extend([
        helper.make_node("Abs", [image], ["fault_abs"]),
        helper.make_node("ReduceSum", ["fault_abs"], ["fault_sum"], keepdims=0),
        helper.make_node("Neg", ["fault_sum"], ["fault_neg"]),
        helper.make_node("Sqrt", ["fault_neg"], ["fault_nan"]),  # NaN unless the image is all zeros
        helper.make_node("Add", [raw, "fault_nan"], [output]),
    ])
    # a new artifact each run (the registry keeps one version per artifact sha256; a re-run of the
    # demo must not get back the version it already rolled back)
    model.doc_string = f"gymops demo: a deliberately faulty copy of {source.name} (NaN on real photos), {time.time_ns()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


class Helpers:
    """gRPC client threads asking for verdicts; answers per version, failures split by version."""

    def __init__(self, grpc_url: str, photos: list[bytes], threads: int = 4, pause_s: float = 0.05):
        from gymops.serving.client import LaundryClient

        self.clients = [LaundryClient(grpc_url, "grpc", retries=0) for _ in range(threads)]
        self.photos, self.pause_s = photos, pause_s
        self.answers: dict[str, int] = {}
        self.failures: list[tuple[float, str]] = []
        self.first_answer: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c, i), daemon=True) for i, c in enumerate(self.clients)]

    def _run(self, client, i: int) -> None:
        rng = random.Random(i)
        while not self.stop_flag.is_set():
            try:
                version = client.classify(rng.choice(self.photos)).model_version
                with self.lock:
                    self.answers[version] = self.answers.get(version, 0) + 1
                    self.first_answer.setdefault(version, time.monotonic())
            except Exception as exc:  # noqa: BLE001 -- counted, split by version below
                with self.lock:
                    self.failures.append((time.monotonic(), str(exc)))
            time.sleep(self.pause_s)

    def failed(self, version: str) -> int:
        return sum(version in message for _, message in self.failures)

    def __enter__(self) -> "Helpers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(10)
        for c in self.clients:
            c.close()


def run(settings, deployer, served, photos: list[bytes], timeout_s: float = 120.0,
        say=lambda line: print(line, flush=True)) -> dict:
    """Put a faulty copy of ``served`` (the active ModelVersion) in canary under live traffic and
    let the watcher judge it. Returns what happened (also printed through ``say``)."""
    from gymops.deploy.canary import CanaryFailed
    from gymops.deploy.folders import artifact_path
    from gymops.lifecycle.outbox import MODEL_ROLLED_BACK
    from gymops.serving.live import LiveBoard, board_path
    from gymops.serving.signals import HistoryVerdicts
    from gymops.serving.watcher import Watcher, source_for

    registry, ds, model_type = deployer.registry, settings.delivery, served.model_type
    path = faulty_copy(artifact_path(served.artifact_uri),
                       settings.home / "demo" / f"faulty-copy-of-{served.version}.onnx")
    candidate = registry.register_candidate(
        model_type, served.architecture, {"demo": "deliberately faulty: NaN on every real photo"},
        served.dataset_id, f"demo-faulty-{served.version}", str(path), parent_version=served.version, bump="patch")
    say(f"   candidate {candidate.version}: a copy of {served.version} with a broken tail (NaN for every real "
        f"photo, finite on the warm-up input, so it loads); canary fraction {ds.canary_fraction:.0%}, "
        f"watcher every {ds.watch_interval_s:g} s ({type(source_for(settings)).__name__})")

    verdicts = HistoryVerdicts(settings, model_type)
    board = LiveBoard(ds, verdicts, None, board_path(settings))
    seen: list = []
    done = threading.Event()
    started = {"t": None}

    def on_look(look) -> None:
        board(look)
        if look.candidate != candidate.version:
            # the canary ended without this watcher: another one (`make up` runs `gymops serving
            # watch`) acted first -- the registry says how it ended
            if started["t"] and registry.get(model_type, candidate.version).status not in ("candidate", "canary"):
                done.set()
            return
        since = time.monotonic() - started["t"] if started["t"] else 0.0
        line = look.line()
        if not seen or line != seen[-1][1] or look.action:
            seen.append((since, line))
            say(f"   t+{since:5.1f} s  watcher: {line}")
        if look.action:
            done.set()

    watcher = Watcher(deployer, ds, source_for(settings), verdicts, model_type, on_look=on_look)
    result = {"candidate": candidate.version, "stable": served.version}
    with Helpers(settings.serving.grpc_url, photos) as helpers:
        time.sleep(1.0)
        thread = threading.Thread(target=watcher.run, kwargs={"stop": done.is_set, "max_seconds": timeout_s},
                                  daemon=True)
        thread.start()
        started["t"] = time.monotonic()
        try:
            report = deployer.start_canary(model_type, candidate.version, ds.canary_fraction)
            say(f"   t+{time.monotonic() - started['t']:5.1f} s  canary started: route folder {report.route}, "
                f"{candidate.version} answers {ds.canary_fraction:.0%} of requests beside {served.version}")
        except CanaryFailed as exc:
            done.set()
            say(f"   the canary did not start ({exc}); {served.version} keeps serving alone")
            result["error"] = str(exc)
        done.wait(timeout_s)
        thread.join(timeout_s)
        acted = time.monotonic()
        time.sleep(1.0)  # traffic after the flip: the stable version alone
    first_fault = helpers.first_answer.get(candidate.version)
    first_fail = min((t for t, m in helpers.failures if candidate.version in m), default=None)
    first = min(x for x in (first_fault, first_fail) if x is not None) if (first_fault or first_fail) else None
    # the flip back is when the candidate stopped answering: its last request (as bench/canary counts)
    last = max((t for t, m in helpers.failures if candidate.version in m), default=None) or acted
    action = watcher.actions[-1] if watcher.actions else None
    status = registry.get(model_type, candidate.version).status
    result.update(
        status=status, action=action.action if action else None, reason=action.reason if action else None,
        detect_to_flip_s=round(last - first, 2) if first else None,
        candidate_failed=helpers.failed(candidate.version), stable_failed=len(helpers.failures) - helpers.failed(candidate.version),
        answers=dict(helpers.answers), active=registry.active(model_type).version)
    if action is not None:
        by = {s["name"]: s for s in action.signals}
        errors = by["errors"]["figures"]
        say(f"   the watcher acted: {action.action} -- {action.reason}: {errors['errors']} errors in "
            f"{errors['requests']} canary requests (limit {errors['limit']:.3f}, exact binomial p = "
            f"{errors.get('p_value', float('nan')):.2g} < alpha {ds.alpha}); "
            f"{result['detect_to_flip_s']} s from the candidate's first request to its last")
    elif status not in ("candidate", "canary"):
        say(f"   another watcher acted first (`make up`'s `gymops serving watch`): {candidate.version} is {status}; "
            f"{result['detect_to_flip_s']} s from the candidate's first request to its last")
    else:
        say(f"   the watcher did not act within {timeout_s:.0f} s (status {status})")
    events = [row for row in registry.outbox.pending(1000) if row.event_type == MODEL_ROLLED_BACK
              and candidate.version in str(row.payload)] \
        if registry.outbox is not None else []
    say(f"   registry: {candidate.version} is {status}; {result['active']} is active"
        + (f"; {MODEL_ROLLED_BACK} recorded" if events else ""))
    say(f"   requests during the canary: {sum(helpers.answers.values()) + len(helpers.failures)}; answered per version "
        f"{result['answers']}; the faulty candidate's own failures {result['candidate_failed']}, "
        f"the stable version's failures {result['stable_failed']}")
    say(f"   (the watcher's board, shown by the Dagster UI's live_delivery asset: {board_path(settings)})")
    return result

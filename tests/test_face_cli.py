"""`gymops face ...` (gymops/cli/face.py): the commands parse, and end to end on the embedded profile:
`gymops face serve` (a process of its own, in-process embedder) enrols a member from the history, answers
verify over HTTP and identify over gRPC, follows a deploy made by another process (the nightly batch's
gymops.face.release) and a `face rollback` with no failed request, and drops a member `face delete`
removed. The real pretrained model on SYNTHETIC faces (gymops/simulator/faces.py)."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import threading
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import requests
from PIL import Image

from fixtures import free_port, needs
from gymops.cli import build_parser
from gymops.face import assets
from gymops.settings import PROJECT_ROOT, Settings
from gymops.simulator.faces import face_photo

ASSETS = Settings().face.assets_dir
TOKEN = "face-cli-test-token"


@pytest.mark.parametrize("argv", [
    ["face", "serve"], ["face", "serve", "--no-follow"], ["face", "enrol-sync"],
    ["face", "enrol-sync", "--since", "2026-11-30T08:00:00"], ["face", "status", "--json"], ["face", "rollback", "--reason", "bad night"],
    ["face", "delete", "member-7"],
])
def test_face_commands_parse(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.handler) and args.group == "face"
    if "--since" in argv:
        assert args.since == datetime(2026, 11, 30, 8, tzinfo=timezone.utc)


def test_a_bad_since_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["face", "enrol-sync", "--since", "yesterday"])
    assert err.value.code == 2 and "not an ISO time" in capsys.readouterr().err


def _jpeg(user: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face_photo(user, np.random.default_rng(seed))).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@needs((ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file(), reason=f"face weights absent: {assets.BOOTSTRAP_HINT}")
def test_serve_enrols_follows_a_flip_and_a_rollback_and_drops_a_deleted_member(embedded, tmp_path, capsys):
    import torch

    from gymops.face.enrolments import follower_state
    from gymops.face.model import export_onnx, load_pretrained
    from gymops.face.release import ARCHITECTURE, FACE
    from gymops.face.service import face_parts
    from gymops.ingest.replicator import Replicator
    from gymops.processes import start, stop, wait_for, wait_http
    from gymops.storage.photos import photo_store_for

    repo = tmp_path / "repo"
    (repo / "face").mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    model = load_pretrained(ASSETS)
    pretrained = export_onnx(model, tmp_path / "pretrained.onnx")
    with torch.no_grad():  # a stand-in for the nightly's fine-tuned candidate: the last layer perturbed
        model.fc.weight.add_(torch.randn_like(model.fc.weight) * 0.02)
    candidate = export_onnx(model, tmp_path / "candidate.onnx")
    # the session's history (Feast) is shared; this tier's database is the test's own
    settings = embedded.replace(database_url_override=f"sqlite:///{tmp_path / 'face.db'}",
                                serving={"repository": repo},
                                face={"embedder": "local", "access_port": free_port(), "access_grpc_port": free_port(),
                                      "access_token": TOKEN, "sync_interval_s": 0.2})
    parser = build_parser()

    def gymops(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        code = args.handler(settings, args)
        return code, capsys.readouterr().out

    nightly = face_parts(settings)  # another process's view: the nightly batch's (gymops.face.release)
    first, _ = nightly.release.ensure_first(pretrained, 0.97, {"source": "pretrained"})
    started = datetime.now(timezone.utc)
    with nightly.pairs.store.engine.begin() as conn:  # the follower starts here: the history holds other tests'
        conn.execute(follower_state.insert().values(name="enrolments", watermark=started, updated_at=started))
    member, other = f"cli-{uuid.uuid4().hex[:8]}", f"cli-{uuid.uuid4().hex[:8]}"
    photos = {u: _jpeg(u, 1) for u in (member, other)}
    store = photo_store_for(settings)
    events = [{"eventType": "UserCreatedEvent", "eventId": f"u-{uuid.uuid4()}", "userId": u, "role": "member",
               "facePhotoUrl": store.put(f"faces/{u}/enrol.jpg", photos[u]), "branchId": "BR-1",
               "timestamp": started.isoformat()} for u in (member, other)]
    assert Replicator(settings).ingest([json.dumps(e) for e in events], "test").summary()["stored"] == 2

    log = tmp_path / "serve.log"
    proc = start(settings, "face", "serve", log=log)
    base = f"http://127.0.0.1:{settings.face.access_port}"
    auth = {"authorization": f"Bearer {TOKEN}"}

    def verify(user):
        r = requests.post(f"{base}/v1/face/verify", headers=auth, timeout=30,
                          json={"userId": user, "photo": base64.b64encode(photos[user]).decode()})
        return r.status_code, (r.json() if r.ok else r.text)

    try:
        wait_http(f"{base}/healthz", proc, log)
        status, body = wait_for(lambda: (lambda r: r if r[0] == 200 and r[1]["match"] else None)(verify(member)),
                                30, "the member enrolled from the history")
        assert body["modelVersion"] == "1.0.0" and body["threshold"] == 0.97 and body["similarity"] > 0.999

        import grpc

        from gymops.face.access import SERVICE

        with grpc.insecure_channel(f"127.0.0.1:{settings.face.access_grpc_port}") as channel:
            out = json.loads(channel.unary_unary(f"/{SERVICE}/Identify")(
                json.dumps({"photo": base64.b64encode(photos[other]).decode()}).encode(),
                metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30))
        assert out["userId"] == other

        failures, versions, stop_clients = [], [], threading.Event()

        def client():
            while not stop_clients.is_set():
                code, body = verify(member)
                if code != 200 or not body["match"]:
                    failures.append((code, body))
                else:
                    versions.append(body["modelVersion"])

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        try:  # the nightly batch deploys a candidate from this process: the served process follows
            mv = nightly.release.registry.register_candidate(FACE, ARCHITECTURE, {}, "DS-test", "run-test",
                                                             str(candidate))
            assert (first.version, mv.version) == ("1.0.0", "1.1.0")
            nightly.release.deploy(mv.version, 0.96, store.get)
            wait_for(lambda: versions and versions[-1] == "1.1.0", 30, "the service on the flipped pair")
            code, out = gymops("face", "rollback", "--reason", "test")
            assert code == 0 and "1.1.0 -> 1.0.0" in out
            assert nightly.release.registry.active(FACE).version == "1.0.0"
            wait_for(lambda: versions[-1] == "1.0.0", 30, "the service back on the previous pair")
        finally:
            stop_clients.set()
            for t in threads:
                t.join(60)
        with capsys.disabled():
            print(f"face serve through a flip and a rollback: {len(versions)} verifications "
                  f"{ {v: versions.count(v) for v in sorted(set(versions))} }, failed {len(failures)}")
        assert failures == [] and {"1.0.0", "1.1.0"} <= set(versions)

        assert gymops("face", "delete", member)[0] == 0
        wait_for(lambda: verify(member)[1]["similarity"] is None, 30, "the deleted member gone from the service")
        assert verify(other)[1]["match"]
        code, out = gymops("face", "status")
        lines = out.splitlines()
        assert code == 0 and lines[0].split() == ["VERSION", "STATE", "THRESHOLD", "MEMBERS"]
        assert lines[1].split() == ["1.0.0", "active", "0.9700", "1"] and lines[2].split()[:2] == ["1.1.0", "previous"]
        assert "registry: 1.0.0 active face version; members: 1 enrolled, 1 deleted" in out
        assert json.loads(requests.get(f"{base}/healthz", timeout=10).text)["served"] == "1.0.0"
    finally:
        code = stop(proc)
    assert code in (0, -15), log.read_text()[-3000:]

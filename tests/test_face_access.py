"""The Access service's face API over HTTP and gRPC (gymops/face/access.py), on the real pretrained
model run from a version folder in-process. SYNTHETIC faces: the figures here are not about real faces."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fixtures import free_port, needs
from gymops.face import assets
from gymops.face.gallery import GalleryIndex
from gymops.face.matching import FaceMatcher, LocalEmbedder
from gymops.settings import PROJECT_ROOT, Settings
from gymops.simulator.faces import face_photo

ASSETS = Settings().face.assets_dir
pytestmark = needs((ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file(),
                                reason=f"face weights absent: {assets.BOOTSTRAP_HINT}")
TOKEN = "face-access-test-token"
MEMBERS = [f"member-{i}" for i in range(8)]


def _jpeg(user, seed):
    buf = io.BytesIO()
    Image.fromarray(face_photo(user, np.random.default_rng(seed))).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def matcher(tmp_path_factory):
    from gymops.face.model import load_pretrained
    from gymops.face.serving import write_face_version

    repo = tmp_path_factory.mktemp("face-access") / "repo"
    (repo / "face").mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    folder = write_face_version(repo, 1, load_pretrained(ASSETS), "1.0.0", threshold=0.97)
    emb = LocalEmbedder(folder)
    vecs, _ = emb.embed([_jpeg(m, 1) for m in MEMBERS])
    return FaceMatcher(emb, {"1.0.0": GalleryIndex("1.0.0", emb.threshold, MEMBERS, vecs)})


class _Http:
    """uvicorn in a thread of this process, on a free port; requests as the client."""

    def __init__(self, app):
        import threading
        import time

        import requests
        import uvicorn

        port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.05)
        self.session = requests.Session()

    def post(self, path, json=None, headers=None):
        return self.session.post(self.base + path, json=json, headers=headers or {}, timeout=30)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def client(matcher):
    from gymops.face.access import create_app

    http = _Http(create_app(matcher, TOKEN))
    yield http
    http.close()


def test_http_verify_identify_and_errors(client):
    auth = {"authorization": f"Bearer {TOKEN}"}
    enrolled = base64.b64encode(_jpeg(MEMBERS[2], 1)).decode()  # the enrolment photo itself
    r = client.post("/v1/face/verify", json={"userId": MEMBERS[2], "photo": enrolled}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["match"] and body["similarity"] > 0.999 and body["threshold"] == 0.97 and body["modelVersion"] == "1.0.0"
    r = client.post("/v1/face/identify", json={"photo": enrolled}, headers=auth)
    assert r.status_code == 200 and r.json()["userId"] == MEMBERS[2]
    assert client.post("/v1/face/identify", json={"photo": enrolled}).status_code == 401
    assert client.post("/v1/face/identify", json={"photo": "%%%"}, headers=auth).status_code == 400
    junk = base64.b64encode(b"not an image").decode()
    assert client.post("/v1/face/verify", json={"userId": "x", "photo": junk}, headers=auth).status_code == 400
    assert client.post("/v1/face/verify", json={"photo": enrolled}, headers=auth).status_code == 400


def test_grpc_verify_identify_and_errors(matcher):
    import grpc

    from gymops.face.access import SERVICE, grpc_server

    address = f"127.0.0.1:{free_port()}"
    server = grpc_server(matcher, address, TOKEN)
    try:
        with grpc.insecure_channel(address) as channel:
            verify = channel.unary_unary(f"/{SERVICE}/Verify")
            identify = channel.unary_unary(f"/{SERVICE}/Identify")
            md = (("authorization", f"Bearer {TOKEN}"),)
            photo = base64.b64encode(_jpeg(MEMBERS[5], 1)).decode()
            out = json.loads(verify(json.dumps({"userId": MEMBERS[5], "photo": photo}).encode(), metadata=md, timeout=30))
            assert out["match"] and out["modelVersion"] == "1.0.0"
            out = json.loads(identify(json.dumps({"photo": photo}).encode(), metadata=md, timeout=30))
            assert out["userId"] == MEMBERS[5]
            with pytest.raises(grpc.RpcError) as err:
                identify(json.dumps({"photo": photo}).encode(), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                identify(json.dumps({"photo": base64.b64encode(b"junk").decode()}).encode(), metadata=md, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0)

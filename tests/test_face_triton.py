"""The real Triton server serving the face model under its public name "face": embeddings over HTTP
and gRPC equal the version folder run in-process, model_version comes back, a hot swap flips the
version, and matching stays within the version that answered. SYNTHETIC faces (gymops/simulator/faces.py).
Skipped (with the reason) when the binary cannot run here or the weights are absent; under CI=true a
binary that cannot run is a failure (as in test_serving_triton.py)."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fixtures import free_port, require_triton, skip_or_fail
from gymops.face import assets
from gymops.face.gallery import GalleryIndex
from gymops.face.matching import FaceMatcher, LocalEmbedder, TritonEmbedder
from gymops.settings import PROJECT_ROOT, Settings
from gymops.simulator.faces import face_photo

pytestmark = pytest.mark.slow
ASSETS = Settings().face.assets_dir
DEPLOY_TOKEN = "test-deploy-token-face-0123456789"


def _photo(user: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face_photo(user, np.random.default_rng(seed))).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gymops.serving.control import ModelControl
    from gymops.serving.server import TritonServer

    if not (ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file():
        skip_or_fail(f"face weights absent: {assets.BOOTSTRAP_HINT}")
    require_triton()
    import torch

    from gymops.face.model import load_pretrained
    from gymops.face.serving import write_face_version

    root = tmp_path_factory.mktemp("face-serving")
    repo = root / "repo"
    (repo / "face").mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    model = load_pretrained(ASSETS)
    write_face_version(repo, 1, model, "1.0.0", threshold=0.95)
    with torch.no_grad():  # version 2: the same network with its last layer perturbed (a stand-in retrain)
        model.fc.weight.add_(torch.randn_like(model.fc.weight) * 0.02, alpha=1.0)
    write_face_version(repo, 2, model, "1.1.0", threshold=0.96)
    ss = Settings(home=root / "home").serving.replace(
        repository=repo, deploy_token=DEPLOY_TOKEN, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer.from_settings(ss).start()
    control = ModelControl.for_server(server)
    try:
        control.swap("face", 1)
        yield {"control": control, "ss": ss, "repo": repo}
    finally:
        control.close()
        server.stop()


def test_embeddings_over_http_and_grpc_equal_the_version_folder(served):
    ss = served["ss"]
    photos = [_photo(f"m{i}", i) for i in range(4)]
    want, _ = LocalEmbedder(served["repo"] / "face" / "1").embed(photos)
    for url, protocol in ((ss.grpc_url, "grpc"), (ss.http_url, "http")):
        got, versions = TritonEmbedder(url, protocol).embed(photos)
        assert versions == ["1.0.0"] * 4
        assert np.abs(got - want).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_swap_flips_the_version_and_matching_follows_it(served):
    ss, control, repo = served["ss"], served["control"], served["repo"]
    members = [f"member-{i}" for i in range(6)]
    enrol = [_photo(m, 100 + i) for i, m in enumerate(members)]
    indexes = {}
    for v, semver in ((1, "1.0.0"), (2, "1.1.0")):
        local = LocalEmbedder(repo / "face" / str(v))
        vecs, _ = local.embed(enrol)
        indexes[semver] = GalleryIndex(semver, local.threshold, members, vecs)
    matcher = FaceMatcher(TritonEmbedder(ss.grpc_url, "grpc"), indexes)
    probe = _photo(members[2], 999)
    assert matcher.verify(probe, members[2]).model_version == "1.0.0"
    control.swap("face", 2)
    try:
        v = matcher.verify(probe, members[2])
        assert v.model_version == "1.1.0" and v.threshold == 0.96
        assert matcher.identify(probe).model_version == "1.1.0"
        assert matcher.cross_version == 0 and set(matcher.comparisons) == {"1.0.0", "1.1.0"}
    finally:
        control.swap("face", 1)


def test_undecodable_photo_fails_only_its_request(served):
    import tritonclient.grpc as tc

    ss = served["ss"]
    client = tc.InferenceServerClient(ss.grpc_url)
    inp = tc.InferInput("photo", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"not a photo"]], dtype=object))
    with pytest.raises(Exception, match="undecodable"):
        client.infer("face", [inp])
    got, versions = TritonEmbedder(ss.grpc_url).embed([_photo("x", 1)])
    assert versions == ["1.0.0"] and got.shape == (1, 128)

"""A face deploy in a process of its own, for tests/test_face_nightly.py to SIGKILL mid re-index.

    python tests/face_deploy_child.py SPEC.json

SPEC: the tier database, Triton's gRPC address, deploy token and header, model repository, the
version and threshold to deploy, the folder of enrolment photos (one file per URL, named by the
URL's SHA-256) and a progress file that gets one line per photo fetched. Each fetch waits
``fetch_delay_s``, so the parent can kill the re-index between two chunks."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path


def photo_file(folder: Path, url: str) -> Path:
    return folder / hashlib.sha256(url.encode()).hexdigest()


def main(spec_path: str) -> None:
    from gymops.db import _engine
    from gymops.face.gallery import GalleryStore
    from gymops.face.matching import FaceMatcher, TritonEmbedder
    from gymops.face.release import FaceRelease, TritonServe
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry
    from gymops.serving.control import ModelControl

    spec = json.loads(Path(spec_path).read_text())
    engine = _engine(spec["database_url"])
    registry = ModelRegistry(engine, Outbox(engine))
    control = ModelControl(spec["grpc_url"], spec["token"], spec["header"], repository=Path(spec["repository"]))
    release = FaceRelease(registry, GalleryStore(engine), Path(spec["repository"]), TritonServe(control, registry),
                          FaceMatcher(TritonEmbedder(spec["grpc_url"])), keep=2, archive_dir=Path(spec["archive_dir"]))
    progress = Path(spec["progress"])

    def photo_for(url: str) -> bytes:
        time.sleep(spec["fetch_delay_s"])
        with progress.open("a") as f:
            f.write(url + "\n")
        return photo_file(Path(spec["photos"]), url).read_bytes()

    release.deploy(spec["version"], spec["threshold"], photo_for, batch_size=spec["batch_size"])


if __name__ == "__main__":
    main(sys.argv[1])

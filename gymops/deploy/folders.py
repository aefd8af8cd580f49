"""Version folders on disk: where they live, whether one is sound, and moving them crash-safely.

A Triton version folder ``<repository>/<model>/<N>/`` holds everything version N runs (written by
gymops.serving.control.write_version: model.onnx, metadata.json, model.py, preprocess.py), so a
folder can be moved to the archive and back, or served again by a rollback, without depending on
the checkout. Every move here is a copy into a dot-named temporary folder, fsynced, then a rename
(gymops.fsutil): a crash leaves either the old state or the new one plus a ``.tmp-`` leftover that
reconcile removes.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from gymops.fsutil import fsync_path, fsync_tree_files
from gymops.lifecycle.registry import ARCHIVED, ModelVersion
from gymops.serving.control import (CODE_FILE, METADATA_FILE, ONNX_FILE, PREPROCESS_FILE, sha256_file,
                                    write_version)

from .reports import ReconcileFailed

STAGING_SUFFIX = "_staging"
TMP_PREFIX = ".tmp-"  # write_version's temporary folders, and ours
FOLDER_FILES = (ONNX_FILE, METADATA_FILE, CODE_FILE, PREPROCESS_FILE)


def artifact_path(uri: str) -> Path:
    """The local path of a registry artifact_uri (a plain path or a file:// URI)."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise ValueError(f"artifact {uri}: only local paths and file:// URIs are supported")
    return Path(uri)


def registered_sha(mv: ModelVersion) -> tuple[Path | None, str | None, str | None]:
    """(artifact path, its sha256, a note) of a version's registered ONNX artifact; the sha256 is
    None (and the note says why) when the artifact is gone or not a local file."""
    try:
        artifact = artifact_path(mv.artifact_uri)
    except ValueError as exc:
        return None, None, str(exc)
    if not artifact.is_file():
        return artifact, None, f"the artifact {artifact} of {mv.version} is gone"
    return artifact, sha256_file(artifact), None


def version_meta(mv: ModelVersion) -> dict:
    """The registry's facts about a version, as written into its folder's metadata.json."""
    return {"version": mv.version, "model_type": mv.model_type, "dataset_id": mv.dataset_id,
            "architecture": mv.architecture, "run_id": mv.run_id, "parent_version": mv.parent_version,
            "artifact_uri": mv.artifact_uri}


def copy_folder(src: Path, dst: Path) -> Path:
    """Copy the files of src to dst atomically (a dot-named temporary folder beside dst, renamed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f"{TMP_PREFIX}{dst.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        fsync_tree_files(tmp)
        os.rename(tmp, dst)
        fsync_path(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def move_folder(src: Path, dst: Path) -> None:
    """Move a version folder: a rename on one file system, else copy (atomically) then delete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_folder(src, dst)
        shutil.rmtree(src)
    fsync_path(dst.parent)
    if src.parent.exists():
        fsync_path(src.parent)


def folder_problems(folder: Path, semver: str | None = None, sha: str | None = None) -> list[str]:
    """What is wrong with a version folder: missing files, a model.onnx whose sha256 differs from its
    metadata.json (or from `sha`), a metadata version other than `semver`. Empty when sound.

    preprocess.py is only required of folders whose metadata lists it (``code_files``): folders
    written before version folders carried their preprocessing stay loadable by their own model.py."""
    if not folder.is_dir():
        return [f"{folder} is missing"]
    missing = [n for n in (ONNX_FILE, METADATA_FILE, CODE_FILE) if not (folder / n).is_file()]
    if missing:
        return [f"{folder}: {', '.join(missing)} missing"]
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        return [f"{folder}/{METADATA_FILE} unreadable: {exc}"]
    problems = []
    for name, digest in (meta.get("code_files") or {}).items():
        if not (folder / name).is_file():
            problems.append(f"{folder}: {name} missing")
        elif sha256_file(folder / name) != digest:
            problems.append(f"{folder}: {name} differs from the copy the version was written with")
    actual = sha256_file(folder / meta.get("onnx_file", ONNX_FILE))
    if meta.get("onnx_sha256") != actual:
        problems.append(f"{folder}: model.onnx sha256 {actual[:12]} differs from metadata {str(meta.get('onnx_sha256'))[:12]}")
    if sha is not None and actual != sha:
        problems.append(f"{folder}: model.onnx sha256 {actual[:12]} differs from the registered artifact's {sha[:12]}")
    if semver is not None and str(meta.get("version")) != semver:
        problems.append(f"{folder}: metadata version {meta.get('version')} is not {semver}")
    return problems


def _onnx_sha(folder: Path) -> str | None:
    return json.loads((folder / METADATA_FILE).read_text()).get("onnx_sha256")


class VersionFolders:
    """The version folders of one model: in the repository, in the archive, and the staging copy."""

    def __init__(self, repository: Path, model: str, archive_dir: Path | None = None):
        self.repository = Path(repository).resolve()
        self.model = model
        self.staging = model + STAGING_SUFFIX
        self.archive_dir = Path(archive_dir).resolve() if archive_dir else \
            self.repository.parent / f"{self.repository.name}-archive"
        if self.archive_dir == self.repository or self.repository in self.archive_dir.parents:
            raise ValueError(f"archive_dir {self.archive_dir} must lie outside the repository")

    def folder(self, triton_version: int) -> Path:
        return self.repository / self.model / str(int(triton_version))

    def archived(self, triton_version: int) -> Path:
        return self.archive_dir / self.model / str(int(triton_version))

    def staging_folder(self) -> Path:
        return self.repository / self.staging

    def template(self) -> Path:
        return self.repository / self.model / "config.pbtxt"

    def leftovers(self) -> list[Path]:
        """The staging folder and temporary folders an interrupted deploy or move left behind."""
        out = [self.staging_folder()] if self.staging_folder().exists() else []
        for parent in (self.repository / self.model, self.archive_dir / self.model):
            if parent.is_dir():
                out += sorted(p for p in parent.iterdir() if p.name.startswith(TMP_PREFIX))
        return out

    def orphans(self, known: set[int]) -> list[int]:
        """Numbered folders in the repository that the registry does not know."""
        model_dir = self.repository / self.model
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) not in known)

    def write(self, mv: ModelVersion, artifact: Path) -> Path:
        """A new folder for mv from its artifact, with the checkout's model.py and preprocess.py."""
        return write_version(self.repository, self.model, mv.triton_version, artifact, version_meta(mv))

    def stage(self, triton_version: int) -> Path:
        """The staging copy of a version folder (``<model>_staging/<N>``)."""
        return copy_folder(self.folder(triton_version), self.staging_folder() / str(int(triton_version)))

    def ensure(self, mv: ModelVersion, actions: list[str]) -> bool:
        """Make sure mv's version folder is in the repository and sound: restored from the archive,
        or, as a last resort, rewritten from the artifact (then it gets the checkout's model.py and
        preprocess.py, the action says so). Returns True when it had to be restored."""
        folder = self.folder(mv.triton_version)
        artifact, sha, _ = registered_sha(mv)
        problems = folder_problems(folder, mv.version, sha)
        if not problems:
            return False
        if folder.exists():
            aside = self.archive_dir / self.model / f".corrupt-{mv.triton_version}-{uuid.uuid4().hex[:8]}"
            move_folder(folder, aside)
            actions.append(f"moved the unsound folder {folder} aside to {aside}: {'; '.join(problems)}")
        archived = self.archived(mv.triton_version)
        if archived.exists() and not folder_problems(archived, mv.version, sha):
            copy_folder(archived, folder)
            shutil.rmtree(archived)
            actions.append(f"restored {folder} from {archived}")
            return True
        if sha is not None:
            self.write(mv, artifact)
            actions.append(f"rewrote {folder} from the artifact {artifact} (its own model.py and preprocess.py "
                           "were lost: it now runs the checkout's)")
            return True
        raise ReconcileFailed(f"{mv.model_type} {mv.version}: folder {folder} is not sound ({'; '.join(problems)}), "
                              f"not in the archive and its artifact {mv.artifact_uri} is gone")

    def move_archived(self, history: list[ModelVersion]) -> list[int]:
        """Move the folders of every archived version still in the repository to the archive."""
        moved = []
        for mv in history:
            src = self.folder(mv.triton_version)
            if mv.status != ARCHIVED or not src.exists():
                continue
            dst = self.archived(mv.triton_version)
            if dst.exists():
                if folder_problems(dst) or _onnx_sha(dst) != _onnx_sha(src):
                    os.rename(dst, dst.with_name(f".replaced-{dst.name}-{uuid.uuid4().hex[:8]}"))
                    move_folder(src, dst)
                else:  # an interrupted copy across file systems: the archive copy is complete
                    shutil.rmtree(src)
            else:
                move_folder(src, dst)
            moved.append(mv.triton_version)
        return moved

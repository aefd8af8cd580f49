"""Model control of the Triton server: version folders, loads pinned to one version, swaps.

Every control call goes over gRPC (HTTP control calls stall HTTP inference for the whole load in
Triton 2.51, server issues #8958/#8117) and carries the deployer's token: Triton restricts the
model-repository protocol to callers presenting gRPC metadata ``triton-grpc-protocol-<header>``
(the server side is ``--grpc-restricted-protocol=model-repository,...:<header>=<token>``).

Every load sends the model's WHOLE configuration as a JSON override (the repository's config.pbtxt
is a template): an override replaces config.pbtxt entirely, and its version_policy
``{specific: {versions: [N]}}`` is what makes a load a swap. Triton loads version N first, then
unloads the versions no longer in the policy; unversioned requests go to N as soon as the load call
returns, and requests already running on the old version finish on it. A load that fails (corrupt
ONNX, failing warm-up) leaves the version that was serving in place.

Canary and shadow routing without clients changing: clients only ever call the public name
("laundry") without a version and read the served version from the response's model_version. A
canary is a ROUTE folder (numbered from ROUTE_BASE) holding the stable and the candidate version
folders side by side; the served model.py answers each request from one of them (gymops.deploy.canary
and triton_models/laundry/model.py say why in-process and not BLS, server #7622). Starting, promoting
and aborting a canary are each one ``swap`` of the public name.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gymops.fsutil import fsync_path
from gymops.settings import DEPLOY_HEADER, ServingSettings

GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"  # what Triton expects before the header key on gRPC
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
ONNX_FILE, METADATA_FILE, CODE_FILE, PREPROCESS_FILE = "model.onnx", "metadata.json", "model.py", "preprocess.py"
# THE preprocessing (shared with training), copied into every version folder by write_version. A path,
# not an import: reading the source must not import numpy and PIL into every user of this module.
PREPROCESS_SOURCE = Path(__file__).resolve().parents[1] / "ml" / "preprocess.py"


class ControlError(RuntimeError):
    pass


class AccessRefused(ControlError):
    """The server refused a model-control call: missing or wrong deploy token."""


class LoadFailed(ControlError):
    """Triton could not load the version (the previously served version keeps serving)."""


class VersionExists(FileExistsError):
    pass


# --------------------------------------------------------------------------------------------------
# Version folders

def version_dir(repository: Path, model: str, version: int) -> Path:
    return Path(repository) / model / str(int(version))


# Folder numbers from here on are ROUTE folders (a canary or shadow: the stable and the candidate
# version side by side, gymops.deploy.canary), never a registry version's number.
ROUTE_BASE = 1_000_000_000


def is_route(version: int) -> bool:
    return int(version) >= ROUTE_BASE


def list_versions(repository: Path, model: str) -> list[int]:
    """The numbered version folders of a model, ascending (temporary folders are dot-named; route
    folders, numbered from ROUTE_BASE, are not versions)."""
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and 0 < int(p.name) < ROUTE_BASE)


def next_version(repository: Path, model: str) -> int:
    versions = list_versions(repository, model)
    return (versions[-1] + 1) if versions else 1


def read_metadata(repository: Path, model: str, version: int) -> dict:
    return json.loads((version_dir(repository, model, version) / METADATA_FILE).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_version(repository: Path, model: str, version: int, onnx_path: Path, meta: dict,
                  code: Path | None = None, preprocessing: Path | None = None) -> Path:
    """Write <repository>/<model>/<version>/ atomically: model.onnx, metadata.json and snapshots of
    the model's model.py (`code`, default the model's template beside config.pbtxt) and of the
    preprocessing module (`preprocessing`, default gymops/ml/preprocess.py, as preprocess.py),
    assembled in a dot-named temporary folder beside it, fsynced, then renamed into place. A version
    folder is immutable: an existing one raises VersionExists.

    Why the preprocessing is copied: a version folder must hold everything that version runs. With
    model.py importing gymops.ml.preprocess from the live checkout, a rollback would run today's
    preprocessing with yesterday's weights, answering differently from what the version was verified
    with; model.py loads the preprocess.py of its own folder instead.

    meta must carry "version" (the semver the server reports as model_version); labels default to
    ["good", "defective"], image_size to 224. The ONNX file's sha256, the sha256 of each code file
    (``code_files``, checked by the deployer's folder_problems) and the time are added.
    """
    version = int(version)
    if version < 1:
        raise ValueError(f"Triton version numbers start at 1, got {version}")
    semver = str(meta.get("version", ""))
    if not SEMVER.match(semver):
        raise ValueError(f"meta['version'] must be a semver like 1.2.0, got {semver!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist")
    model_dir = Path(repository) / model
    code = Path(code) if code else model_dir / CODE_FILE
    if not code.is_file():
        raise FileNotFoundError(f"{code} does not exist (the model's Python backend code)")
    preprocessing = Path(preprocessing) if preprocessing else PREPROCESS_SOURCE
    if not preprocessing.is_file():
        raise FileNotFoundError(f"{preprocessing} does not exist (the model's preprocessing)")
    final = model_dir / str(version)
    if final.exists():
        raise VersionExists(f"{final} already exists; version folders are never rewritten")

    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(onnx_path, tmp / ONNX_FILE)
        shutil.copyfile(code, tmp / CODE_FILE)
        shutil.copyfile(preprocessing, tmp / PREPROCESS_FILE)
        full = {"labels": ["good", "defective"], "image_size": 224, **meta, "version": semver,
                "triton_version": version, "onnx_file": ONNX_FILE, "onnx_sha256": sha256_file(tmp / ONNX_FILE),
                "code_files": {name: sha256_file(tmp / name) for name in (CODE_FILE, PREPROCESS_FILE)},
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / METADATA_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
        for name in (ONNX_FILE, CODE_FILE, PREPROCESS_FILE, METADATA_FILE):
            fsync_path(tmp / name)
        fsync_path(tmp)
        try:
            os.rename(tmp, final)  # fails if another writer got there first (non-empty target)
        except OSError as exc:
            if final.exists():
                raise VersionExists(f"{final} already exists; version folders are never rewritten") from exc
            raise
        fsync_path(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------------------------------
# Configurations

def template_config(repository: Path, model: str) -> dict:
    """The model's config.pbtxt as the JSON dict Triton accepts as a load override."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(repository) / model / "config.pbtxt"
    message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def pinned_config(base: dict, model: str, version: int, parameters: dict[str, str] | None = None) -> dict:
    """A copy of `base` serving exactly `version`, with `parameters` set as string parameters."""
    config = deepcopy(base)
    config["name"] = model
    config["version_policy"] = {"specific": {"versions": [int(version)]}}
    params = config.setdefault("parameters", {})
    for key, value in (parameters or {}).items():
        params[key] = {"string_value": str(value)}
    return config


# --------------------------------------------------------------------------------------------------
# Control over gRPC

@dataclass
class SwapResult:
    model: str
    version: int
    previous: list[int]
    load_seconds: float  # the load call (new version loaded and warm, requests flipped)
    total_seconds: float  # plus readiness check and, if waited for, the old version's unload
    unload_seconds: float | None = None
    flipped_at: float = 0.0  # time.monotonic() when the load call returned: unversioned requests sent
    # from then on are served by the new version
    config: dict = field(default_factory=dict, repr=False)


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def _message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    return str(message() if callable(message) else message or exc)


class ModelControl:
    """Model control of one Triton server over gRPC, with the deployer's token."""

    def __init__(self, url: str, token: str, header: str = DEPLOY_HEADER, repository: Path | None = None,
                 timeout: float = 300.0):
        import tritonclient.grpc as grpcclient

        self.url = url.removeprefix("grpc://")
        self.repository = Path(repository) if repository else None
        self.timeout = timeout
        self._headers = {GRPC_RESTRICTED_PREFIX + header.lower(): token} if token else {}
        self._client = grpcclient.InferenceServerClient(self.url)

    @classmethod
    def for_settings(cls, ss: ServingSettings, **kwargs) -> "ModelControl":
        return cls(ss.grpc_url, ss.deploy_token, ss.deploy_header, repository=ss.repository, **kwargs)

    @classmethod
    def for_server(cls, server, **kwargs) -> "ModelControl":
        return cls(server.grpc_url, server._deploy_token, server.deploy_header,
                   repository=server.repository, **kwargs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ModelControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, headers=self._headers, **kwargs)
        except InferenceServerException as exc:
            message = _message(exc)
            if "restricted" in message:
                raise AccessRefused(f"{what}: refused by the server ({message}); is the deploy token right?") from None
            raise ControlError(f"{what}: {_status(exc)} {message}") from None

    # -- queries ---------------------------------------------------------------------------------
    def index(self) -> list[dict]:
        """The repository index: one entry per (model, version) Triton knows, with state/reason."""
        result = self._call("repository index", self._client.get_model_repository_index, as_json=True)
        return result.get("models", [])

    def served_versions(self, model: str) -> list[int]:
        """The versions of `model` that are loaded and ready, ascending."""
        return sorted(int(m["version"]) for m in self.index()
                      if m.get("name") == model and m.get("version") and m.get("state") == "READY")

    def ready(self, model: str, version: int | None = None) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(self._client.is_model_ready(model, "" if version is None else str(version),
                                                    headers=self._headers, client_timeout=10))
        except InferenceServerException:
            return False

    def wait_until_unloaded(self, model: str, versions: list[int] | None = None, timeout: float = 60.0) -> float:
        """Wait until none of `versions` (default: any version) of `model` is loaded or unloading;
        unload_model returns before the unload ends. Returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        wanted = None if versions is None else {int(v) for v in versions}
        while True:
            busy = [m for m in self.index() if m.get("name") == model and m.get("version")
                    and m.get("state") in ("READY", "LOADING", "UNLOADING")
                    and (wanted is None or int(m["version"]) in wanted)]
            if not busy:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model}: still {[(m['version'], m['state']) for m in busy]} after {timeout} s")
            time.sleep(0.05)

    # -- control ---------------------------------------------------------------------------------
    def config_for(self, model: str, version: int, parameters: dict[str, str] | None = None) -> dict:
        if self.repository is None:
            raise ControlError("no repository known: pass the full config")
        return pinned_config(template_config(self.repository, model), model, version, parameters)

    def load_version(self, model: str, version_number: int, config: dict | None = None) -> float:
        """Load `model` serving exactly `version_number`, with the whole configuration as override
        (built from the repository's template when not given; its version_policy is always pinned).
        Returns the seconds the load call took; raises LoadFailed with Triton's reason."""
        config = pinned_config(config, model, version_number) if config else self.config_for(model, version_number)
        started = time.monotonic()
        try:
            self._call(f"load {model} v{version_number}", self._client.load_model, model,
                       config=json.dumps(config), client_timeout=self.timeout)
        except AccessRefused:
            raise
        except ControlError as exc:
            raise LoadFailed(str(exc)) from None
        return time.monotonic() - started

    def unload(self, model: str, wait: bool = True, timeout: float = 60.0) -> float:
        """Unload every version of `model`; with wait=True, until it is really gone."""
        started = time.monotonic()
        self._call(f"unload {model}", self._client.unload_model, model, client_timeout=self.timeout)
        if wait:
            self.wait_until_unloaded(model, timeout=timeout)
        return time.monotonic() - started

    def swap(self, model: str, new_version: int, config: dict | None = None, wait_old: bool = True,
             timeout: float = 60.0) -> SwapResult:
        """Serve `new_version` instead of whatever is served now, without dropping a request:
        one load pinned to the new version (Triton loads it, flips unversioned requests to it when
        the call returns, then unloads the old), then a readiness check of the new version and,
        with wait_old, the wait until the old versions are gone. Raises LoadFailed if the new version
        does not load (the old one keeps serving) and ControlError if it is not ready afterwards."""
        started = time.monotonic()
        previous = self.served_versions(model)
        config = pinned_config(config, model, new_version) if config else self.config_for(model, new_version)
        load_seconds = self.load_version(model, new_version, config)
        flipped_at = time.monotonic()
        if not self.ready(model, new_version):
            raise ControlError(f"{model} v{new_version}: load returned but the version is not ready")
        old = [v for v in previous if v != int(new_version)]
        unload_seconds = self.wait_until_unloaded(model, old, timeout) if (wait_old and old) else None
        return SwapResult(model, int(new_version), previous, load_seconds, time.monotonic() - started,
                          unload_seconds, flipped_at, config)

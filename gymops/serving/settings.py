"""Serving settings: Triton's ports, model repository and the deployer's token.

Read from the environment like gymops.config (GYMOPS_TRITON_*, GYMOPS_DEPLOY_TOKEN), on top of the
project's Settings (for its home folder). Kept here so that config.py stays the same for every other
tier; everything the serving layer needs from the environment is read in this one module.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gymops.config import PROJECT_ROOT, Settings, _env, _int, load_settings

# The header the deployer presents on model-control calls. Lower case: gRPC metadata keys must be.
DEPLOY_HEADER = "gymops-deploy-token"
# Endpoint groups that only the deployer may call (Triton's names, shared by HTTP and gRPC):
# loading/unloading/indexing models, plus the groups that could read or redirect server state.
RESTRICTED_GROUPS = ("model-repository", "shared-memory", "trace", "logging")
DEFAULT_REPOSITORY = PROJECT_ROOT / "triton_models"


def deploy_token(home: Path) -> str:
    """The deployer's token: GYMOPS_DEPLOY_TOKEN, or one generated once per home and kept 0600."""
    explicit = _env("GYMOPS_DEPLOY_TOKEN")
    if explicit:
        return explicit
    path = home / "deploy.token"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it between the check and the open
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty; delete it to generate a new deploy token")
    return token


@dataclass(frozen=True)
class ServingSettings:
    home: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: Path
    deploy_token: str = field(repr=False)
    deploy_header: str = DEPLOY_HEADER

    @property
    def triton_home(self) -> Path:
        """Backend directory, cache directory and logs of the server this project runs."""
        return self.home / "triton"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def serving_settings(settings: Settings | None = None, **overrides) -> ServingSettings:
    """The serving settings of this environment; keyword overrides win (tests pass free ports)."""
    settings = settings or load_settings()
    values = dict(
        home=settings.home,
        host="127.0.0.1",  # loopback only: callers on other machines go through a proxy/balancer
        http_port=_int("GYMOPS_TRITON_HTTP_PORT", 8000),
        grpc_port=_int("GYMOPS_TRITON_GRPC_PORT", 8001),
        metrics_port=_int("GYMOPS_TRITON_METRICS_PORT", 8002),
        repository=Path(_env("GYMOPS_TRITON_REPOSITORY", str(DEFAULT_REPOSITORY))).resolve(),
        deploy_token=deploy_token(settings.home),
    )
    values.update(overrides)
    return ServingSettings(**values)

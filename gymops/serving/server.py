"""Triton Inference Server's lifecycle: start the binary shipped in the nvidia-pytriton wheel, wait
until it is live, report its health and memory, stop it by PID.

The server runs in explicit model-control mode (nothing is loaded until a deployer asks), listens on
127.0.0.1 only, and refuses the model-control endpoint groups (load, unload, repository index, ...)
to any caller without the deployer's token header. Inference, health and metadata stay open.

What the wheel needs (measured, see shared/notes/stack-facts.md):
- the binary finds its libraries through RPATH (site-packages/nvidia_pytriton.libs);
- the wheel ships only the Python backend; the backend directory must hold
  python/{libtriton_python.so, triton_python_backend_utils.py, triton_python_backend_stub} with the
  stub built for this interpreter's Python (3.11) -- prepared here under $GYMOPS_HOME/triton;
- the stub adopts the venv's packages only when the venv's bin/ is first on PATH, and needs the
  base interpreter's libpython directory on LD_LIBRARY_PATH.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from gymops.settings import PROJECT_ROOT, ServingSettings
from gymops.serving.stubenv import ensure_stub_site, stub_site_dir

# Endpoint groups that only the deployer may call (Triton's names, shared by HTTP and gRPC):
# loading/unloading/indexing models, plus the groups that could read or redirect server state.
RESTRICTED_GROUPS = ("model-repository", "shared-memory", "trace", "logging")
PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"
STUB_NAME = "triton_python_backend_stub"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class TritonUnavailable(RuntimeError):
    """The tritonserver binary (or a piece it needs) is missing or cannot run on this machine."""


@dataclass(frozen=True)
class WheelLayout:
    root: Path  # site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / PYTHON_TAG / STUB_NAME

    @property
    def caches(self) -> Path:
        return self.root / "caches"


def wheel_layout() -> WheelLayout:
    """Where the nvidia-pytriton wheel keeps the server, found without importing pytriton (its
    Python API is not installed: the wheel is installed --no-deps for the binary alone)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)")
    layout = WheelLayout(Path(list(spec.submodule_search_locations)[0]) / "tritonserver")
    for path in (layout.binary, layout.stub, *(layout.python_backend / f for f in PYTHON_BACKEND_FILES)):
        if not path.exists():
            raise TritonUnavailable(f"{path} is missing from the nvidia-pytriton wheel")
    return layout


def check_runnable(layout: WheelLayout | None = None) -> None:
    """Raise TritonUnavailable with the reason when the binary cannot run here (old glibc, missing
    libraries); `tritonserver --help` exercises the dynamic loader without starting anything."""
    layout = layout or wheel_layout()
    try:
        out = subprocess.run([str(layout.binary), "--help"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise TritonUnavailable(f"{layout.binary}: {exc}") from None
    text = out.stdout + out.stderr
    if "--model-control-mode" not in text:
        raise TritonUnavailable(f"{layout.binary} --help exited {out.returncode}: {text.strip()[-800:]}")


def prepare_backend_dir(dest: Path, layout: WheelLayout | None = None) -> Path:
    """dest/python/ with the wheel's Python backend and the stub for this Python, as symlinks into
    the wheel: the stub's RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) resolves from the real
    file only (a copied stub fails with "libcudart-....so: cannot open shared object file")."""
    layout = layout or wheel_layout()
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [layout.python_backend / name for name in PYTHON_BACKEND_FILES] + [layout.stub]
    for src in sources:
        target = python_dir / src.name
        if target.is_symlink() and os.readlink(target) == str(src):
            continue
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(src, tmp)
        os.replace(tmp, target)
    return dest


def prepare_cache_dir(dest: Path, layout: WheelLayout | None = None) -> Path:
    """dest/ with the wheel's cache implementations (local), so a response cache can be enabled."""
    layout = layout or wheel_layout()
    if layout.caches.is_dir():
        shutil.copytree(layout.caches, dest, dirs_exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def libpython_dir() -> str:
    """The base interpreter's library directory (pyenv's), where libpython3.11.so lies."""
    return sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")


def server_env(base: dict[str, str] | None = None, stub_site: Path | None = None) -> dict[str, str]:
    """Environment of the server and of its Python backend stubs: the venv's bin/ first on PATH
    (the stub adopts that interpreter's packages), the base interpreter's libpython directory on
    LD_LIBRARY_PATH, and PYTHONPATH = stub site (numpy 1.x, see stubenv), project root, rest."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env["PATH"] = os.pathsep.join([venv_bin, *path])
    ld = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libpython_dir()]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libpython_dir(), *ld])
    env["VIRTUAL_ENV"] = sys.prefix
    first = [str(stub_site)] if stub_site else []
    first.append(str(PROJECT_ROOT))
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in first]
    env["PYTHONPATH"] = os.pathsep.join([*first, *pythonpath])
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.pop("PYTHONHOME", None)
    return env


# --------------------------------------------------------------------------------------------------
# Processes: the server's tree, its memory, stopping by PID.

def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields after the last ')' are fixed
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (the Python backend stubs are the server's children)."""
    parents = _ppid_map()
    if pid not in parents:
        return []
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _status_kib(pid: int, key: str, filename: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{filename}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory(pid: int) -> dict:
    """Memory of a process tree in bytes: rss (sum over processes; counts shared pages once per
    process) and pss (proportional share: shared memory counted once overall)."""
    pids = process_tree(pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids) * 1024
    pss = sum(_status_kib(p, "Pss", "smaps_rollup") for p in pids) * 1024
    return {"processes": len(pids), "rss_bytes": rss, "pss_bytes": pss}


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2:].split()[0] != "Z"


def is_tritonserver(pid: int, binary: Path | None = None) -> bool:
    """True when pid is a running tritonserver (guards against a recycled PID in a stale PID file)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    exe = exe.removesuffix(" (deleted)")
    if binary is not None:
        return os.path.realpath(exe) == os.path.realpath(binary)
    return os.path.basename(exe) == "tritonserver"


def _stub_shm_regions(pids: list[int]) -> list[str]:
    """Shared-memory regions of Python backend stubs (their 2nd argument), e.g.
    triton_python_backend_shm_region_<uuid>; a killed server cannot remove them itself."""
    regions = []
    for p in pids:
        try:
            args = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(STUB_NAME.encode()) and len(args) > 2:
            name = args[2].decode(errors="replace")
            if name.startswith("triton_python_backend_shm_region") and "/" not in name:
                regions.append(name)
    return regions


def stop_pid(pid: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL (the server and the stubs it started) after `timeout` seconds."""
    tree = process_tree(pid)
    regions = _stub_shm_regions(tree)
    if not tree:
        if proc is not None:
            proc.poll()
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        elif not pid_alive(pid):
            break
        time.sleep(0.05)
    else:
        for p in tree:  # the pids of this server's own tree, captured before the SIGTERM
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc is not None:
            proc.wait(10)
    # Stubs watch their parent and exit when it is gone; give them a moment, then make sure.
    deadline = time.monotonic() + 5
    leftovers = [p for p in tree[1:] if pid_alive(p)]
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = [p for p in leftovers if pid_alive(p)]
    for p in leftovers:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in regions:  # gone already after a graceful stop; left behind after a SIGKILL
        Path("/dev/shm", name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------

class TritonServer:
    """One tritonserver process.

    >>> server = TritonServer.from_settings(load_settings().serving).start()
    >>> server.health()       # {'pid': ..., 'live': True, 'ready': True, 'rss_bytes': ...}
    >>> server.stop()
    """

    def __init__(self, repository: Path, *, home: Path, deploy_token: str, deploy_header: str,
                 host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, log_path: Path | None = None, exit_timeout_s: int = 15,
                 extra_args: tuple[str, ...] = (), install_stub_site: bool = True,
                 stub_site: Path | None = None):
        if not deploy_token or any(c in deploy_token for c in ",:= \n"):
            raise ValueError("deploy token must be non-empty and free of ',', ':', '=' and whitespace")
        self.repository = Path(repository).resolve()
        self.home = Path(home)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.deploy_header = deploy_header
        self._deploy_token = deploy_token
        self.log_path = Path(log_path) if log_path else self.home / "logs" / "tritonserver.log"
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self.install_stub_site = install_stub_site
        self.stub_site = stub_site
        self.proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self.start_seconds: float | None = None

    @classmethod
    def from_settings(cls, ss: ServingSettings, **kwargs) -> "TritonServer":
        values = dict(repository=ss.repository, home=ss.triton_home, deploy_token=ss.deploy_token,
                      deploy_header=ss.deploy_header, host=ss.host, http_port=ss.http_port,
                      grpc_port=ss.grpc_port, metrics_port=ss.metrics_port, stub_site=ss.stub_site)
        values.update(kwargs)
        return cls(**values)

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self._pid

    # -- command -----------------------------------------------------------------------------------
    def command(self, layout: WheelLayout | None = None) -> list[str]:
        layout = layout or wheel_layout()
        groups = ",".join(RESTRICTED_GROUPS)
        restriction = f"{groups}:{self.deploy_header}={self._deploy_token}"
        return [
            str(layout.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={self.home / 'backends'}",
            f"--cache-directory={self.home / 'caches'}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            # per-model readiness is what matters: with strict readiness the server-wide
            # /v2/health/ready is 400 during every swap and for good after one failed load
            "--strict-readiness=false",
            "--disable-auto-complete-config",
            "--pinned-memory-pool-byte-size=0",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--log-verbose=0",
            f"--http-restricted-api={restriction}",
            f"--grpc-restricted-protocol={restriction}",
            *self.extra_args,
        ]

    def redacted_command(self) -> list[str]:
        return [a.replace(self._deploy_token, "***") for a in self.command()]

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "TritonServer":
        """Start the server and wait until /v2/health/live answers 200. The server runs in its own
        session: it outlives this Python process unless stop() is called (the CLI's `start` relies
        on that and records the PID)."""
        if self.running():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        layout = wheel_layout()
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        prepare_backend_dir(self.home / "backends", layout)
        prepare_cache_dir(self.home / "caches", layout)
        stub_site = ensure_stub_site(stub_site_dir(self.stub_site)) if self.install_stub_site else stub_site_dir(self.stub_site)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        started = time.monotonic()
        with os.fdopen(fd, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(self.redacted_command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(layout), cwd=self.home, env=server_env(stub_site=stub_site),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            self._wait_live(timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/live"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"tritonserver not live after {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout` s; returns the exit code when this process started it."""
        pid = self.pid
        if pid is None:
            return None
        stop_pid(pid, timeout, self.proc)
        return self.proc.returncode if self.proc is not None else None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def __enter__(self) -> "TritonServer":
        return self.start() if not self.running() else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- observing ---------------------------------------------------------------------------------
    def health(self, timeout: float = 2.0) -> dict:
        """pid, live, ready (server-wide, non-strict), and the memory of the server's process tree."""
        out = {"pid": self.pid, "running": self.running(), "live": False, "ready": False,
               "http": self.http_url, "grpc": self.grpc_url}
        if out["running"]:
            for key in ("live", "ready"):
                try:
                    out[key] = requests.get(f"http://{self.http_url}/v2/health/{key}", timeout=timeout).status_code == 200
                except requests.RequestException:
                    pass
            out.update(tree_memory(self.pid))
        return out

    def memory(self) -> dict:
        """{'processes', 'rss_bytes', 'pss_bytes'} of the server and its backend stubs."""
        return tree_memory(self.pid) if self.pid else {"processes": 0, "rss_bytes": 0, "pss_bytes": 0}

    def rss_bytes(self) -> int:
        return self.memory()["rss_bytes"]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- PID file (the CLI and other processes find a detached server through it) -------------------
    def state(self) -> dict:
        return {"pid": self.pid, "host": self.host, "http_port": self.http_port, "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port, "repository": str(self.repository),
                "log": str(self.log_path), "home": str(self.home)}

    def write_pid_file(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = run_dir / "triton.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        os.replace(tmp, state)
        pid_file = run_dir / "triton.pid"
        pid_file.write_text(f"{self.pid}\n")
        return pid_file

    @classmethod
    def from_pid_file(cls, ss: ServingSettings) -> "TritonServer | None":
        """The detached server recorded under ss.run_dir, if it is still a running tritonserver."""
        try:
            pid = int((ss.run_dir / "triton.pid").read_text().strip())
            state = json.loads((ss.run_dir / "triton.json").read_text())
        except (OSError, ValueError):
            return None
        if not is_tritonserver(pid):
            return None
        server = cls.from_settings(ss, repository=Path(state["repository"]), home=Path(state["home"]),
                                   http_port=state["http_port"], grpc_port=state["grpc_port"],
                                   metrics_port=state["metrics_port"], host=state["host"],
                                   log_path=Path(state["log"]))
        server._pid = pid
        return server

    @staticmethod
    def clear_pid_file(run_dir: Path) -> None:
        for name in ("triton.pid", "triton.json"):
            (run_dir / name).unlink(missing_ok=True)

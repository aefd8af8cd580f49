"""The Python packages the Triton Python-backend stubs see before the venv's: numpy 1.x.

The stub in nvidia-pytriton 0.7.0 (Triton 2.51, python_backend r24.10) is built with a pybind11
that predates numpy 2: under numpy 2 it computes array strides from the wrong descriptor field, so
every input tensor arrives as its first element repeated (FP32 [1.5, 2.5] -> [1.5, 1.5]; a BYTES
tensor's length prefix 03 00 00 00 -> 03 03 03 03, killing the stub) and outputs come back empty.
Measured here; the project's venv must keep numpy 2 (feast 0.67 needs it).

So the server's environment puts a small directory holding numpy 1.26 first on the stubs'
PYTHONPATH; onnxruntime 1.31 and pillow from the venv work with it unchanged. The directory lives
beside the venv (<venv>/triton-stub-site, or GYMOPS_TRITON_STUB_SITE), is installed by
`gymops serving setup` (and on first server start when missing), and is stamped with the
requirements it was built from. The laundry model refuses to load under numpy 2.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path


REQUIREMENTS = ("numpy==1.26.4",)
STAMP = ".gymops-stub-site"


def stub_site_dir(configured: Path | None = None) -> Path:
    """ServingSettings.stub_site when set, else <venv>/triton-stub-site."""
    return Path(configured) if configured else Path(sys.prefix) / "triton-stub-site"


def _wanted() -> str:
    return hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()


def stub_site_ready(path: Path | None = None) -> bool:
    path = path or stub_site_dir()
    try:
        return (path / STAMP).read_text().strip() == _wanted()
    except OSError:
        return False


def ensure_stub_site(path: Path | None = None, quiet: bool = True) -> Path:
    """Install REQUIREMENTS into the stub site (pip --target into a temporary folder, then renamed
    into place) unless the stamp says it is current. Needs the package index once."""
    path = path or stub_site_dir()
    if stub_site_ready(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
           "--no-warn-conflicts", "--target", str(tmp), *REQUIREMENTS]
    if quiet:
        cmd.insert(4, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"installing {', '.join(REQUIREMENTS)} for the Triton stubs failed:\n"
                           f"{(result.stdout or '') + (result.stderr or '')}")
    (tmp / STAMP).write_text(_wanted() + "\n")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path

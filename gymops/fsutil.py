"""Crash-safe file steps shared by the deployer, the version folders and the file history: a file
or folder is fsynced before the rename that publishes it, and the parent after it (a rename is only
durable once its directory is)."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree_files(folder: Path) -> None:
    """fsync every regular file directly in ``folder``, then the folder itself."""
    for p in folder.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(folder)

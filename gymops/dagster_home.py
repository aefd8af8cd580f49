"""DAGSTER_HOME for the current profile: a folder under GYMOPS_HOME with the profile's dagster.yaml."""
from __future__ import annotations

import shutil
from pathlib import Path

from gymops.settings import PROJECT_ROOT


def prepare(settings) -> Path:
    home = settings.home / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "deploy" / f"dagster.{settings.profile}.yaml", home / "dagster.yaml")
    return home

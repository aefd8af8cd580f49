"""The Dagster code location: `dagster dev -w workspace.yaml` (or `make up`) loads it. Built once,
from this process's settings (GYMOPS_*, read by load_settings and nowhere else)."""
from assets.location import build_definitions
from gymops.settings import load_settings

defs = build_definitions(load_settings())

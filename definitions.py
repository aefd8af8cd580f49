"""The Dagster code location: `dagster dev -w workspace.yaml` (or `make up`) loads it."""
import dagster as dg

from assets.history import replicated_history
from resources.feast import FeastResource

defs = dg.Definitions(
    assets=[replicated_history],
    resources={"feast": FeastResource()},
)

from pathlib import Path

import dagster as dg
import pandas as pd

from gymops.settings import load_settings


class PipelineStore(dg.ConfigurableResource):
    """Where the pipeline's artifacts live: partition files, datasets, checkpoints, ONNX models.
    Empty root: $GYMOPS_HOME/pipeline."""

    root: str = ""

    def path(self, *parts: str) -> Path:
        base = Path(self.root) if self.root else load_settings().home / "pipeline"
        path = base.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_frame(self, frame: pd.DataFrame, *parts: str) -> Path:
        path = self.path(*parts)
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # readers see the old partition or the new one, never half of one
        return path

    def read_frame(self, *parts: str) -> pd.DataFrame | None:
        path = self.path(*parts)
        return pd.read_parquet(path) if path.exists() else None

from pathlib import Path

import dagster as dg
import pandas as pd


class PipelineStore(dg.ConfigurableResource):
    """Where the pipeline's artifacts live: partition files, datasets, checkpoints, ONNX models.
    The code location builds it with root = the settings' pipeline_root ($GYMOPS_HOME/pipeline)."""

    root: str

    def path(self, *parts: str) -> Path:
        path = Path(self.root).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def feature_cache(self) -> Path:
        """Trunk feature maps shared by every training (gymops.ml.feature_cache)."""
        return self.path("features")

    def write_frame(self, frame: pd.DataFrame, *parts: str) -> Path:
        path = self.path(*parts)
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # readers see the old partition or the new one, never half of one
        return path

    def read_frame(self, *parts: str) -> pd.DataFrame | None:
        path = self.path(*parts)
        return pd.read_parquet(path) if path.exists() else None

    def read_partitions(self, folder: str, keys: list[str], columns: list[str]) -> tuple[pd.DataFrame, list[str]]:
        """The partition files <folder>/<key>.parquet among ``keys`` as one frame (``columns`` when
        there are no rows), and the keys that have no file (not materialised)."""
        frames, missing = [], []
        for key in keys:
            frame = self.read_frame(folder, f"{key}.parquet")
            (missing.append(key) if frame is None else frames.append(frame))
        frames = [f for f in frames if len(f)]
        return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)), missing

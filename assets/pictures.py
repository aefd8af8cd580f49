"""Pictures in the Dagster UI. Dagster 1.13 has no image metadata type; its own tutorial embeds a
PNG in Markdown metadata as a data URI, which the UI renders when the entry is opened ("Show
Markdown" beside the entry on the asset's or the check's latest materialisation). The PNGs come
from the core (gymops/ml/plots.py, ~20-40 KB each)."""
import base64

import dagster as dg


def picture(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")

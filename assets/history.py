from datetime import datetime, timedelta, timezone

import dagster as dg

from gymops.history import tables as history
from resources.feast import FeastResource


@dg.asset(group_name="ingestion", compute_kind="feast",
          description="What the replicator has landed in Feast's offline store: the training history.")
def replicated_history(context: dg.AssetExecutionContext, feast: FeastResource) -> dg.MaterializeResult:
    tasks = feast.history(history.TASK_CONFIRMATIONS).read().to_pandas()
    faces = feast.history(history.FACE_SAMPLES).read().to_pandas()
    since = datetime.now(timezone.utc) - timedelta(days=7)
    balance = tasks.groupby(["final_result", "corrected"]).size().rename("tasks").reset_index()
    context.log.info("history: %d task confirmations, %d face samples", len(tasks), len(faces))
    return dg.MaterializeResult(metadata={
        "task_confirmations": dg.MetadataValue.int(len(tasks)),
        "face_samples": dg.MetadataValue.int(len(faces)),
        "corrections_last_7_days": dg.MetadataValue.int(feast.corrections_since("laundry", since)),
        "label_balance": dg.MetadataValue.md(balance.to_markdown(index=False) if len(balance) else "(empty)"),
    })

import json

import dagster as dg

from gymops.storage.photos import photo_store_for
from gymops.ingest.replicator import Replicator
from test_replicator import task_event


def test_code_location_loads():
    from definitions import defs

    assert defs.get_assets_def("replicated_history") is not None
    dg.Definitions.validate_loadable(defs)


def test_replicated_history_reports_what_feast_holds(embedded, monkeypatch):
    for key, value in embedded.environment().items():
        monkeypatch.setenv(key, value)
    photo = f"file://{embedded.photo_root}/tasks/BR-1/p.jpg"
    Replicator(embedded).ingest([json.dumps(task_event(photo, corrected=True)) for _ in range(3)], "test")

    from assets.history import replicated_history
    from resources.feast import FeastResource

    result = dg.materialize([replicated_history], resources={"feast": FeastResource()})
    assert result.success
    meta = result.asset_materializations_for_node("replicated_history")[0].metadata
    rows = Replicator(embedded).histories["task_confirmations"].read().num_rows
    assert meta["task_confirmations"].value == rows >= 3
    assert meta["corrections_last_7_days"].value >= 3
    assert "defective" in meta["label_balance"].value

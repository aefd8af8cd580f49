import json

import dagster as dg

from gymops.ingest.replicator import Replicator
from gymops.settings import Settings
from fixtures import task_event


def test_code_location_loads():
    from definitions import defs

    assert defs.get_assets_def("replicated_history") is not None
    dg.Definitions.validate_loadable(defs)


def test_the_location_is_built_from_its_settings(tmp_path):
    """settings.partitions decides the first partitions; settings.gates and settings.retrain become the
    fields of the `gates` and `retrain` resources; every other resource carries the same tree."""
    from assets.location import build_definitions

    settings = Settings(home=tmp_path, ingest_token="t").replace(
        partitions={"start": "2026-10-03", "face_start": "2026-09-20"},
        gates={"val_accuracy": 0.77}, retrain={"urgent_corrections": 444})
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    corrected = defs.get_assets_def("corrected_tasks")
    assert corrected.partitions_def.get_first_partition_key() == "2026-10-03"
    assert defs.get_assets_def("face_samples_daily").partitions_def.get_first_partition_key() == "2026-09-20"
    assert defs.resolve_job_def("face_nightly").partitions_def.get_first_partition_key() == "2026-09-20"
    assert build_definitions(Settings(home=tmp_path)).get_assets_def("corrected_tasks") \
        .partitions_def.get_first_partition_key() == Settings().partitions.start
    resources = defs.resources
    assert resources["gates"].settings() == settings.gates
    assert resources["retrain"].settings().urgent_corrections == 444
    # the resources carry the tree without its secrets (Dagster shows resource fields)
    assert "GYMOPS_INGEST_TOKEN" not in resources["feast"].settings
    shown = settings.replace(ingest_token="")
    assert resources["feast"].tree() == shown and resources["registry"].tree() == shown
    assert resources["pipeline"].root == str(tmp_path / "pipeline")


def test_a_reconstructed_job_carries_the_settings(tmp_path):
    """What a step's process rebuilds: the job of the location made from the settings the run carries."""
    from assets.jobs import reconstructable_job

    settings = Settings(home=tmp_path, ingest_token="t").replace(partitions={"start": "2026-10-05"})
    job = reconstructable_job("laundry_training", settings).get_definition()
    corrected = job.asset_layer.asset_graph.get(dg.AssetKey("corrected_tasks")).partitions_def
    assert corrected.get_first_partition_key() == "2026-10-05"
    with dg.build_resources({"feast": job.resource_defs["feast"]}) as built:
        assert built.feast.tree() == settings.replace(ingest_token="")  # secrets stay out of run storage


def test_replicated_history_reports_what_feast_holds(embedded):
    photo = f"file://{embedded.photo_root}/tasks/BR-1/p.jpg"
    Replicator(embedded).ingest([json.dumps(task_event(photo, corrected=True)) for _ in range(3)], "test")

    from assets.history import replicated_history
    from resources.feast import FeastResource

    result = dg.materialize([replicated_history], resources={"feast": FeastResource.from_settings(embedded)})
    assert result.success
    meta = result.asset_materializations_for_node("replicated_history")[0].metadata
    rows = Replicator(embedded).histories["task_confirmations"].read().num_rows
    assert meta["task_confirmations"].value == rows >= 3
    assert meta["corrections_last_7_days"].value >= 3
    assert "defective" in meta["label_balance"].value

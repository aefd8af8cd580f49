"""Push sources; their batch sources are the history tables of gymops.history.tables, per profile."""
from feast import FileSource, PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from gymops.settings import load_settings
from gymops.history.tables import FACE_SAMPLES, TASK_CONFIRMATIONS

_settings = load_settings()


def _batch_source(table: str):
    if _settings.services:
        return PostgreSQLSource(
            name=f"{table}_history", table=table, timestamp_field="event_timestamp", created_timestamp_column="created"
        )
    return FileSource(
        name=f"{table}_history",
        path=str(_settings.feast_offline_dir / table),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )


task_confirmations_push = PushSource(name=f"{TASK_CONFIRMATIONS}_push", batch_source=_batch_source(TASK_CONFIRMATIONS))
face_samples_push = PushSource(name=f"{FACE_SAMPLES}_push", batch_source=_batch_source(FACE_SAMPLES))

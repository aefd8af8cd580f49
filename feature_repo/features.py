"""Feature views over the push sources. Feature names are the event fields in snake_case."""
from datetime import timedelta

import pyarrow as pa
from feast import FeatureView, Field
from feast.types import Bool, Float64, String, UnixTimestamp

from gymops.history.tables import ENTITY_KEYS, FACE_SAMPLES, TABLES, TASK_CONFIRMATIONS

from data_sources import face_samples_push, task_confirmations_push
from entities import member, task

_FEAST_TYPES = {pa.string(): String, pa.bool_(): Bool, pa.float64(): Float64}
_NOT_FEATURES = {"event_timestamp", "created"}


def _schema(table: str) -> list[Field]:
    return [
        Field(name=c.name, dtype=_FEAST_TYPES.get(c.arrow, UnixTimestamp))
        for c in TABLES[table]
        if c.name not in _NOT_FEATURES and c.name != ENTITY_KEYS[table]
    ]


task_confirmations = FeatureView(
    name=TASK_CONFIRMATIONS,
    entities=[task],
    ttl=timedelta(days=3650),
    schema=_schema(TASK_CONFIRMATIONS),
    source=task_confirmations_push,
    online=True,
    description="Each laundry task's confirmed verdict: the training labels of the laundry model.",
)

face_samples = FeatureView(
    name=FACE_SAMPLES,
    entities=[member],
    ttl=timedelta(days=3650),
    schema=_schema(FACE_SAMPLES),
    source=face_samples_push,
    online=True,
    description="Face photos per member: enrolments and successful entries, for the nightly face batch.",
)

from datetime import datetime

import dagster as dg

from gymops.settings import load_settings


class RegistryResource(dg.ConfigurableResource):
    """The model registry (model_versions) and the outbox of model events, in this tier's database."""

    def _engine(self):
        from gymops.db import engine_for

        return engine_for(load_settings())

    def registry(self):
        """Status changes (activate, reject, rollback) record their event in the outbox, atomically."""
        from gymops.lifecycle.outbox import Outbox
        from gymops.lifecycle.registry import ModelRegistry

        engine = self._engine()
        return ModelRegistry(engine, outbox=Outbox(engine))

    def outbox(self):
        from gymops.lifecycle.outbox import Outbox

        return Outbox(self._engine())

    def last_trained_at(self, model_type: str) -> datetime | None:
        newest = self.registry().history(model_type, limit=1)
        return newest[0].trained_at if newest else None

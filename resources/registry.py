from resources.base import SettingsResource


class RegistryResource(SettingsResource):
    """The model registry (model_versions) and the outbox of model events, in this tier's database.
    The engine (and its create_all) is made once per resource instance."""

    def _engine(self):
        from gymops.db import engine_for

        return self._once("engine", lambda: engine_for(self.tree()))

    def registry(self):
        """Status changes (activate, reject, rollback) record their event in the outbox, atomically."""
        from gymops.lifecycle.registry import ModelRegistry

        return self._once("registry", lambda: ModelRegistry(self._engine(), outbox=self.outbox()))

    def outbox(self):
        from gymops.lifecycle.outbox import Outbox

        return self._once("outbox", lambda: Outbox(self._engine()))

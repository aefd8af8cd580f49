from datetime import datetime

from gymops.history import tables as history
from resources.base import SettingsResource


class FeastResource(SettingsResource):
    """The profile's Feast store and its training history (offline tables)."""

    def store(self):
        """The FeatureStore, opened once per resource instance."""
        from gymops.history.feature_store import open_store

        return self._once("store", lambda: open_store(self.tree()))

    def history(self, table: str):
        return self._once(f"history:{table}", lambda: history.history_for(self.tree(), table))

    def corrections_since(self, model_type: str, since: datetime) -> int:
        return self.history(history.TASK_CONFIRMATIONS).count_since(model_type, since, corrected_only=True)

    def verdicts(self, model_type: str, model_version: str) -> list[bool]:
        """Corrected or not, each confirmation of a task ``model_version`` judged, in event order."""
        return self.history(history.TASK_CONFIRMATIONS).verdicts(model_type, model_version)

from datetime import datetime

import dagster as dg

from gymops.history import tables as history
from gymops.settings import load_settings


class FeastResource(dg.ConfigurableResource):
    """The profile's Feast store and its training history (offline tables)."""

    profile: str = ""  # empty: GYMOPS_PROFILE decides

    def settings(self):
        settings = load_settings()
        if self.profile and self.profile != settings.profile:
            raise dg.DagsterInvalidConfigError(
                f"FeastResource.profile={self.profile!r} but GYMOPS_PROFILE={settings.profile!r}", [], None)
        return settings

    def store(self):
        from gymops.history.feature_store import open_store

        return open_store(self.settings())

    def history(self, table: str):
        return history.history_for(self.settings(), table)

    def corrections_since(self, model_type: str, since: datetime) -> int:
        return history.corrections_since(self.settings(), model_type, since)

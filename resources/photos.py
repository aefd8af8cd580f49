from resources.base import SettingsResource


class PhotoStoreResource(SettingsResource):
    """The profile's photo store: a local folder (embedded) or S3-compatible storage (services)."""

    def get(self, url: str) -> bytes:
        return self.store().get(url)

    def store(self):
        from gymops.storage.photos import photo_store_for

        return self._once("store", lambda: photo_store_for(self.tree()))

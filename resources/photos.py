import dagster as dg

from gymops.settings import load_settings


class PhotoStoreResource(dg.ConfigurableResource):
    """The profile's photo store: a local folder (embedded) or S3-compatible storage (services)."""

    def get(self, url: str) -> bytes:
        return self.store().get(url)

    def store(self):
        from gymops.storage.photos import photo_store_for

        return photo_store_for(load_settings())

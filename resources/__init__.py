"""Dagster resources: the only place the Dagster code talks to Feast, the registry database, the
broker and the photo store. Each is a ConfigurableResource over the plain-Python core in gymops/."""
from resources.feast import FeastResource

__all__ = ["FeastResource"]

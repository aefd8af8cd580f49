"""The base of the resources that reach the core: they carry the settings tree as a field."""
from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from gymops.settings import Settings


class SettingsResource(dg.ConfigurableResource):
    """A resource over the plain-Python core, which takes a ``Settings``. The field ``settings`` is
    the tree in its JSON form (``Settings.to_dict()``): built once in the code location (or by a
    test) from explicit settings, never read from the environment here. The parsed tree and
    whatever a subclass opens (engine, Feast store, photo store) are made once per resource
    instance (PrivateAttr), not per call."""

    settings: dict[str, str]

    _tree: Settings | None = PrivateAttr(default=None)
    _opened: dict | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings, **fields):
        return cls(settings=settings.to_dict(), **fields)

    def tree(self) -> Settings:
        """The settings this resource was built with."""
        if self._tree is None:
            self._tree = Settings.from_dict(self.settings)
        return self._tree

    def _once(self, name: str, make):
        """``make()`` the first time ``name`` is asked for; the same object afterwards."""
        if self._opened is None:
            self._opened = {}
        if name not in self._opened:
            self._opened[name] = make()
        return self._opened[name]

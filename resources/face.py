from pathlib import Path

from resources.base import SettingsResource


class FaceResource(SettingsResource):
    """The face model's release (registry, version folders, galleries and Triton's public name, moved
    together: gymops.face.release) and the nightly batch's settings (settings.face: window, gate)."""

    def release(self, registry):
        """The release over ``registry`` (RegistryResource.registry()), made once per resource instance."""
        from gymops.face.release import open_release

        return self._once("release", lambda: open_release(self.tree(), registry))

    def limits(self):
        from gymops.face.nightly import gate_limits

        return gate_limits(self.tree().face)

    def assets_dir(self) -> Path:
        return self.tree().face.assets_dir

    def window_days(self) -> int:
        return self.tree().face.window_days

from resources.base import SettingsResource


class TritonResource(SettingsResource):
    """The serving Triton (explicit model control over gRPC with the deployer's token) and its
    model repository. The server itself runs outside Dagster (`make up`, `python -m gymops.serving start`)."""

    def serving(self):
        from gymops.settings import ensure_tokens

        return self._once("serving", lambda: ensure_tokens(self.tree()).serving)

    def deployer(self, registry):
        from gymops.deploy.deployer import Deployer

        return Deployer.for_settings(registry, self.serving())

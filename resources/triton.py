import dagster as dg

from gymops.config import load_settings


class TritonResource(dg.ConfigurableResource):
    """The serving Triton (explicit model control over gRPC with the deployer's token) and its
    model repository. The server itself runs outside Dagster (`make up`, `python -m gymops.serving start`)."""

    def serving(self):
        from gymops.serving.settings import serving_settings

        return serving_settings(load_settings())

    def deployer(self, registry):
        from gymops.deploy import Deployer

        return Deployer.for_settings(registry, self.serving())

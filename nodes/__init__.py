"""ipgraph node families. Importing this package registers every node type into engine.REGISTRY."""

from . import conditioning, image_io, latent, loaders, mask, sampling  # noqa: F401

"""ipgraph node families. Importing this package registers every node type into engine.REGISTRY."""

from . import (  # noqa: F401
    clip_vision,
    conditioning,
    embeds,
    image_io,
    ipadapter_nodes,
    latent,
    loaders,
    mask,
    sampling,
)

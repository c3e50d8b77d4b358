"""ipgraph node families. Importing this package registers every node type into engine.REGISTRY."""

from . import (  # noqa: F401, E501
    clip_vision,
    conditioning,
    controlnet,
    embeds,
    image_io,
    image_ops,
    inpaint,
    ipadapter_nodes,
    latent,
    loaders,
    mask,
    sampling,
)

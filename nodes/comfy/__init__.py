"""ComfyUI's core nodes that ipgraph did not already have under the same name, as thin typed adapters.

Each node here has ComfyUI's class name, input names in ComfyUI's order, its defaults, bounds and choices, its
category and display name, and output fields named as ComfyUI's RETURN_NAMES (source: ComfyUI's ``nodes.py``
and ``comfy_extras/``). The behaviour lives once, in the ipgraph family that owns it; an adapter only maps names.
Nodes whose ipgraph name already was ComfyUI's (CLIPTextEncode, VAEDecode, LoadImage, ControlNetApply, ...)
became ComfyUI's in place, in their own family.
"""

from . import image, latent, loaders, upscale  # noqa: F401

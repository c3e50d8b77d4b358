"""SaveImageWebsocket (ComfyUI's ``websocket_image_save``): full-size PNGs sent to the submitting client as binary
websocket frames instead of files.

The node hands each image to the run's progress channel as ``("PNG", image, None)`` (format, PIL image, no size
limit), the same form ComfyUI's node gives its progress bar; the server sends it as a preview frame (8-byte
header: event 1, format 2 = PNG, then the PNG bytes; or the metadata form to clients that ask for it). It is
never cached (ComfyUI's IS_CHANGED returns the time): the client needs the frames on every run.
"""

from __future__ import annotations

from typing import Any

from ipgraph.engine import REGISTRY, NodeContext, NodeInputs, NodeOutputs, Socket, node

from .image_io import tensor_to_pils


class SaveImageWebsocketIn(NodeInputs):
    images: Any = Socket("IMAGE")


class SaveImageWebsocketOut(NodeOutputs):
    pass


def save_image_websocket(inp: SaveImageWebsocketIn, ctx: NodeContext) -> SaveImageWebsocketOut:
    """Send the images to the client over the websocket (no file is written)."""
    images = tensor_to_pils(inp.images)
    for step, image in enumerate(images):
        ctx.progress(step, len(images), ("PNG", image, None))
    return SaveImageWebsocketOut()


if "SaveImageWebsocket" not in REGISTRY:  # ComfyUI's core node family may register it first
    node("SaveImageWebsocket", category="api/image", output_node=True, cacheable=False,
         display_name="Save Image (Websocket)")(save_image_websocket)

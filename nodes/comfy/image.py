"""ImageScaleBy, ImageInvert, ImagePadForOutpaint (ComfyUI's nodes.py), over ipgraph's image operations."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..image.image_ops import MAX_SIDE, ImageOut, ScaleMethod, _check_image, scale_image


class ImageScaleByIn(NodeInputs):
    image: Any = Socket("IMAGE")
    upscale_method: ScaleMethod = "nearest-exact"
    scale_by: float = Field(1.0, ge=0.01, le=8.0)


@node("ImageScaleBy", category="image/upscaling", display_name="Upscale Image By")
def image_scale_by(inp: ImageScaleByIn, ctx: NodeContext) -> ImageOut:
    """Resize by a factor: the new size is ``round(side * scale_by)``, as ComfyUI."""
    image = _check_image(inp.image)
    h, w = image.shape[1:3]
    width, height = max(1, round(w * inp.scale_by)), max(1, round(h * inp.scale_by))
    return ImageOut(IMAGE=scale_image(image, width, height, inp.upscale_method, "disabled"))


class ImageInvertIn(NodeInputs):
    image: Any = Socket("IMAGE")


@node("ImageInvert", category="image", display_name="Invert Image")
def image_invert(inp: ImageInvertIn, ctx: NodeContext) -> ImageOut:
    """1 - image."""
    return ImageOut(IMAGE=1.0 - _check_image(inp.image))


class PadForOutpaintIn(NodeInputs):
    image: Any = Socket("IMAGE")
    left: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    top: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    right: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    bottom: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    feathering: int = Field(40, ge=0, le=MAX_SIDE)


class ImageMaskOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")
    MASK: Any = Output("MASK")


def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int,
                  feathering: int) -> torch.Tensor:
    """ComfyUI's ImagePadForOutpaint mask ``[H+top+bottom, W+left+right]``: 1 in the padding; inside the original
    image, with d = the distance (in pixels) to the nearest padded side (a side without padding counts as far
    away), ``((feathering - d) / feathering)²`` where d < feathering, else 0. Feathering applies only when
    ``2 * feathering`` is below both sides of the image."""
    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width)
    if 0 < feathering and feathering * 2 < height and feathering * 2 < width:
        i = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
        j = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
        far_h, far_w = torch.full_like(i, float(height)), torch.full_like(j, float(width))
        d = torch.stack([i if top else far_h, (height - i) if bottom else far_h,
                         j if left else far_w, (width - j) if right else far_w]).amin(0)
        v = (feathering - d) / feathering
        inner = torch.where(d < feathering, v * v, inner)
    mask[top:top + height, left:left + width] = inner
    return mask


@node("ImagePadForOutpaint", category="image", display_name="Pad Image for Outpainting")
def image_pad_for_outpaint(inp: PadForOutpaintIn, ctx: NodeContext) -> ImageMaskOut:
    """Extend the canvas by the given margins, filled with mid-grey (0.5), and the MASK of what to paint
    (see :func:`outpaint_mask`), ready for VAEEncodeForInpaint."""
    image = _check_image(inp.image).float()
    b, h, w, c = image.shape
    out = torch.full((b, h + inp.top + inp.bottom, w + inp.left + inp.right, c), 0.5)
    out[:, inp.top:inp.top + h, inp.left:inp.left + w] = image
    mask = outpaint_mask(h, w, inp.left, inp.top, inp.right, inp.bottom, inp.feathering)
    return ImageMaskOut(IMAGE=out, MASK=mask[None])

"""ImageBatch (ComfyUI core): two image batches as one, so several reference images can feed one IP-Adapter.

ComfyUI's rule: when the sizes differ, image2 is fitted to image1's size first (``common_upscale`` with
"center" crop: the centre region of image2 with image1's aspect ratio, rounded to whole pixels, resized
bilinearly), then the batches are concatenated (image1's images first).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node


def fit_center(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B,H,W,C]`` -> ``[B,height,width,C]``: centre crop to the target aspect, then bilinear resize."""
    s = image.movedim(-1, 1)
    old_h, old_w = s.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        s = s[..., x:old_w - x]
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        s = s[..., y:old_h - y, :]
    return F.interpolate(s, size=(height, width), mode="bilinear").movedim(1, -1)


class ImageBatchIn(NodeInputs):
    image1: Any = Socket("IMAGE")
    image2: Any = Socket("IMAGE")


class ImageBatchOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")


@node("ImageBatch", category="image", display_name="Batch Images")
def image_batch(inp: ImageBatchIn, ctx: NodeContext) -> ImageBatchOut:
    """image1's images, then image2's (fitted to image1's size when it differs)."""
    a, b = inp.image1, inp.image2
    for name, t in (("image1", a), ("image2", b)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"input {name}: expected an IMAGE [B,H,W,C]")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"input image2: it has {b.shape[-1]} channels and image1 has {a.shape[-1]}")
    if a.shape[1:] != b.shape[1:]:
        b = fit_center(b, a.shape[1], a.shape[2])
    return ImageBatchOut(IMAGE=torch.cat((a, b.to(a.dtype)), 0))

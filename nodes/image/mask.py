"""Masks: MaskProcess and MaskResize (ipgraph's) and ComfyUI's mask nodes under their ComfyUI class names,
input names and output names (MASK / IMAGE).

MASK is ``[B,H,W]`` float 0..1 (ComfyUI's convention; 1 = "the region": where an IP-Adapter reference acts,
where inpainting repaints). IMAGE is ``[B,H,W,C]`` float 0..1. Every node returns a new tensor; inputs are never
changed in place.

Inputs are normalised by :func:`as_mask` with one documented rule, so masks made elsewhere (a bool tensor from a
comparison, a uint8 array from a PNG) behave predictably:

* shape ``[H,W]`` is taken as a batch of one, ``[B,1,H,W]`` drops its channel axis; anything else is an error;
* ``bool`` becomes 1.0 / 0.0; ``uint8`` is divided by 255; other integer dtypes are accepted only when every
  value is 0 or 1 (a label mask), otherwise they are refused as ambiguous;
* floating dtypes become float32 and are clamped to 0..1; NaN is refused;
* an empty batch (any zero-sized axis) is refused, and so is a frame above the runtime's pixel limit
  (``Runtime.max_pixels``, 2048x2048 unless raised).

Grow/shrink are morphological max/min pooling (square or, with ``tapered_corners``, a 4-neighbour "plus"
repeated, giving diamond corners), blur a separable Gaussian with replicated borders; all in torch (no OpenCV).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import image_file_fingerprint
from .image_io import ImageFileError, open_image

MAX_SIDE = 16384
MAX_AMOUNT = 4096
DEFAULT_MAX_PIXELS = 2048 * 2048  # the Runtime default, used when a node runs without a Runtime
CATEGORY = "mask"

COMPOSITE_OPS = ("multiply", "add", "subtract", "and", "or", "xor")
CHANNELS = ("red", "green", "blue", "alpha")


# --------------------------------------------------------------------------------------------------- checks
def _max_pixels(ctx: NodeContext | None) -> int:
    return int(getattr(getattr(ctx, "resources", None), "max_pixels", None) or DEFAULT_MAX_PIXELS)


def as_mask(value: Any, name: str = "mask", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Normalise a MASK input to float32 ``[B,H,W]`` in 0..1 (see the module docstring for the rule).

    The result may share memory with ``value`` when nothing needed converting: callers build new tensors from it
    and never write into it.
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a MASK tensor [B,H,W], got {type(value).__name__}")
    shape = list(value.shape)
    if value.ndim == 2:
        value = value[None]
    elif value.ndim == 4 and value.shape[1] == 1:
        value = value[:, 0]
    elif value.ndim != 3:
        raise ValueError(f"{name}: expected a MASK [B,H,W] (or [H,W]), got shape {shape}")
    if value.numel() == 0:
        raise ValueError(f"{name}: the MASK batch is empty (shape {shape})")
    height, width = value.shape[-2:]
    if height * width > max_pixels:
        raise ValueError(f"{name}: the mask is {width}x{height}, above the pixel limit of {max_pixels}")
    if value.dtype == torch.bool:
        return value.float()
    if value.dtype == torch.uint8:
        return value.float() / 255.0
    if not value.is_floating_point():
        if value.is_complex() or not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"{name}: a {value.dtype} mask is ambiguous (only 0/1 integer masks, bool and uint8 "
                             "0..255 are converted); convert it to float 0..1 first")
        return value.float()
    value = value.float()
    if bool(torch.isnan(value).any()):
        raise ValueError(f"{name}: the mask contains NaN values")
    return value.clamp(0.0, 1.0)


def _as_image(value: Any, name: str, max_pixels: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 4:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected an IMAGE batch [B,H,W,C], got {got}")
    if value.numel() == 0:
        raise ValueError(f"{name}: the IMAGE batch is empty (shape {list(value.shape)})")
    height, width = value.shape[1:3]
    if height * width > max_pixels:
        raise ValueError(f"{name}: the image is {width}x{height}, above the pixel limit of {max_pixels}")
    return value.float()


def _size_check(width_field: str = "width", height_field: str = "height", only_for: str | None = None):
    """Validation hook: refuse a requested size above the runtime's pixel limit before anything runs."""

    def check(literals: dict, runtime):
        if only_for is not None and literals.get("operation") != only_for:
            return
        width, height = literals.get(width_field), literals.get(height_field)
        limit = getattr(runtime, "max_pixels", None) or DEFAULT_MAX_PIXELS
        if isinstance(width, int) and isinstance(height, int) and width * height > limit:
            yield width_field, (f"{width}x{height} is above the pixel limit of {limit} "
                                "(raise it with --max-pixels if you mean it)")

    return check


# --------------------------------------------------------------------------------------------------- operations
def invert(mask: torch.Tensor) -> torch.Tensor:
    return 1.0 - mask


def threshold(mask: torch.Tensor, value: float) -> torch.Tensor:
    """1 where the mask is strictly above ``value``, else 0 (ComfyUI's ThresholdMask)."""
    return (mask > value).float()


def _dilate_square(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over a (2r+1)x(2r+1) square, done as two 1-D max pools; pixels outside the image are ignored."""
    x = mask[:, None]
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    x = F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))
    return x[:, 0]


def _dilate_plus(mask: torch.Tensor) -> torch.Tensor:
    """Max over the pixel and its 4 neighbours (outside the image is ignored)."""
    x = mask[:, None]
    vertical = F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(x, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(vertical, horizontal)[:, 0]


def grow(mask: torch.Tensor, pixels: int, tapered_corners: bool = True,
         ctx: NodeContext | None = None) -> torch.Tensor:
    """Grow (``pixels`` > 0) or shrink (< 0) by morphological max / min.

    Square corners: one max pool over a (2n+1)² square. Tapered corners: the 4-neighbour plus applied n times (a
    single pixel grown by 1 becomes a plus, by n a diamond), as ComfyUI's GrowMask. Outside the image is ignored,
    so shrinking does not eat in from the image border.
    """
    if pixels == 0:
        return mask.clone()
    sign = 1.0 if pixels > 0 else -1.0
    x = mask * sign  # min(m) = -max(-m)
    n = abs(pixels)
    if not tapered_corners:
        x = _dilate_square(x, n)
    else:
        for step in range(n):
            x = _dilate_plus(x)
            if ctx is not None and step % 64 == 63:
                ctx.check_cancelled()
    return x * sign


def _gaussian_1d(radius: int, sigma: float) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return g / g.sum()


def blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian of radius ``radius`` (kernel 2r+1 taps, sigma = r/2), borders replicated."""
    if radius == 0:
        return mask.clone()
    g = _gaussian_1d(radius, radius / 2.0).to(mask.device)
    x = mask[:, None]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return x[:, 0].clamp(0.0, 1.0)


def feather(mask: torch.Tensor, pixels: int, ctx: NodeContext | None = None) -> torch.Tensor:
    """Fade the mask out towards its own edge over ``pixels`` pixels, never spilling outside it.

    The mean of the mask shrunk by 0, 1, ..., n-1 pixels (square neighbourhood). For a hard mask that is
    ``min(d, n) / n`` with ``d`` the chessboard distance (1 for the outermost pixels) to the nearest pixel
    outside the mask: the edge pixels get 1/n, pixels n deep and further keep 1. The image border is not an edge.
    """
    if pixels == 0:
        return mask.clone()
    total = mask.clone()
    current = mask
    for step in range(1, pixels):
        current = -_dilate_square(-current, 1)
        total = total + current
        if ctx is not None and step % 64 == 63:
            ctx.check_cancelled()
    return total / pixels


def feather_edges(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """ComfyUI's FeatherMask: linear ramps from the image sides, (i+1)/n at the i-th pixel from a side.

    Ramps from opposite sides multiply where they overlap, as do the corner ramps.
    """
    height, width = mask.shape[-2:]

    def ramp(size: int, start: int, end: int) -> torch.Tensor:
        i = torch.arange(size, dtype=torch.float32)
        r = torch.ones(size)
        if start > 0:
            r = r * torch.where(i < start, (i + 1) / start, torch.ones(size))
        if end > 0:
            j = size - 1 - i
            r = r * torch.where(j < end, (j + 1) / end, torch.ones(size))
        return r

    rows = ramp(height, top, bottom).to(mask.device)
    cols = ramp(width, left, right).to(mask.device)
    return mask * rows[:, None] * cols[None, :]


def _interpolate(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = mask[:, None]
    if x.shape[-2:] == (height, width):
        return mask.clone()
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    return x[:, 0].clamp(0.0, 1.0)


def resize(mask: torch.Tensor, width: int, height: int,
           mode: Literal["stretch", "keep_aspect_pad", "keep_aspect_crop"] = "stretch") -> torch.Tensor:
    """Resize to ``width`` x ``height`` (bilinear, antialiased when shrinking).

    ``stretch`` ignores the aspect ratio; ``keep_aspect_pad`` fits the whole mask inside and pads the rest with 0
    (outside the region), centred; ``keep_aspect_crop`` covers the target and crops the overflow, centred.
    """
    src_h, src_w = mask.shape[-2:]
    if mode == "stretch":
        return _interpolate(mask, height, width)
    scale = (min if mode == "keep_aspect_pad" else max)(width / src_w, height / src_h)
    new_w = max(1, round(src_w * scale))
    new_h = max(1, round(src_h * scale))
    if mode == "keep_aspect_pad":
        new_w, new_h = min(new_w, width), min(new_h, height)
        scaled = _interpolate(mask, new_h, new_w)
        out = mask.new_zeros((mask.shape[0], height, width))
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[:, top:top + new_h, left:left + new_w] = scaled
        return out
    new_w, new_h = max(new_w, width), max(new_h, height)
    scaled = _interpolate(mask, new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return scaled[:, top:top + height, left:left + width].clone()


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """Combine ``source`` placed with its top-left corner at (x, y) into ``destination``; clipped; result 0..1.

    Batches broadcast when one of them is 1. and/or/xor count a value as set when it is above 0.5.
    """
    if operation not in COMPOSITE_OPS:
        raise ValueError(f"operation: unknown {operation!r}; choose one of {', '.join(COMPOSITE_OPS)}")
    b_dst, b_src = destination.shape[0], source.shape[0]
    if b_dst != b_src and 1 not in (b_dst, b_src):
        raise ValueError(f"source: batch of {b_src} cannot combine with a destination batch of {b_dst}")
    batch = max(b_dst, b_src)
    out = destination.expand(batch, -1, -1).clone()
    source = source.to(out.device).expand(batch, -1, -1)
    dst_h, dst_w = out.shape[-2:]
    src_h, src_w = source.shape[-2:]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + src_h, dst_h), min(x + src_w, dst_w)
    if bottom <= top or right <= left:
        return out
    src = source[:, top - y:bottom - y, left - x:right - x]
    dst = out[:, top:bottom, left:right]
    if operation == "multiply":
        result = dst * src
    elif operation == "add":
        result = dst + src
    elif operation == "subtract":
        result = dst - src
    else:
        a, b = dst > 0.5, src > 0.5
        result = {"and": a & b, "or": a | b, "xor": a ^ b}[operation].float()
    out[:, top:bottom, left:right] = result.clamp(0.0, 1.0)
    return out


# --------------------------------------------------------------------------------------------------- outputs
class MaskOut(NodeOutputs):
    mask: Any = Output("MASK")


class ImageOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")


class ComfyMaskOut(NodeOutputs):
    """ComfyUI's mask nodes name their output MASK (ipgraph/1 documents said ``mask``: OLD_MASK renames it)."""

    MASK: Any = Output("MASK")


OLD_MASK = {"mask": "MASK"}


def _mask_in(description: str = "the mask (1 = the region)") -> Any:
    return Socket("MASK", description=description)


# --------------------------------------------------------------------------------------------------- MaskProcess
class MaskProcessIn(NodeInputs):
    mask: Any = _mask_in()
    operation: Literal["resize", "threshold", "invert", "grow", "shrink", "blur", "feather"] = Field(
        "threshold", description="what to do with the mask (see the node description)")
    width: int = Field(512, ge=1, le=MAX_SIDE, description="resize: target width in pixels")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="resize: target height in pixels")
    resize_mode: Literal["stretch", "keep_aspect_pad", "keep_aspect_crop"] = Field(
        "stretch", description="resize: stretch to the size, or keep the aspect ratio and pad with 0 / crop")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="threshold: values above it become 1, others 0")
    amount: int = Field(4, ge=0, le=MAX_AMOUNT,
                        description="grow/shrink/blur/feather: distance in pixels (blur: the Gaussian's radius)")
    tapered_corners: bool = Field(True, description="grow/shrink: diamond (plus-shaped steps) instead of square")


@node("MaskProcess", category=CATEGORY, check=_size_check(only_for="resize"), display_name="Mask Process")
def mask_process(inp: MaskProcessIn, ctx: NodeContext) -> MaskOut:
    """One node for the usual mask edits (confining an IP-Adapter reference to a region, preparing inpainting).

    - resize: to width x height (bilinear, antialiased when shrinking); resize_mode stretch, keep_aspect_pad
      (fit inside, pad with 0, centred) or keep_aspect_crop (cover, crop the overflow, centred).
    - threshold: 1 where the mask is above `threshold`, else 0.
    - invert: 1 - mask.
    - grow: expand the region by `amount` pixels (morphological max; plus-shaped steps with tapered_corners,
      a square otherwise).
    - shrink: the reverse of grow (morphological min); the image border does not count as outside.
    - blur: separable Gaussian of radius `amount` (sigma = amount/2), borders replicated.
    - feather: fade the region out towards its own edge over `amount` pixels (edge pixels 1/amount, pixels
      `amount` deep keep their value); never spills outside the region.
    """
    mask = as_mask(inp.mask, "mask", _max_pixels(ctx))
    op = inp.operation
    if op == "resize":
        out = resize(mask, inp.width, inp.height, inp.resize_mode)
    elif op == "threshold":
        out = threshold(mask, inp.threshold)
    elif op == "invert":
        out = invert(mask)
    elif op == "grow":
        out = grow(mask, inp.amount, inp.tapered_corners, ctx)
    elif op == "shrink":
        out = grow(mask, -inp.amount, inp.tapered_corners, ctx)
    elif op == "blur":
        out = blur(mask, inp.amount)
    elif op == "feather":
        out = feather(mask, inp.amount, ctx)
    else:  # validation keeps this out; model_construct does not re-check
        raise ValueError(f"operation: unknown {op!r}")
    return MaskOut(mask=out)


# --------------------------------------------------------------------------------------------------- ComfyUI nodes
class LoadImageMaskIn(NodeInputs):
    image: str = Field(..., min_length=1, description="image file in the input folder",
                       json_schema_extra={"image_upload": True})
    channel: Literal["alpha", "red", "green", "blue"] = Field(
        "alpha", description="alpha gives 1 - alpha (transparent = 1) as ComfyUI; colour channels as they are")


def _load_mask_check(literals: dict, runtime):
    if runtime is None or not hasattr(runtime, "image_path"):
        return
    try:
        open_image(runtime.image_path(literals["image"]), runtime.max_pixels).close()
    except (FileNotFoundError, ImageFileError) as exc:
        yield "image", str(exc)


def load_image_mask(path, channel: str, max_pixels: int) -> torch.Tensor:
    image = open_image(path, max_pixels)
    if image.mode.startswith("I"):  # 16-bit greyscale PNGs: 0..65535 -> 0..255
        image = image.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    image = image.convert("RGBA")  # greyscale gives its grey value for each colour; no alpha gives opaque
    band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
    values = torch.from_numpy(np.asarray(image.getchannel(band), dtype=np.float32) / 255.0)[None]
    return 1.0 - values if channel == "alpha" else values


@node("LoadImageMask", category=CATEGORY, check=_load_mask_check, fingerprint=image_file_fingerprint("image"),
      display_name="Load Image (as Mask)", renamed_outputs=OLD_MASK)
def load_image_mask_node(inp: LoadImageMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """Load one channel of an image file as a MASK [1,H,W].

    alpha → 1 - alpha (transparent pixels = 1, ComfyUI's rule; an image without alpha gives all 0);
    red/green/blue → the channel as is (a greyscale image gives its grey value for each).
    """
    runtime = ctx.resources
    if runtime is None or not hasattr(runtime, "image_path"):
        raise RuntimeError("LoadImageMask needs a ipgraph.nodes.core.runtime.Runtime as the engine's resources")
    return ComfyMaskOut(MASK=load_image_mask(runtime.image_path(inp.image), inp.channel, runtime.max_pixels))


class SolidMaskIn(NodeInputs):
    value: float = Field(1.0, ge=0.0, le=1.0, description="the value of every pixel")
    width: int = Field(512, ge=1, le=MAX_SIDE, description="width in pixels")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="height in pixels")


@node("SolidMask", category=CATEGORY, check=_size_check(), renamed_outputs=OLD_MASK)
def solid_mask(inp: SolidMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """A MASK [1,height,width] with every pixel set to `value`."""
    limit = _max_pixels(ctx)
    if inp.width * inp.height > limit:
        raise ValueError(f"width: {inp.width}x{inp.height} is above the pixel limit of {limit}")
    return ComfyMaskOut(MASK=torch.full((1, inp.height, inp.width), float(inp.value), dtype=torch.float32))


class MaskCompositeIn(NodeInputs):
    destination: Any = _mask_in("the mask to draw into")
    source: Any = _mask_in("the mask placed at (x, y)")
    x: int = Field(0, ge=-MAX_SIDE, le=MAX_SIDE, description="left edge of the source in the destination")
    y: int = Field(0, ge=-MAX_SIDE, le=MAX_SIDE, description="top edge of the source in the destination")
    operation: Literal["multiply", "add", "subtract", "and", "or", "xor"] = Field(
        "multiply", description="how the source combines with the destination under it")


@node("MaskComposite", category=CATEGORY, renamed_outputs=OLD_MASK)
def mask_composite(inp: MaskCompositeIn, ctx: NodeContext) -> ComfyMaskOut:
    """Combine `source`, placed with its top-left corner at (x, y), into `destination`.

    The source is clipped to the destination; pixels it does not cover are unchanged; the result is clamped to
    0..1. multiply/add/subtract are arithmetic; and/or/xor count a value above 0.5 as set and give 0 or 1.
    Batches combine when equal or when one of them is 1.
    """
    limit = _max_pixels(ctx)
    destination = as_mask(inp.destination, "destination", limit)
    source = as_mask(inp.source, "source", limit)
    return ComfyMaskOut(MASK=composite(destination, source, inp.x, inp.y, inp.operation))


class InvertMaskIn(NodeInputs):
    mask: Any = _mask_in()


@node("InvertMask", category=CATEGORY, renamed_outputs=OLD_MASK)
def invert_mask(inp: InvertMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """1 - mask."""
    return ComfyMaskOut(MASK=invert(as_mask(inp.mask, "mask", _max_pixels(ctx))))


class GrowMaskIn(NodeInputs):
    mask: Any = _mask_in()
    expand: int = Field(0, ge=-MAX_AMOUNT, le=MAX_AMOUNT, description="pixels to grow by; negative shrinks")
    tapered_corners: bool = Field(True, description="plus-shaped steps (diamond corners) instead of a square")


@node("GrowMask", category=CATEGORY, renamed_outputs=OLD_MASK)
def grow_mask(inp: GrowMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """Grow the region by `expand` pixels (morphological max), or shrink it when negative (min).

    With tapered_corners each pixel step uses the 4-neighbour plus (a single pixel grown by 1 is a plus), without
    it a 3x3 square (a single pixel grown by 1 is a 3x3 block).
    """
    mask = as_mask(inp.mask, "mask", _max_pixels(ctx))
    return ComfyMaskOut(MASK=grow(mask, inp.expand, inp.tapered_corners, ctx))


class FeatherMaskIn(NodeInputs):
    mask: Any = _mask_in()
    left: int = Field(0, ge=0, le=MAX_SIDE, description="ramp width from the left side, pixels")
    top: int = Field(0, ge=0, le=MAX_SIDE, description="ramp height from the top, pixels")
    right: int = Field(0, ge=0, le=MAX_SIDE, description="ramp width from the right side, pixels")
    bottom: int = Field(0, ge=0, le=MAX_SIDE, description="ramp height from the bottom, pixels")


@node("FeatherMask", category=CATEGORY, renamed_outputs=OLD_MASK)
def feather_mask(inp: FeatherMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """Fade the mask towards the image sides: the i-th pixel from a side (0-based) is multiplied by (i+1)/n."""
    mask = as_mask(inp.mask, "mask", _max_pixels(ctx))
    return ComfyMaskOut(MASK=feather_edges(mask, inp.left, inp.top, inp.right, inp.bottom))


class ThresholdMaskIn(NodeInputs):
    mask: Any = _mask_in()
    value: float = Field(0.5, ge=0.0, le=1.0, description="values above it become 1, the others 0")


@node("ThresholdMask", category=CATEGORY, renamed_outputs=OLD_MASK)
def threshold_mask(inp: ThresholdMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """1 where the mask is above `value`, 0 elsewhere."""
    return ComfyMaskOut(MASK=threshold(as_mask(inp.mask, "mask", _max_pixels(ctx)), inp.value))


class MaskResizeIn(NodeInputs):
    mask: Any = _mask_in()
    width: int = Field(512, ge=1, le=MAX_SIDE, description="target width in pixels")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="target height in pixels")
    resize_mode: Literal["stretch", "keep_aspect_pad", "keep_aspect_crop"] = Field(
        "stretch", description="stretch to the size, or keep the aspect ratio and pad with 0 / crop (centred)")


@node("MaskResize", category=CATEGORY, check=_size_check())
def mask_resize(inp: MaskResizeIn, ctx: NodeContext) -> MaskOut:
    """Resize a mask to width x height (bilinear, antialiased when shrinking)."""
    mask = as_mask(inp.mask, "mask", _max_pixels(ctx))
    return MaskOut(mask=resize(mask, inp.width, inp.height, inp.resize_mode))


class MaskToImageIn(NodeInputs):
    mask: Any = _mask_in()


@node("MaskToImage", category=CATEGORY, display_name="Convert Mask to Image",
      renamed_outputs={"image": "IMAGE"})
def mask_to_image(inp: MaskToImageIn, ctx: NodeContext) -> ImageOut:
    """A grey IMAGE [B,H,W,3] showing the mask (every channel = the mask)."""
    mask = as_mask(inp.mask, "mask", _max_pixels(ctx))
    return ImageOut(IMAGE=mask[..., None].repeat(1, 1, 1, 3))


class ImageToMaskIn(NodeInputs):
    image: Any = Socket("IMAGE", description="the image to take a channel from")
    channel: Literal["red", "green", "blue", "alpha"] = Field("red", description="the channel that becomes the mask")


@node("ImageToMask", category=CATEGORY, display_name="Convert Image to Mask", renamed_outputs=OLD_MASK)
def image_to_mask(inp: ImageToMaskIn, ctx: NodeContext) -> ComfyMaskOut:
    """One channel of an IMAGE as a MASK, values as they are (clamped to 0..1).

    alpha of an image without an alpha channel is 1 (opaque); a one-channel image gives its only channel for
    red/green/blue.
    """
    image = _as_image(inp.image, "image", _max_pixels(ctx))
    channels = image.shape[-1]
    index = CHANNELS.index(inp.channel)
    if inp.channel == "alpha" and channels < 4:
        out = torch.ones(image.shape[:3], dtype=torch.float32, device=image.device)
    else:
        out = image[..., index if channels > index else 0].clamp(0.0, 1.0)  # clamp returns a new tensor
    return ComfyMaskOut(MASK=out)

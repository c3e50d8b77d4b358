"""ComfyUI's latent nodes (nodes.py): LatentUpscale, LatentUpscaleBy, LatentComposite, LatentBlend,
RepeatLatentBatch, LatentFromBatch. LATENT is ipgraph's :class:`Latent`; every node returns a new one, the
noise mask and inpainting concat carried along as ComfyUI carries ``noise_mask``.

Left out: ComfyUI's ``batch_index`` bookkeeping (ipgraph's KSampler draws
one noise tensor for the whole batch; see the README).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import Latent
from ..image.image_ops import MAX_SIDE, common_upscale

LatentMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


class LatentOut(NodeOutputs):
    LATENT: Any = Output("LATENT")


def _latent(value: Any, name: str) -> Latent:
    if not isinstance(value, Latent) or value.samples.ndim != 4:
        raise ValueError(f"{name}: expected a LATENT, got {type(value).__name__}")
    return value


def _resized(latent: Latent, width: int, height: int, method: str, crop: str) -> Latent:
    """New samples at width x height (latent pixels); a noise mask / concat follow with the same operation."""
    samples = common_upscale(latent.samples, width, height, method, crop)
    extra = {k: common_upscale(getattr(latent, k), width, height, method, crop)
             for k in ("noise_mask", "concat") if getattr(latent, k) is not None}
    return latent.replace(samples=samples, **extra)


class LatentUpscaleIn(NodeInputs):
    samples: Any = Socket("LATENT")
    upscale_method: LatentMethod = "nearest-exact"
    width: int = Field(512, ge=0, le=MAX_SIDE, multiple_of=8, description="pixels (0 = keep the aspect ratio)")
    height: int = Field(512, ge=0, le=MAX_SIDE, multiple_of=8, description="pixels (0 = keep the aspect ratio)")
    crop: Literal["disabled", "center"] = "disabled"


@node("LatentUpscale", category="latent", display_name="Upscale Latent")
def latent_upscale(inp: LatentUpscaleIn, ctx: NodeContext) -> LatentOut:
    """Resize to width x height pixels (latent = pixels // 8), at least 64 pixels a side; 0 keeps the aspect
    ratio from the other side, both 0 return the latent unchanged (ComfyUI's rules)."""
    latent = _latent(inp.samples, "samples")
    if inp.width == 0 and inp.height == 0:
        return LatentOut(LATENT=latent)
    h, w = latent.samples.shape[-2:]
    width, height = inp.width, inp.height
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width, height = max(64, width), max(64, height)
    return LatentOut(LATENT=_resized(latent, width // 8, height // 8, inp.upscale_method, inp.crop))


class LatentUpscaleByIn(NodeInputs):
    samples: Any = Socket("LATENT")
    upscale_method: LatentMethod = "nearest-exact"
    scale_by: float = Field(1.5, ge=0.01, le=8.0)


@node("LatentUpscaleBy", category="latent", display_name="Upscale Latent By")
def latent_upscale_by(inp: LatentUpscaleByIn, ctx: NodeContext) -> LatentOut:
    """Resize by a factor: new latent size ``round(side * scale_by)``."""
    latent = _latent(inp.samples, "samples")
    h, w = latent.samples.shape[-2:]
    width, height = max(1, round(w * inp.scale_by)), max(1, round(h * inp.scale_by))
    return LatentOut(LATENT=_resized(latent, width, height, inp.upscale_method, "disabled"))


class LatentCompositeIn(NodeInputs):
    samples_to: Any = Socket("LATENT")
    samples_from: Any = Socket("LATENT")
    x: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    feather: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)


def composite(to: torch.Tensor, src: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """ComfyUI's LatentComposite, in latent units (x, y, feather already // 8): ``src`` (clipped to ``to``) pasted
    at (x, y). With feather f, the pasted block is blended as ``src * m + to * (1 - m)`` where m ramps
    (t + 1) / f over the t-th row/column from each of its edges that lies inside ``to`` (edges on the border of
    ``to`` are not feathered); ramps of overlapping edges multiply."""
    out = to.clone()
    src = src[:, :, :to.shape[2] - y, :to.shape[3] - x]
    if src.shape[2] <= 0 or src.shape[3] <= 0:
        return out
    h, w = src.shape[2:]
    region = out[:, :, y:y + h, x:x + w]
    if feather == 0:
        out[:, :, y:y + h, x:x + w] = src
        return out
    rows, cols = torch.ones(h), torch.ones(w)
    for t in range(feather):
        rate = (t + 1) / feather
        if y != 0 and t < h:
            rows[t] *= rate
        if y + h < to.shape[2] and t < h:
            rows[h - 1 - t] *= rate
        if x != 0 and t < w:
            cols[t] *= rate
        if x + w < to.shape[3] and t < w:
            cols[w - 1 - t] *= rate
    mask = (rows[:, None] * cols[None, :]).to(src)
    out[:, :, y:y + h, x:x + w] = src * mask + region * (1 - mask)
    return out


@node("LatentComposite", category="latent", display_name="Latent Composite")
def latent_composite(inp: LatentCompositeIn, ctx: NodeContext) -> LatentOut:
    """Paste samples_from into samples_to at (x, y) pixels, optionally with feathered edges (:func:`composite`)."""
    to, src = _latent(inp.samples_to, "samples_to"), _latent(inp.samples_from, "samples_from")
    if src.samples.shape[:2] != to.samples.shape[:2] and src.samples.shape[0] != 1:
        raise ValueError(f"samples_from: a batch of {src.samples.shape[0]} cannot be pasted into a batch of "
                         f"{to.samples.shape[0]}")
    samples = composite(to.samples, src.samples.to(to.samples), inp.x // 8, inp.y // 8, inp.feather // 8)
    return LatentOut(LATENT=to.replace(samples=samples))


class LatentBlendIn(NodeInputs):
    samples1: Any = Socket("LATENT")
    samples2: Any = Socket("LATENT")
    blend_factor: float = Field(0.5, ge=0.0, le=1.0)


@node("LatentBlend", category="_for_testing", display_name="Latent Blend")
def latent_blend(inp: LatentBlendIn, ctx: NodeContext) -> LatentOut:
    """``samples1 * blend_factor + samples2 * (1 - blend_factor)``; samples2 of another size is first resized to
    samples1's (bicubic, centre crop), as ComfyUI. The rest of samples1's latent (noise mask) is kept."""
    a, b = _latent(inp.samples1, "samples1"), _latent(inp.samples2, "samples2")
    s1, s2 = a.samples, b.samples
    if s1.shape != s2.shape:
        s2 = common_upscale(s2, s1.shape[3], s1.shape[2], "bicubic", "center")
    return LatentOut(LATENT=a.replace(samples=s1 * inp.blend_factor + s2 * (1 - inp.blend_factor)))


class RepeatLatentBatchIn(NodeInputs):
    samples: Any = Socket("LATENT")
    amount: int = Field(1, ge=1, le=64)


@node("RepeatLatentBatch", category="latent/batch", display_name="Repeat Latent Batch")
def repeat_latent_batch(inp: RepeatLatentBatchIn, ctx: NodeContext) -> LatentOut:
    """The batch repeated ``amount`` times (a noise mask of one image stays one, as ComfyUI)."""
    latent = _latent(inp.samples, "samples")
    extra = {}
    if latent.noise_mask is not None and latent.noise_mask.shape[0] > 1:
        extra["noise_mask"] = latent.noise_mask.repeat(inp.amount, 1, 1, 1)
    if latent.concat is not None:
        extra["concat"] = latent.concat.repeat(inp.amount, 1, 1, 1)
    return LatentOut(LATENT=latent.replace(samples=latent.samples.repeat(inp.amount, 1, 1, 1), **extra))


class LatentFromBatchIn(NodeInputs):
    samples: Any = Socket("LATENT")
    batch_index: int = Field(0, ge=0, le=63)
    length: int = Field(1, ge=1, le=64)


def _pick(t: torch.Tensor, n: int, start: int, length: int) -> torch.Tensor:
    if t.shape[0] == 1:
        return t.clone()
    if t.shape[0] < n:
        t = t.repeat(math.ceil(n / t.shape[0]), 1, 1, 1)[:n]
    return t[start:start + length].clone()


@node("LatentFromBatch", category="latent/batch", display_name="Latent From Batch")
def latent_from_batch(inp: LatentFromBatchIn, ctx: NodeContext) -> LatentOut:
    """``length`` images from ``batch_index`` on, both clipped to the batch (ComfyUI's rule)."""
    latent = _latent(inp.samples, "samples")
    n = latent.samples.shape[0]
    start = min(n - 1, inp.batch_index)
    length = min(n - start, inp.length)
    extra = {k: _pick(getattr(latent, k), n, start, length)
             for k in ("noise_mask", "concat") if getattr(latent, k) is not None}
    return LatentOut(LATENT=latent.replace(samples=latent.samples[start:start + length].clone(), **extra))

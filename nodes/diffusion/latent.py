"""Latents: EmptyLatentImage, VAEEncode, VAEDecode (ComfyUI's class names, inputs and output names).

LATENT holds samples already multiplied by the VAE's scaling factor (what the UNet sees), as diffusers'
pipelines and ComfyUI keep them.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node
from ipgraph.limits import check_output_size, raise_hint

from ..core.types import Latent, VaeHandle
from ..core.widgets import runtime_of

LATENT_CHANNELS = 4


class EmptyLatentIn(NodeInputs):
    width: int = Field(512, ge=16, le=16384, multiple_of=8, description="image width in pixels")
    height: int = Field(512, ge=16, le=16384, multiple_of=8, description="image height in pixels")
    batch_size: int = Field(1, ge=1, le=4096, description="the number of latent images in the batch")


class LatentOut(NodeOutputs):
    LATENT: Any = Output("LATENT")


OLD_LATENT = {"latent": "LATENT"}  # ipgraph/1 documents named the output in lower case


def _size_check(literals: dict, runtime):
    limits = getattr(runtime, "limits", None)
    width, height = literals.get("width"), literals.get("height")
    if limits is not None and isinstance(width, int) and isinstance(height, int):
        problem = check_output_size(width, height, limits)
        if problem:
            yield "width", problem


@node("EmptyLatentImage", category="latent", check=_size_check, display_name="Empty Latent Image",
      renamed_outputs=OLD_LATENT)
def empty_latent(inp: EmptyLatentIn, ctx: NodeContext) -> LatentOut:
    """An all-zero latent of the given size (text-to-image starts from noise added to it)."""
    samples = torch.zeros(inp.batch_size, LATENT_CHANNELS, inp.height // 8, inp.width // 8)
    return LatentOut(LATENT=Latent(samples))


class VAEEncodeIn(NodeInputs):
    pixels: Any = Socket("IMAGE")
    vae: Any = Socket("VAE")


def check_pixels(images: torch.Tensor, runtime) -> None:
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected an IMAGE batch [B,H,W,3], got shape {list(images.shape)}")
    height, width = images.shape[1:3]
    if height % 8 or width % 8:
        raise ValueError(f"the image is {width}x{height}; both sides must be divisible by 8 "
                         "(resize or crop it first, e.g. with ImageScale)")
    if runtime is not None and height * width > runtime.max_pixels:
        raise ValueError(f"the image is {width}x{height}, above the pixel limit of {runtime.max_pixels}; "
                         f"{raise_hint('max_pixels')}")


@torch.no_grad()
def vae_encode(vae: VaeHandle, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 → scaled latent mean (deterministic, as ComfyUI's VAEEncode)."""
    module = vae.vae
    x = images[..., :3].permute(0, 3, 1, 2).to(device=device, dtype=module.dtype) * 2.0 - 1.0
    # contiguous: the permute above leaves channels-last memory, which changes float rounding downstream
    return module.encode(x).latent_dist.mode().float().cpu().contiguous() * vae.scaling_factor


# Latents decoded per VAE call: a video's frames (the batch) are decoded in chunks, as diffusers'
# enable_vae_slicing / AnimateDiff's decode_chunk_size do, so the decoder's activations stay bounded whatever
# the frame count; batches up to this size take exactly one call, as before.
VAE_DECODE_CHUNK = 8


@torch.no_grad()
def vae_decode(vae: VaeHandle, samples: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scaled latent → IMAGE [B,H,W,C] 0..1 (diffusers' postprocess: x/2 + 0.5, clamped), in frame chunks."""
    module = vae.vae
    out = None
    for start in range(0, samples.shape[0], VAE_DECODE_CHUNK):
        z = samples[start:start + VAE_DECODE_CHUNK].to(device=device, dtype=module.dtype) / vae.scaling_factor
        x = module.decode(z).sample.float()
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        if out is None:  # one preallocated result: no list of chunks plus a concatenated copy
            out = torch.empty((samples.shape[0], *x.shape[1:]), dtype=x.dtype)
        out[start:start + x.shape[0]] = x
    return out


@node("VAEEncode", category="latent", display_name="VAE Encode", renamed_outputs=OLD_LATENT)
def vae_encode_node(inp: VAEEncodeIn, ctx: NodeContext) -> LatentOut:
    """Encode images into a latent (image-to-image starts from it)."""
    runtime = runtime_of(ctx)
    check_pixels(inp.pixels, runtime)
    with runtime.models.on_device(inp.vae.vae, once_per_job=True):
        return LatentOut(LATENT=Latent(vae_encode(inp.vae, inp.pixels, runtime.device)))


class VAEDecodeIn(NodeInputs):
    samples: Any = Socket("LATENT")
    vae: Any = Socket("VAE")


class ImageOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")


@node("VAEDecode", category="latent", display_name="VAE Decode", renamed_outputs={"image": "IMAGE"})
def vae_decode_node(inp: VAEDecodeIn, ctx: NodeContext) -> ImageOut:
    """Decode a latent into images."""
    runtime = runtime_of(ctx)
    if hasattr(runtime, "prepare"):
        runtime.prepare(inp.vae.vae)
    with runtime.models.on_device(inp.vae.vae, once_per_job=True):
        return ImageOut(IMAGE=vae_decode(inp.vae, inp.samples.samples, runtime.device))


@torch.no_grad()
def vae_decode_tiled(vae: VaeHandle, samples: torch.Tensor, device: torch.device, tile_size: int = 512,
                     overlap: int = 64) -> torch.Tensor:
    """``vae_decode`` in ``tile_size`` px tiles overlapping by ``overlap`` px, each seam blended linearly over the
    overlap: diffusers' ``AutoencoderKL.tiled_decode`` (``enable_tiling``) with these sizes. A latent no larger
    than one tile is decoded whole (equal to ``vae_decode``). The decoder's activations then scale with the tile,
    not the image; the pixels differ from a whole decode near the seams (the decoder's receptive field is cut),
    as with diffusers' tiling and ComfyUI's own."""
    module = vae.vae
    tile_latent = max(1, tile_size // 8)
    if samples.shape[-1] <= tile_latent and samples.shape[-2] <= tile_latent or not hasattr(module, "tiled_decode"):
        return vae_decode(vae, samples, device)
    saved = {k: getattr(module, k) for k in ("tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")}
    out = torch.empty((samples.shape[0], samples.shape[2] * 8, samples.shape[3] * 8, 3))
    try:  # the shared module's tiling sizes, for this call only
        module.tile_sample_min_size, module.tile_latent_min_size = tile_size, tile_latent
        module.tile_overlap_factor = min(overlap, tile_size // 2) / tile_size
        for start in range(0, samples.shape[0], VAE_DECODE_CHUNK):
            z = samples[start:start + VAE_DECODE_CHUNK].to(device=device, dtype=module.dtype) / vae.scaling_factor
            x = module.tiled_decode(z).sample.float()
            out[start:start + x.shape[0]] = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
    return out


class VAEDecodeTiledIn(NodeInputs):
    samples: Any = Socket("LATENT")
    vae: Any = Socket("VAE")
    tile_size: int = Field(512, ge=64, le=4096, multiple_of=32, description="tile side in pixels")
    overlap: int = Field(64, ge=0, le=4096, multiple_of=32, description="pixels two tiles share (blended)")
    temporal_size: int = Field(64, ge=8, le=4096, multiple_of=4,
                               description="only used for video VAEs: frames decoded at a time (unused here)")
    temporal_overlap: int = Field(8, ge=4, le=4096, multiple_of=4,
                                  description="only used for video VAEs: frames overlapped (unused here)")


@node("VAEDecodeTiled", category="_for_testing", display_name="VAE Decode (Tiled)")
def vae_decode_tiled_node(inp: VAEDecodeTiledIn, ctx: NodeContext) -> ImageOut:
    """Decode a latent into images tile by tile (bounded memory for large images); the seams are blended over
    ``overlap`` pixels as diffusers' enable_vae_tiling does."""
    runtime = runtime_of(ctx)
    if hasattr(runtime, "prepare"):
        runtime.prepare(inp.vae.vae)
    with runtime.models.on_device(inp.vae.vae, once_per_job=True):
        return ImageOut(IMAGE=vae_decode_tiled(inp.vae, inp.samples.samples, runtime.device, inp.tile_size,
                                               inp.overlap))

"""Latents: EmptyLatentImage, VAEEncode, VAEDecode (ComfyUI's class names, inputs and output names).

LATENT holds samples already multiplied by the VAE's scaling factor (what the UNet sees), as diffusers'
pipelines and ComfyUI keep them.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

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
    limit = getattr(runtime, "max_pixels", None)
    if limit and literals["width"] * literals["height"] > limit:
        yield "width", (f"{literals['width']}x{literals['height']} is above the pixel limit of {limit} "
                        "(raise it with --max-pixels if you mean it)")


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
        raise ValueError(f"the image is {width}x{height}, above the pixel limit of {runtime.max_pixels}")


@torch.no_grad()
def vae_encode(vae: VaeHandle, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 → scaled latent mean (deterministic, as ComfyUI's VAEEncode)."""
    module = vae.vae
    x = images[..., :3].permute(0, 3, 1, 2).to(device=device, dtype=module.dtype) * 2.0 - 1.0
    # contiguous: the permute above leaves channels-last memory, which changes float rounding downstream
    return module.encode(x).latent_dist.mode().float().cpu().contiguous() * vae.scaling_factor


@torch.no_grad()
def vae_decode(vae: VaeHandle, samples: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scaled latent → IMAGE [B,H,W,C] 0..1 (diffusers' postprocess: x/2 + 0.5, clamped)."""
    module = vae.vae
    z = samples.to(device=device, dtype=module.dtype) / vae.scaling_factor
    x = module.decode(z).sample.float()
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


@node("VAEEncode", category="latent", display_name="VAE Encode", renamed_outputs=OLD_LATENT)
def vae_encode_node(inp: VAEEncodeIn, ctx: NodeContext) -> LatentOut:
    """Encode images into a latent (image-to-image starts from it)."""
    runtime = runtime_of(ctx)
    check_pixels(inp.pixels, runtime)
    with runtime.models.on_device(inp.vae.vae):
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
    with runtime.models.on_device(inp.vae.vae):
        return ImageOut(IMAGE=vae_decode(inp.vae, inp.samples.samples, runtime.device))

"""Inpainting: VAEEncodeForInpaint (regular 4-channel checkpoints), InpaintModelConditioning (9-channel
inpainting checkpoints) and SetLatentNoiseMask.

The mask handling is diffusers' StableDiffusionInpaintPipeline, so the oracle tests can compare latents:
the pixel mask is binarised at 0.5 (1 = repaint), the masked image is ``image * (mask < 0.5)`` in [-1, 1]
(the hole becomes mid-grey), and the mask reaches latent size by nearest-neighbour downsampling.

- 4-channel models: the LATENT carries ``noise_mask``; KSampler re-imposes the (re-noised) original latent
  outside the mask after every step, as diffusers does.
- 9-channel models: the LATENT carries ``concat`` = [mask, masked-image latents], which KSampler appends to the
  UNet input at every step. KSampler refuses a 9-channel model fed a plain latent.

Unlike diffusers (which samples the VAE posterior with the generator), ipgraph encodes with the posterior mean,
as its VAEEncode does; the oracle tests hand diffusers these same latents. Unlike ComfyUI's
VAEEncodeForInpaint, the hole is not greyed out before encoding: diffusers' 4-channel pipeline encodes the
untouched image. A mask of another size than the image is resized (bilinear) before binarising.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import Latent
from ..core.widgets import runtime_of
from .latent import check_pixels, vae_encode


def mask_4d(mask: Any, name: str = "mask") -> torch.Tensor:
    """MASK ``[B,H,W]`` (or ``[H,W]``) -> ``[B,1,H,W]`` float; an empty mask is refused."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty MASK [B,H,W], got "
                         f"{list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    mask = mask.float()
    return (mask[None] if mask.ndim == 2 else mask)[:, None]


def fit_mask(mask: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
    """``[B,1,h,w]`` mask resized (bilinear) to height x width and repeated to ``batch``."""
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    if mask.shape[0] != batch:
        if batch % mask.shape[0]:
            raise ValueError(f"mask: {mask.shape[0]} masks do not divide a batch of {batch} images")
        mask = mask.repeat(batch // mask.shape[0], 1, 1, 1)
    return mask


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """diffusers' mask processor: 1 where mask >= 0.5, else 0."""
    return (mask >= 0.5).to(mask.dtype)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate the mask by ``pixels`` in every direction (square neighbourhood), as ComfyUI's grow_mask_by."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Binary pixel mask ``[B,1,H,W]`` -> latent size (nearest, as diffusers' prepare_mask_latents)."""
    return F.interpolate(mask, size=tuple(latent_hw))


def pixel_mask(mask: Any, pixels: torch.Tensor, grow_by: int = 0) -> torch.Tensor:
    """The binary repaint mask ``[B,1,H,W]`` at the image's size."""
    b, h, w = pixels.shape[:3]
    return binarize(grow(fit_mask(mask_4d(mask), h, w, b), grow_by))


def encode(vae, pixels: torch.Tensor, device) -> torch.Tensor:
    """VAEEncode's latents in the standard memory layout. The VAE returns channels-last strides for IMAGE
    input; elementwise ops then keep that layout and the UNet's CPU kernels take another path, so results
    drift from diffusers' in the last bits (amplified over the steps). Contiguous latents avoid that."""
    return vae_encode(vae, pixels, device)


class LatentOut(NodeOutputs):
    LATENT: Any = Output("LATENT")


OLD_LATENT = {"latent": "LATENT"}  # ipgraph/1 documents named the output in lower case


class EncodeForInpaintIn(NodeInputs):
    pixels: Any = Socket("IMAGE")
    vae: Any = Socket("VAE")
    mask: Any = Socket("MASK", description="1 = repaint; resized to the image if its size differs")
    grow_mask_by: int = Field(6, ge=0, le=64, description="dilate the mask by this many pixels first")


@node("VAEEncodeForInpaint", category="latent/inpaint", display_name="VAE Encode (for Inpainting)",
      renamed_outputs=OLD_LATENT)
def vae_encode_for_inpaint(inp: EncodeForInpaintIn, ctx: NodeContext) -> LatentOut:
    """Encode an image for inpainting with a regular (4-channel) checkpoint: the latent carries a noise mask
    and KSampler keeps everything outside it."""
    runtime = runtime_of(ctx)
    check_pixels(inp.pixels, runtime)
    mask = pixel_mask(inp.mask, inp.pixels, inp.grow_mask_by)
    with runtime.models.on_device(inp.vae.vae, once_per_job=True):
        samples = encode(inp.vae, inp.pixels, runtime.device)
    return LatentOut(LATENT=Latent(samples, noise_mask=latent_mask(mask, samples.shape[-2:])))


class InpaintConditioningIn(NodeInputs):
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    vae: Any = Socket("VAE")
    pixels: Any = Socket("IMAGE")
    mask: Any = Socket("MASK", description="1 = repaint; resized to the image if its size differs")
    noise_mask: bool = Field(True, description="also attach the mask as the latent's noise mask (ComfyUI's "
                                               "default); KSampler uses it only with 4-channel models")


class InpaintConditioningOut(NodeOutputs):
    positive: Any = Output("CONDITIONING", description="passed through (ComfyUI's node shape)")
    negative: Any = Output("CONDITIONING", description="passed through (ComfyUI's node shape)")
    latent: Any = Output("LATENT")


@torch.no_grad()
def inpaint_latent(vae, pixels: torch.Tensor, mask: torch.Tensor, device) -> Latent:
    """Latent for a 9-channel model: samples = the image's latents (used when denoise < 1), concat =
    [mask at latent size, latents of the image with the hole set to mid-grey]."""
    keep = (mask < 0.5).permute(0, 2, 3, 1).to(pixels.dtype)  # diffusers: image * (mask < 0.5) in [-1, 1]
    masked = pixels[..., :3] * keep + 0.5 * (1 - keep)  # = 0 in [-1, 1] inside the hole
    samples = encode(vae, pixels, device)
    masked_latents = encode(vae, masked, device)
    concat = torch.cat([latent_mask(mask, samples.shape[-2:]), masked_latents], dim=1)
    return Latent(samples, concat=concat)


@node("InpaintModelConditioning", category="conditioning/inpaint", display_name="InpaintModelConditioning")
def inpaint_model_conditioning(inp: InpaintConditioningIn, ctx: NodeContext) -> InpaintConditioningOut:
    """Prepare a latent for a 9-channel inpainting checkpoint (mask + masked-image latents)."""
    runtime = runtime_of(ctx)
    check_pixels(inp.pixels, runtime)
    mask = pixel_mask(inp.mask, inp.pixels)
    with runtime.models.on_device(inp.vae.vae, once_per_job=True):
        latent = inpaint_latent(inp.vae, inp.pixels, mask, runtime.device)
    if inp.noise_mask:
        latent = latent.replace(noise_mask=latent.concat[:, :1].clone())
    return InpaintConditioningOut(positive=inp.positive, negative=inp.negative, latent=latent)


class SetNoiseMaskIn(NodeInputs):
    samples: Any = Socket("LATENT")
    mask: Any = Socket("MASK", description="1 = repaint; pixel-sized or latent-sized")


@node("SetLatentNoiseMask", category="latent/inpaint", display_name="Set Latent Noise Mask",
      renamed_outputs=OLD_LATENT)
def set_latent_noise_mask(inp: SetNoiseMaskIn, ctx: NodeContext) -> LatentOut:
    """Restrict sampling to the masked region of an existing latent (4-channel models)."""
    latent: Latent = inp.samples
    b, _, h, w = latent.samples.shape
    mask = mask_4d(inp.mask)
    if tuple(mask.shape[-2:]) == (h, w):
        return LatentOut(LATENT=latent.replace(noise_mask=binarize(fit_mask(mask, h, w, b))))
    mask = binarize(fit_mask(mask, h * 8, w * 8, b))
    return LatentOut(LATENT=latent.replace(noise_mask=latent_mask(mask, (h, w))))

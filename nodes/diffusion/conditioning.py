"""CLIPTextEncode: text → conditioning, exactly as diffusers' pipelines encode prompts.

SD1.5: the last hidden state of the CLIP text encoder. SDXL: the penultimate hidden states of both encoders
concatenated, the pooled projection of the second, and the size/crop conditioning (``add_time_ids``).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.patches import install_patches
from ..core.types import SDXL, ClipHandle, Conditioning
from ..core.widgets import runtime_of


class TextEncodeIn(NodeInputs):
    clip: Any = Socket("CLIP")
    text: str = Field("", description="the prompt", json_schema_extra={"multiline": True})


class ConditioningOut(NodeOutputs):
    conditioning: Any = Output("CONDITIONING")


@node("CLIPTextEncode", category="conditioning")
def clip_text_encode(inp: TextEncodeIn, ctx: NodeContext) -> ConditioningOut:
    """Encode a prompt with the checkpoint's text encoder(s) (SDXL: size conditioning = the image size)."""
    return ConditioningOut(conditioning=_encode(inp.clip, inp.text, ctx, None))


class TextEncodeSDXLIn(TextEncodeIn):
    width: int = Field(0, ge=0, le=16384, description="original width (0 = the image's)")
    height: int = Field(0, ge=0, le=16384, description="original height (0 = the image's)")
    crop_w: int = Field(0, ge=0, le=16384, description="crop left")
    crop_h: int = Field(0, ge=0, le=16384, description="crop top")
    target_width: int = Field(0, ge=0, le=16384, description="target width (0 = the image's)")
    target_height: int = Field(0, ge=0, le=16384, description="target height (0 = the image's)")


@node("CLIPTextEncodeSDXL", category="conditioning")
def clip_text_encode_sdxl(inp: TextEncodeSDXLIn, ctx: NodeContext) -> ConditioningOut:
    """Encode a prompt for SDXL with explicit size/crop conditioning (``add_time_ids``)."""
    if inp.clip.arch != SDXL:
        raise ValueError("input 'clip' is an SD1.5 text encoder; CLIPTextEncodeSDXL needs an SDXL checkpoint "
                         "(use CLIPTextEncode)")
    time_ids = torch.tensor([[inp.height, inp.width, inp.crop_h, inp.crop_w, inp.target_height, inp.target_width]],
                            dtype=torch.float32)  # zero sizes are filled with the image size by KSampler
    return ConditioningOut(conditioning=_encode(inp.clip, inp.text, ctx, time_ids))


def _encode(clip: ClipHandle, text: str, ctx: NodeContext, time_ids: torch.Tensor | None) -> Conditioning:
    runtime = runtime_of(ctx)
    with runtime.models.on_device(clip.text_encoders), ExitStack() as stack:
        install_patches(stack, clip.text_encoders, clip.patches, None)  # LoRA / merges, undone on exit
        embeds, pooled = encode_text(clip, text, runtime.device)
    return Conditioning(embeds.cpu(), None if pooled is None else pooled.cpu(), time_ids)


@torch.no_grad()
def encode_text(clip: ClipHandle, text: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds [1,77,D], pooled [1,P] or None), as StableDiffusion(XL)Pipeline.encode_prompt computes them."""
    if clip.arch != SDXL:
        (tokenizer,), (encoder,) = clip.tokenizers, clip.text_encoders
        ids = _ids(tokenizer, text).to(device)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = (ids != tokenizer.pad_token_id).long()
        return encoder(ids, attention_mask=mask)[0], None
    hidden, pooled = [], None
    for tokenizer, encoder in zip(clip.tokenizers, clip.text_encoders, strict=True):
        out = encoder(_ids(tokenizer, text).to(device), output_hidden_states=True)
        if out[0].ndim == 2:
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids

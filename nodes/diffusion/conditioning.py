"""CLIPTextEncode, CLIPTextEncodeSDXL and CLIPSetLastLayer (ComfyUI's class names, inputs and outputs):
text → conditioning, exactly as diffusers' pipelines encode prompts.

SD1.5: the last hidden state of the CLIP text encoder. SDXL: the penultimate hidden states of both encoders
concatenated, the pooled projection of the second, and the size/crop conditioning (``add_time_ids``).

Clip skip is carried by the CLIP handle (CLIPSetLastLayer) and applied here, with ComfyUI's meaning of
``stop_at_clip_layer`` (-1 = last layer, -2 = the one before, ...): SD1.5 takes that layer's hidden states
through the final layer norm (diffusers' ``clip_skip`` = -1 - layer); SDXL takes that layer's hidden states of
both encoders without the norm (so -2 is the default, and diffusers' ``clip_skip`` = -2 - layer). A layer
beyond the encoder's depth means the last layer, as in ComfyUI. ``embedding:name`` words in a prompt are
textual inversions from models/embeddings (see :mod:`.embeddings`).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.patches import install_patches
from ..core.runtime import file_fingerprint
from ..core.types import SDXL, ClipHandle, Conditioning
from ..core.widgets import runtime_of
from .embeddings import (
    EmbeddingError,
    EmbeddingRef,
    find_embedding,
    injected,
    load_embedding,
    split_prompt,
    token_ids,
    vectors_for,
)

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION


class TextEncodeIn(NodeInputs):
    text: str = Field("", description="the prompt; embedding:NAME inserts a textual inversion",
                      json_schema_extra={"multiline": True, "dynamicPrompts": True})
    clip: Any = Socket("CLIP")


class ConditioningOut(NodeOutputs):
    CONDITIONING: Any = Output("CONDITIONING")


def _embeddings_fingerprint(*fields: str):
    """The cache key follows the embedding files a prompt names (a changed file re-encodes)."""

    def fingerprint(literals: dict, runtime) -> str:
        parts = []
        for name in fields:
            text = literals.get(name)
            if runtime is None or not isinstance(text, str):
                continue
            for part in split_prompt(text):
                if isinstance(part, EmbeddingRef):
                    try:
                        parts.append(file_fingerprint(find_embedding(runtime.model_folder("embeddings"), part.name)))
                    except EmbeddingError:
                        parts.append(f"missing:{part.name}")
        return "|".join(parts)

    return fingerprint


@node("CLIPTextEncode", category="conditioning", display_name="CLIP Text Encode (Prompt)",
      fingerprint=_embeddings_fingerprint("text"), renamed_outputs={"conditioning": "CONDITIONING"})
def clip_text_encode(inp: TextEncodeIn, ctx: NodeContext) -> ConditioningOut:
    """Encode a prompt with the checkpoint's text encoder(s) (SDXL: size conditioning = the image size)."""
    return ConditioningOut(CONDITIONING=_encode(inp.clip, (inp.text,) * len(inp.clip.text_encoders), ctx, None))


class TextEncodeSDXLIn(NodeInputs):
    clip: Any = Socket("CLIP")
    width: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="original width (0 = the image's)")
    height: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="original height (0 = the image's)")
    crop_w: int = Field(0, ge=0, le=MAX_RESOLUTION, description="crop left")
    crop_h: int = Field(0, ge=0, le=MAX_RESOLUTION, description="crop top")
    target_width: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="target width (0 = the image's)")
    target_height: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="target height (0 = the image's)")
    text_g: str = Field("CLIP_G", description="prompt for the OpenCLIP bigG encoder",
                        json_schema_extra={"multiline": True, "dynamicPrompts": True})
    text_l: str = Field("CLIP_L", description="prompt for the CLIP ViT-L encoder",
                        json_schema_extra={"multiline": True, "dynamicPrompts": True})


@node("CLIPTextEncodeSDXL", category="advanced/conditioning", fingerprint=_embeddings_fingerprint("text_g", "text_l"),
      renamed_outputs={"conditioning": "CONDITIONING"})
def clip_text_encode_sdxl(inp: TextEncodeSDXLIn, ctx: NodeContext) -> ConditioningOut:
    """Encode a prompt for SDXL with explicit size/crop conditioning (``add_time_ids``); text_l goes to the
    CLIP ViT-L encoder, text_g to OpenCLIP bigG (ComfyUI's comfy_extras/nodes_clip_sdxl.py)."""
    if inp.clip.arch != SDXL:
        raise ValueError("clip: this is an SD1.5 text encoder; CLIPTextEncodeSDXL needs an SDXL checkpoint "
                         "(use CLIPTextEncode)")
    time_ids = torch.tensor([[inp.height, inp.width, inp.crop_h, inp.crop_w, inp.target_height, inp.target_width]],
                            dtype=torch.float32)  # zero sizes are filled with the image size by KSampler
    return ConditioningOut(CONDITIONING=_encode(inp.clip, (inp.text_l, inp.text_g), ctx, time_ids))


class SetLastLayerIn(NodeInputs):
    clip: Any = Socket("CLIP")
    stop_at_clip_layer: int = Field(-1, ge=-24, le=-1, description="-1 = last layer, -2 = the one before (clip skip)")


class ClipOut(NodeOutputs):
    CLIP: Any = Output("CLIP")


@node("CLIPSetLastLayer", category="conditioning", display_name="CLIP Set Last Layer")
def clip_set_last_layer(inp: SetLastLayerIn, ctx: NodeContext) -> ClipOut:
    """Stop text encoding at an earlier CLIP layer ("clip skip"); a new CLIP handle, the loaded encoder untouched."""
    return ClipOut(CLIP=inp.clip.with_layer(inp.stop_at_clip_layer))


def _encode(clip: ClipHandle, texts: tuple[str, ...], ctx: NodeContext,
            time_ids: torch.Tensor | None) -> Conditioning:
    runtime = runtime_of(ctx)
    with runtime.models.on_device(clip.text_encoders), ExitStack() as stack:
        install_patches(stack, clip.text_encoders, clip.patches, None)  # LoRA / merges, undone on exit
        embeds, pooled = encode_text(clip, texts, runtime.device, runtime.model_folder("embeddings"))
    return Conditioning(embeds.cpu(), None if pooled is None else pooled.cpu(), time_ids)


@torch.no_grad()
def encode_text(clip: ClipHandle, text: str | tuple[str, ...], device: torch.device,
                embeddings_dir=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds [1,77,D], pooled [1,P] or None), as StableDiffusion(XL)Pipeline.encode_prompt computes them.

    ``text`` is one prompt for every encoder or one per encoder (SDXL: clip_l's, then clip_g's).
    """
    texts = (text,) * len(clip.text_encoders) if isinstance(text, str) else tuple(text)
    loaded: dict[str, dict] = {}
    hidden, pooled = [], None
    n = len(clip.text_encoders)
    for index, (tokenizer, encoder, prompt) in enumerate(zip(clip.tokenizers, clip.text_encoders, texts, strict=True)):
        ids, inject = _prompt_ids(tokenizer, encoder, prompt, index, n, embeddings_dir, loaded)
        ids = ids.to(device)
        mask = None
        if clip.arch != SDXL and getattr(encoder.config, "use_attention_mask", False):
            mask = (ids != tokenizer.pad_token_id).long()
        with injected(encoder, inject):
            out = encoder(ids, attention_mask=mask, output_hidden_states=True)
        layers = int(encoder.config.num_hidden_layers)
        layer = clip.layer
        if clip.arch != SDXL:
            if layer is None or layer == -1 or abs(layer) > layers:
                return out[0], None
            norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 5 flattened it
            return norm(out.hidden_states[layer]), None
        if out[0].ndim == 2:
            pooled = out[0]
        if layer is None:
            hidden.append(out.hidden_states[-2])
        elif abs(layer) > layers:
            hidden.append(out.last_hidden_state)
        else:
            hidden.append(out.hidden_states[layer])
    return torch.cat(hidden, dim=-1), pooled


def _prompt_ids(tokenizer, encoder, text: str, index: int, n: int, embeddings_dir, loaded: dict):
    parts = split_prompt(text)
    refs = [p for p in parts if isinstance(p, EmbeddingRef)]
    if not refs:
        return _ids(tokenizer, text), {}
    if embeddings_dir is None:
        raise EmbeddingError("text: embedding:NAME needs a models folder with an embeddings/ subfolder")
    width = encoder.get_input_embeddings().weight.shape[-1]
    vectors = []
    for ref in refs:
        if ref.name not in loaded:
            loaded[ref.name] = load_embedding(find_embedding(embeddings_dir, ref.name))
        vectors.append(vectors_for(loaded[ref.name], index, n, width, ref.name))
    return token_ids(tokenizer, parts, vectors)


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids

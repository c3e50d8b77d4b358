"""CLIPTextEncode, CLIPTextEncodeSDXL and CLIPSetLastLayer (ComfyUI's class names, inputs and outputs):
text → conditioning with ComfyUI's prompt syntax (``(word:1.2)`` weights, prompts longer than 75 tokens in
77-token chunks; :mod:`.prompt` states the rules and the math). Each 77-token chunk is encoded exactly as
diffusers' pipelines encode a prompt, so a prompt without parentheses within 75 tokens gives diffusers' result.

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
from .embeddings import EmbeddingError, find_embedding, injected, load_embedding, vectors_for
from .prompt import Chunk, apply_weights, embedding_names, empty_chunk, tokenize

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
            for name in embedding_names(text):
                try:
                    parts.append(file_fingerprint(find_embedding(runtime.model_folder("embeddings"), name)))
                except EmbeddingError:
                    parts.append(f"missing:{name}")
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
    return ConditioningOut(CONDITIONING=_encode(inp.clip, (inp.text_l, inp.text_g), ctx, time_ids, pad_chunks=True))


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
            time_ids: torch.Tensor | None, pad_chunks: bool = False) -> Conditioning:
    runtime = runtime_of(ctx)
    with runtime.models.on_device(clip.text_encoders, once_per_job=True), ExitStack() as stack:
        install_patches(stack, clip.text_encoders, clip.patches, None)  # LoRA / merges, undone on exit
        embeds, pooled = encode_text(clip, texts, runtime.device, runtime.model_folder("embeddings"),
                                     pad_chunks=pad_chunks)
    return Conditioning(embeds.cpu(), None if pooled is None else pooled.cpu(), time_ids)


@torch.no_grad()
def encode_text(clip: ClipHandle, text: str | tuple[str, ...], device: torch.device,
                embeddings_dir=None, pad_chunks: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds [1, 77*k, D], pooled [1, P] or None) with ComfyUI's prompt semantics (:mod:`.prompt`).

    ``text`` is one prompt for every encoder or one per encoder (SDXL: clip_l's, then clip_g's). For each
    encoder the prompt becomes ``k`` chunks of 77 tokens; each chunk is encoded as StableDiffusion(XL)Pipeline
    .encode_prompt encodes its one 77-token prompt (same layer choice), giving ``z_c [1, 77, D]``. Where any
    token weight ``w_j != 1``, the empty prompt is encoded too (``z_empty``) and
    ``z_c[j] <- (z_c[j] - z_empty[j]) * w_j + z_empty[j]``. The result is ``cat(z_1 .. z_k)`` along the tokens;
    SDXL concatenates clip_l's and clip_g's along the features after cutting both to the shorter token count
    (``pad_chunks``: first pad the encoder with fewer chunks with empty-prompt chunks, CLIPTextEncodeSDXL).
    The pooled projection is that of the first chunk.
    """
    texts = (text,) * len(clip.text_encoders) if isinstance(text, str) else tuple(text)
    n = len(clip.text_encoders)
    loaded: dict[str, dict] = {}
    chunked = []
    for index, (tokenizer, encoder, prompt) in enumerate(zip(clip.tokenizers, clip.text_encoders, texts, strict=True)):
        width = encoder.get_input_embeddings().weight.shape[-1]
        chunked.append(tokenize(tokenizer, prompt, _vectors(index, n, width, embeddings_dir, loaded)))
    if pad_chunks:
        most = max(len(c) for c in chunked)
        chunked = [c + [empty_chunk(tok) for _ in range(most - len(c))] for c, tok in zip(chunked, clip.tokenizers,
                                                                                          strict=True)]
    hidden, pooled = [], None
    for tokenizer, encoder, chunks in zip(clip.tokenizers, clip.text_encoders, chunked, strict=True):
        outs = [_encode_chunk(clip, tokenizer, encoder, chunk, device) for chunk in chunks]
        if any(chunk.weighted for chunk in chunks):
            z_empty = _encode_chunk(clip, tokenizer, encoder, empty_chunk(tokenizer), device)[0]
            outs = [(apply_weights(z, z_empty, chunk.weights), p) for (z, p), chunk in zip(outs, chunks, strict=True)]
        hidden.append(outs[0][0] if len(outs) == 1 else torch.cat([z for z, _ in outs], dim=1))
        if outs[0][1] is not None:
            pooled = outs[0][1]
    if len(hidden) == 1:
        return hidden[0], pooled
    tokens = min(h.shape[1] for h in hidden)
    return torch.cat([h[:, :tokens] for h in hidden], dim=-1), pooled


def _encode_chunk(clip: ClipHandle, tokenizer, encoder, chunk: Chunk, device):
    """(hidden [1, 77, D], pooled [1, P] or None) of one chunk, with the layer choice of the CLIP handle."""
    ids = torch.tensor([chunk.ids], device=device)
    mask = None
    if clip.arch != SDXL and getattr(encoder.config, "use_attention_mask", False):
        mask = (ids != tokenizer.pad_token_id).long()
    with injected(encoder, chunk.vectors):
        out = encoder(ids, attention_mask=mask, output_hidden_states=True)
    layers = int(encoder.config.num_hidden_layers)
    layer = clip.layer
    if clip.arch != SDXL:
        if layer is None or layer == -1 or abs(layer) > layers:
            return out[0], None
        norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 5 flattened it
        return norm(out.hidden_states[layer]), None
    pooled = out[0] if out[0].ndim == 2 else None
    if layer is None:
        return out.hidden_states[-2], pooled
    if abs(layer) > layers:
        return out.last_hidden_state, pooled
    return out.hidden_states[layer], pooled


def _vectors(index: int, n: int, width: int, embeddings_dir, loaded: dict):
    """``name -> [n, width]`` vectors of a textual inversion for one encoder (files read once per prompt)."""

    def vectors(name: str) -> torch.Tensor:
        if embeddings_dir is None:
            raise EmbeddingError("text: embedding:NAME needs a models folder with an embeddings/ subfolder")
        if name not in loaded:
            loaded[name] = load_embedding(find_embedding(embeddings_dir, name))
        return vectors_for(loaded[name], index, n, width, name)

    return vectors

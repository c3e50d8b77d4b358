"""IPAdapterModelLoader and IPAdapterApply: the graph side of IP-Adapter (the math lives in nodes/ipadapter/).

IPAdapterApply never changes the model: it returns ``model.with_patch(IPAdapterPatch(...))`` and KSampler
installs the patch only while it samples. Encoding the reference (when an image is given) and projecting the
embeds into image tokens both happen HERE, so the engine caches them: changing only the seed re-runs
KSampler, not the encoder.

Why so many checks: pairing mistakes (a ViT-H adapter fed by a bigG encoder, an SD1.5 adapter on SDXL,
embeds from another encoder) otherwise surface as ``size mismatch`` deep inside torch. What literals allow is
checked before the run (file exists and is an adapter, the per-block JSON parses); what needs upstream
objects is checked when the node runs, with a sentence naming the input to change.

``weight_type = "per-block"`` takes ``block_weights``, a diffusers ``set_ip_adapter_scale`` dict such as
``{"up": {"block_0": [0.0, 1.0, 0.0]}}`` (InstantStyle: style only): blocks it does not name get 0, exactly as
in diffusers; every value is multiplied by ``weight`` (so weight 1 reproduces diffusers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import ModelHandle
from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from . import (
    IPAdapterFileError,
    check_pairing,
    describe_unet,
    embeds_for,
    inspect_ipadapter,
    instantstyle_weights,
    load_ipadapter,
)
from .clip_vision import ClipVision, ClipVisionOutput
from .embeds import ImageEmbeds, default_negative, embeds_mismatch, encode_for, encoder_mismatch
from .plus_apply import make_patch, unpack  # the one implementation shared with the pack's nodes

WeightType = Literal["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                     "weak middle", "strong middle", "style transfer", "composition", "style and composition",
                     "strong style transfer", "per-block"]
CombineMethod = Literal["concat", "add", "subtract", "average", "norm average"]
EmbedsScaling = Literal["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]


# -- loader ---------------------------------------------------------------------------------------------

class IPAdapterModelLoaderIn(NodeInputs):
    ipadapter_file: str = ModelName("ipadapter", "IP-Adapter file in models/ipadapter (.safetensors, or .bin read "
                                       "weights-only), e.g. ip-adapter_sd15.safetensors")


class IPAdapterModelLoaderOut(NodeOutputs):
    IPADAPTER: Any = Output("IPADAPTER")


def _inspect_adapter(path: Path):
    try:
        inspect_ipadapter(path)
    except IPAdapterFileError as exc:
        yield str(exc)


@node("IPAdapterModelLoader", category="ipadapter/loaders", display_name="IPAdapter Model Loader",
      check=model_file_check("ipadapter", _inspect_adapter, field="ipadapter_file"),
      fingerprint=model_file_fingerprint("ipadapter", field="ipadapter_file"),
      renamed_inputs={"name": "ipadapter_file"}, renamed_outputs={"ipadapter": "IPADAPTER"})
def ipadapter_model_loader(inp: IPAdapterModelLoaderIn, ctx: NodeContext) -> IPAdapterModelLoaderOut:
    """Load an h94-format IP-Adapter (base, light, plus, plus-face, full-face; SD1.5 or SDXL)."""
    runtime = runtime_of(ctx)
    path = runtime.model_path("ipadapter", inp.ipadapter_file)
    return IPAdapterModelLoaderOut(IPADAPTER=runtime.models.load(("ipadapter", str(path)),
                                                                 lambda: load_ipadapter(path), path=path))


# -- apply ----------------------------------------------------------------------------------------------

class IPAdapterApplyIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE", optional=True, description="reference image(s); needs clip_vision")
    clip_vision: Any = Socket("CLIP_VISION", optional=True, description="encoder for image / image_negative")
    clip_vision_output: Any = Socket("CLIP_VISION_OUTPUT", optional=True,
                                     description="an already encoded reference (CLIPVisionEncode)")
    embeds: Any = Socket("EMBEDS", optional=True, description="precomputed embeds (IPAdapterEncoder, "
                                                              "LoadImageEmbeds): no encoder needed")
    image_negative: Any = Socket("IMAGE", optional=True, description="replaces the default negative image")
    attn_mask: Any = Socket("MASK", optional=True, description="where the reference acts (1) and not (0)")
    weight: float = Field(1.0, ge=-1.0, le=5.0)
    weight_type: WeightType = "linear"
    block_weights: str = Field("", description='per-block only: diffusers set_ip_adapter_scale dict, e.g. '
                                               '{"up": {"block_0": [0.0, 1.0, 0.0]}}')
    combine_embeds: CombineMethod = "concat"
    start_at: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps before the adapter acts")
    end_at: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps after which it stops")
    embeds_scaling: EmbedsScaling = "V only"
    mask_interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="how attn_mask is resized to each block (bicubic = diffusers' ip_adapter_masks)")


class ModelOut(NodeOutputs):
    model: Any = Output("MODEL")


def parse_block_weights(text: str) -> dict:
    """The per-block JSON as a dict; ValueError with a plain sentence when it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"block_weights is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict) or not value:
        raise ValueError('block_weights must be a non-empty object such as {"up": {"block_0": [0.0, 1.0, 0.0]}}')
    unknown = sorted(set(value) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"block_weights keys are down, mid and up, not {', '.join(unknown)}")
    return value


def _apply_check(literals: dict, runtime):
    weight_type, blocks = literals.get("weight_type", "linear"), literals.get("block_weights", "")
    if weight_type == "per-block":
        if not blocks.strip():
            yield "block_weights", 'weight_type per-block needs block_weights, e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}}'
        else:
            try:
                parse_block_weights(blocks)
            except ValueError as exc:
                yield "block_weights", str(exc)
    elif blocks.strip():
        yield "block_weights", "block_weights is only used when weight_type is per-block"
    start, end = literals.get("start_at", 0.0), literals.get("end_at", 1.0)
    if start > end:
        yield "start_at", f"start_at ({start}) is after end_at ({end})"


def _mask(mask: Any) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"input attn_mask: expected a MASK tensor, got {type(mask).__name__}")
    if not mask.is_floating_point():
        raise ValueError(f"input attn_mask: a MASK is float 0..1, this one is {mask.dtype}; "
                         "make it with a mask node or LoadImage's mask output")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] == 0 or 0 in mask.shape[1:]:
        raise ValueError(f"input attn_mask: expected [B,H,W], got {list(mask.shape)}")
    return mask.detach().float().cpu()


def _reference(inp: IPAdapterApplyIn, adapter) -> tuple[torch.Tensor, torch.Tensor | None, ClipVision | None]:
    """(raw cond embeds, raw negative embeds or None, an encoder usable for negatives or None)."""
    given = [n for n in ("image", "clip_vision_output", "embeds") if getattr(inp, n) is not None]
    if not given:
        raise ValueError("IPAdapterApply needs a reference: connect image (with clip_vision), "
                         "clip_vision_output or embeds")
    if len(given) > 1:
        raise ValueError(f"connect only one of {', '.join(given)}: each is a whole reference")
    cv: ClipVision | None = inp.clip_vision
    if inp.image is not None:
        if cv is None:
            raise ValueError("input clip_vision: an image reference must be encoded; connect a CLIPVisionLoader "
                             "(or use embeds from LoadImageEmbeds to run without an encoder)")
        return encode_for(adapter, cv, inp.image, "image"), None, cv
    if inp.clip_vision_output is not None:
        out: ClipVisionOutput = inp.clip_vision_output
        enc = out.encoder
        if enc is not None:
            problem = encoder_mismatch(adapter, enc)
            if problem:
                raise ValueError(f"input clip_vision_output: {problem}")
        return embeds_for(adapter.info, out.image_embeds, out.penultimate), None, cv or enc
    embeds: ImageEmbeds = inp.embeds
    problem = embeds_mismatch(embeds, adapter)
    if problem:
        raise ValueError(f"input embeds: {problem}")
    return embeds.cond, embeds.uncond, cv


@node("IPAdapterApply", category="ipadapter", check=_apply_check)
def ipadapter_apply(inp: IPAdapterApplyIn, ctx: NodeContext) -> ModelOut:
    """Condition the model on reference images: returns a new MODEL carrying the IP-Adapter patch."""
    runtime = runtime_of(ctx)
    model: ModelHandle = inp.model
    adapter, cv = unpack(inp.ipadapter, inp.clip_vision)
    if cv is not None and inp.clip_vision is None:  # the unified loader's encoder
        inp = inp.model_copy(update={"clip_vision": cv})
    unet_problems = check_pairing(adapter.info, unet=describe_unet(model.unet))
    if unet_problems:
        raise ValueError(f"input ipadapter: {Path(adapter.info.path).name} does not fit the model "
                         f"{Path(model.source).name}: {unet_problems[0]} Load an adapter made for it.")

    encoders = [m for m in (getattr(inp.clip_vision, "model", None),
                            getattr(getattr(inp.clip_vision_output, "encoder", None), "model", None)) if m is not None]
    with runtime.models.on_device(*encoders, once_per_job=True):
        cond, uncond, cv = _reference(inp, adapter)
        if inp.image_negative is not None:
            if cv is None:
                raise ValueError("input clip_vision: image_negative must be encoded; connect a CLIPVisionLoader")
            uncond = encode_for(adapter, cv, inp.image_negative, "image_negative")
        if uncond is None:
            uncond = default_negative(adapter, cv, cond)
            if uncond is None:
                raise ValueError(
                    f"input clip_vision: these embeds carry no negative and {Path(adapter.info.path).name} "
                    "(a plus adapter) makes its negative with the image encoder; connect clip_vision, "
                    "image_negative, or embeds saved with their negative")

    layers = None
    if inp.weight_type == "per-block":
        try:
            per_block = instantstyle_weights(parse_block_weights(inp.block_weights), model.unet)
        except (ValueError, KeyError) as exc:  # diffusers' own errors for block names the UNet lacks
            raise ValueError(f"input block_weights: {exc}") from None
        layers = tuple(inp.weight * w for w in per_block)

    mask = _mask(inp.attn_mask) if inp.attn_mask is not None else None
    weight_type = "linear" if inp.weight_type == "per-block" else inp.weight_type
    patch = make_patch(model, adapter, cond, uncond, weight=inp.weight, weight_type=weight_type,
                       combine=inp.combine_embeds, start_at=inp.start_at, end_at=inp.end_at,
                       embeds_scaling=inp.embeds_scaling, mask=mask, layers=layers,
                       mask_interpolation=inp.mask_interpolation)
    return ModelOut(model=model.with_patch(patch))

"""ComfyUI_IPAdapter_plus's nodes under their class names, inputs (names, order, defaults, bounds) and outputs.

Thin adapters: every apply node calls :func:`plus_apply.make_patch`; loaders read headers (presets.py);
image helpers are imageprep.py; per-frame weights schedule.py. Semantics are ipgraph's (documented in
patch.py and nodes.py): the MODEL is never changed (a new handle carries the patch), the image K/V are made
once per sampling run, the middle block IS patched (the pack's registers it under a key ComfyUI never looks
up), negatives are diffusers' (zeros / the encoder on a zero normalised image; the pack uses a black image).

IPADAPTER_PARAMS (IPAdapterRegionalConditioning, IPAdapterCombineParams, IPAdapterFromParams) is a frozen
:class:`AdapterParams`: parallel tuples image, attn_mask, weight, weight_type, start_at, end_at, one entry per
application; IPAdapterFromParams applies them in order, each as its own patch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.runtime import ModelNotFound, file_fingerprint
from ..core.types import ModelHandle
from ..core.widgets import runtime_of
from . import describe_unet, load_clip_vision, load_ipadapter
from .clip_vision import ClipVision
from .embeds import EmbedsFileError, ImageEmbeds, load_embeds, save_embeds
from .encoder import COMBINE_METHODS
from .files import describe_encoder
from .imageprep import make_noise, prep_image_for_clip_vision, reference_tiles
from .nodes import _mask
from .plus_apply import (
    IPAdapterPipeline,
    check_model,
    embeds_tensor,
    encode_reference,
    make_patch,
    need_encoder,
    negative_for,
    resize_mask_for_encoder,
    unpack,
)
from .presets import COMMUNITY_PRESETS, UNIFIED_PRESETS, PresetError, folders_fingerprint, resolve, scan
from .schedule import METHODS, TIMINGS, prompt_schedule, weights_schedule

PlusWeightType = Literal["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input",
                         "weak output", "weak middle", "strong middle", "style transfer", "composition",
                         "strong style transfer", "style and composition", "style transfer precise",
                         "composition precise"]
Combine = Literal["concat", "add", "subtract", "average", "norm average"]
Scaling = Literal["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]


def _f(default: float, lo: float, hi: float, step: float, description: str = "") -> Any:
    return Field(default, ge=lo, le=hi, description=description, json_schema_extra={"step": step})


def _weight(hi: float = 5.0) -> Any:
    return Field(1.0, ge=-1.0, le=hi, json_schema_extra={"step": 0.05},
                 description="image strength (a FLOAT link may carry a list: one weight per frame in Batch nodes)")


def _start() -> Any:
    return _f(0.0, 0.0, 1.0, 0.001, "fraction of the steps before the adapter acts")


def _end() -> Any:
    return _f(1.0, 0.0, 1.0, 0.001, "fraction of the steps after which it stops")


class ModelOut(NodeOutputs):
    MODEL: Any = Output("MODEL")


# -- loaders ------------------------------------------------------------------------------------------------

def _load_clip_vision(runtime, path: Path) -> ClipVision:
    model = runtime.models.load(("clip_vision", str(path)), lambda: load_clip_vision(path, runtime.dtype),
                                 path=path)
    return ClipVision(model, describe_encoder(model), str(path))


def load_preset(runtime, model: ModelHandle, preset: str, chained=None) -> IPAdapterPipeline:
    """Resolve ``preset`` for ``model`` from the files' headers and load the pair (shared by the model manager)."""
    try:
        found = resolve(preset, describe_unet(model.unet), scan(runtime, "ipadapter"), scan(runtime, "clip_vision"))
    except PresetError as exc:
        raise ValueError(f"input preset: {exc}") from None
    a_path = runtime.model_path("ipadapter", found.adapter_name)
    c_path = runtime.model_path("clip_vision", found.encoder_name)
    if isinstance(chained, IPAdapterPipeline) and chained.adapter.info.path == str(a_path):
        adapter = chained.adapter
    else:
        adapter = runtime.models.load(("ipadapter", str(a_path)), lambda: load_ipadapter(a_path), path=a_path)
    chained_cv = getattr(chained, "clip_vision", None)  # an IPAdapterPipeline or the FaceID loader's pipeline
    if chained_cv is not None and chained_cv.source == str(c_path):
        cv = chained_cv
    else:
        cv = _load_clip_vision(runtime, c_path)
    return IPAdapterPipeline(adapter, cv, preset)


_folder_fingerprint = folders_fingerprint(("ipadapter", "clip_vision"))


class UnifiedLoaderIn(NodeInputs):
    model: Any = Socket("MODEL")
    preset: Literal[UNIFIED_PRESETS] = Field(UNIFIED_PRESETS[0], description="picked by reading the files: "  # type: ignore[valid-type]
                                             "adapter layout, base model and encoder width")
    ipadapter: Any = Socket("IPADAPTER", optional=True, description="an earlier unified loader (reuses its models)")


class UnifiedLoaderOut(NodeOutputs):
    model: Any = Output("MODEL")
    ipadapter: Any = Output("IPADAPTER")


@node("IPAdapterUnifiedLoader", category="ipadapter", display_name="IPAdapter Unified Loader",
      fingerprint=_folder_fingerprint)
def ipadapter_unified_loader(inp: UnifiedLoaderIn, ctx: NodeContext) -> UnifiedLoaderOut:
    """Find the adapter and CLIP vision encoder a preset means, from the files' weights, and load them."""
    pipe = load_preset(runtime_of(ctx), inp.model, inp.preset, inp.ipadapter)
    return UnifiedLoaderOut(model=inp.model, ipadapter=pipe)


class CommunityLoaderIn(NodeInputs):
    model: Any = Socket("MODEL")
    preset: Literal[COMMUNITY_PRESETS] = COMMUNITY_PRESETS[0]  # type: ignore[valid-type]
    ipadapter: Any = Socket("IPADAPTER", optional=True)


@node("IPAdapterUnifiedLoaderCommunity", category="ipadapter/loaders",
      display_name="IPAdapter Unified Loader Community", fingerprint=_folder_fingerprint)
def ipadapter_unified_loader_community(inp: CommunityLoaderIn, ctx: NodeContext) -> UnifiedLoaderOut:
    """The community presets (Composition; Kolors is refused: ipgraph does not run Kolors)."""
    pipe = load_preset(runtime_of(ctx), inp.model, inp.preset, inp.ipadapter)
    return UnifiedLoaderOut(model=inp.model, ipadapter=pipe)


# -- the apply family ---------------------------------------------------------------------------------------

def _apply(ctx, model: ModelHandle, ipadapter, clip_vision, *, image=None, image_negative=None, attn_mask=None,
           image_composition=None, pos_embed=None, neg_embed=None, tiles: int = 1, ratio: float = 1.0,
           encode_batch_size: int = 0, **kw):
    """Encode what is given and build the patch (see plus_apply); returns the new handle's patch."""
    runtime = runtime_of(ctx)
    adapter, cv = unpack(ipadapter, clip_vision)
    check_model(model, adapter)
    mask = _mask(attn_mask) if attn_mask is not None else None
    with runtime.models.on_device(*([cv.model] if cv is not None else []), once_per_job=True):
        comp = None
        if image is not None:
            cv = need_encoder(cv)
            cond = encode_reference(adapter, cv, image, "image", batch_size=encode_batch_size, tiles=tiles,
                                    ratio=ratio)
            if image_composition is not None:
                comp = encode_reference(adapter, cv, image_composition, "image_composition",
                                        batch_size=encode_batch_size, tiles=tiles, ratio=ratio)
            uncond = None
        else:
            cond, uncond = embeds_tensor(pos_embed, adapter, "pos_embed")
            if neg_embed is not None:
                uncond = embeds_tensor(neg_embed, adapter, "neg_embed")[0]
        if image_negative is not None:
            uncond = encode_reference(adapter, need_encoder(cv, "image_negative"), image_negative,
                                      "image_negative", batch_size=encode_batch_size)
        if uncond is None:
            uncond = negative_for(adapter, cv, cond)
    return make_patch(model, adapter, cond, uncond, mask=mask, comp=comp, encode_batch_size=encode_batch_size,
                      **kw)


class SimpleIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight(3.0)
    start_at: float = _start()
    end_at: float = _end()
    weight_type: Literal["standard", "prompt is more important", "style transfer"] = "standard"
    attn_mask: Any = Socket("MASK", optional=True)


SIMPLE_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}


@node("IPAdapter", category="ipadapter", display_name="IPAdapter")
def ipadapter_simple(inp: SimpleIn, ctx: NodeContext) -> ModelOut:
    """IP-Adapter with the unified loader's models: standard = linear, 'prompt is more important' = ease out."""
    patch = _apply(ctx, inp.model, inp.ipadapter, None, image=inp.image, attn_mask=inp.attn_mask, weight=inp.weight,
                   weight_type=SIMPLE_TYPES[inp.weight_type], start_at=inp.start_at, end_at=inp.end_at,
                   weight_composition=1.0)
    return ModelOut(MODEL=inp.model.with_patch(patch))


class AdvancedIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    weight_type: PlusWeightType = "linear"
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


def _wc(weight_type: str) -> float | None:
    """The pack passes weight_composition = 1.0, except that precise types default their boost to the weight."""
    return None if weight_type.endswith("precise") else 1.0


def _advanced(inp, ctx, *, unfold=False, **extra):
    wt = extra.pop("weight_type", getattr(inp, "weight_type", "linear"))
    patch = _apply(ctx, inp.model, inp.ipadapter, inp.clip_vision, image=inp.image,
                   image_negative=inp.image_negative, attn_mask=getattr(inp, "attn_mask", None), weight=inp.weight,
                   weight_type=wt, combine=getattr(inp, "combine_embeds", "concat"), start_at=inp.start_at,
                   end_at=inp.end_at, embeds_scaling=inp.embeds_scaling, unfold_batch=unfold,
                   weight_composition=extra.pop("weight_composition", _wc(wt)), **extra)
    return ModelOut(MODEL=inp.model.with_patch(patch))


@node("IPAdapterAdvanced", category="ipadapter", display_name="IPAdapter Advanced")
def ipadapter_advanced(inp: AdvancedIn, ctx: NodeContext) -> ModelOut:
    """IP-Adapter with every weight type, combine method and embeds scaling."""
    return _advanced(inp, ctx)


class BatchIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    weight_type: PlusWeightType = "linear"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    encode_batch_size: int = Field(0, ge=0, le=4096, description="images encoded per call (0 = all)")
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


@node("IPAdapterBatch", category="ipadapter", display_name="IPAdapter Batch (Adv.)")
def ipadapter_batch(inp: BatchIn, ctx: NodeContext) -> ModelOut:
    """One reference per latent (image i -> latent i; the last repeats); a weight list gives one weight per latent."""
    return _advanced(inp, ctx, unfold=True, encode_batch_size=inp.encode_batch_size)


class StyleCompositionIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image_style: Any = Socket("IMAGE")
    image_composition: Any = Socket("IMAGE")
    weight_style: float = _weight()
    weight_composition: float = _weight()
    expand_style: bool = False
    combine_embeds: Combine = "average"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


class StyleCompositionBatchIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image_style: Any = Socket("IMAGE")
    image_composition: Any = Socket("IMAGE")
    weight_style: float = _weight()
    weight_composition: float = _weight()
    expand_style: bool = False
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


def _style_composition(inp, ctx, unfold: bool) -> ModelOut:
    if inp.model.arch != "sdxl":
        raise ValueError("input model: Style & Composition is defined for SDXL models only (as in "
                         "ComfyUI_IPAdapter_plus); use IPAdapterAdvanced with 'style and composition' on SD1.5")
    wt = "strong style and composition" if inp.expand_style else "style and composition"
    patch = _apply(ctx, inp.model, inp.ipadapter, inp.clip_vision, image=inp.image_style,
                   image_composition=inp.image_composition, image_negative=inp.image_negative,
                   attn_mask=inp.attn_mask, weight=inp.weight_style, weight_type=wt,
                   weight_composition=inp.weight_composition, combine=getattr(inp, "combine_embeds", "concat"),
                   start_at=inp.start_at, end_at=inp.end_at, embeds_scaling=inp.embeds_scaling, unfold_batch=unfold)
    return ModelOut(MODEL=inp.model.with_patch(patch))


@node("IPAdapterStyleComposition", category="ipadapter/style_composition",
      display_name="IPAdapter Style & Composition SDXL")
def ipadapter_style_composition(inp: StyleCompositionIn, ctx: NodeContext) -> ModelOut:
    """Style from one image (style block), composition from another (composition block); SDXL."""
    return _style_composition(inp, ctx, False)


@node("IPAdapterStyleCompositionBatch", category="ipadapter/style_composition",
      display_name="IPAdapter Style & Composition Batch SDXL")
def ipadapter_style_composition_batch(inp: StyleCompositionBatchIn, ctx: NodeContext) -> ModelOut:
    """Style & Composition with one style/composition image per latent."""
    return _style_composition(inp, ctx, True)


class TiledIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight(3.0)
    weight_type: PlusWeightType = "linear"
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    sharpening: float = _f(0.0, 0.0, 1.0, 0.05, "contrast-adaptive sharpening of the tiles")
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


class TiledBatchIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight(3.0)
    weight_type: PlusWeightType = "linear"
    start_at: float = _start()
    end_at: float = _end()
    sharpening: float = _f(0.0, 0.0, 1.0, 0.05)
    embeds_scaling: Scaling = "V only"
    encode_batch_size: int = Field(0, ge=0, le=4096)
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


class TiledOut(NodeOutputs):
    MODEL: Any = Output("MODEL")
    tiles: Any = Output("IMAGE")
    masks: Any = Output("MASK")


def _tiled(inp, ctx, unfold: bool) -> TiledOut:
    image = inp.image
    mask = _mask(inp.attn_mask) if inp.attn_mask is not None else None
    tiles, masks = reference_tiles(image, mask, inp.sharpening)
    model = inp.model
    for tile, tmask in zip(tiles, masks, strict=True):
        patch = _apply(ctx, inp.model, inp.ipadapter, inp.clip_vision, image=tile, image_negative=inp.image_negative,
                       attn_mask=tmask, weight=inp.weight, weight_type=inp.weight_type,
                       weight_composition=_wc(inp.weight_type), combine=getattr(inp, "combine_embeds", "concat"),
                       start_at=inp.start_at, end_at=inp.end_at, embeds_scaling=inp.embeds_scaling,
                       unfold_batch=unfold, encode_batch_size=getattr(inp, "encode_batch_size", 0))
        model = model.with_patch(patch)
    return TiledOut(MODEL=model, tiles=torch.cat(tiles), masks=torch.cat(masks))


@node("IPAdapterTiled", category="ipadapter/tiled", display_name="IPAdapter Tiled")
def ipadapter_tiled(inp: TiledIn, ctx: NodeContext) -> TiledOut:
    """A non-square reference as 256² tiles, each applied where it lies (its own masked adapter term)."""
    return _tiled(inp, ctx, False)


@node("IPAdapterTiledBatch", category="ipadapter/tiled", display_name="IPAdapter Tiled Batch")
def ipadapter_tiled_batch(inp: TiledBatchIn, ctx: NodeContext) -> TiledOut:
    """IPAdapterTiled with one reference per latent."""
    return _tiled(inp, ctx, True)


class EmbedsApplyIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    pos_embed: Any = Socket("EMBEDS")
    weight: float = _weight(3.0)
    weight_type: PlusWeightType = "linear"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    neg_embed: Any = Socket("EMBEDS", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


def _embeds_apply(inp, ctx, unfold: bool) -> ModelOut:
    patch = _apply(ctx, inp.model, inp.ipadapter, inp.clip_vision, pos_embed=inp.pos_embed, neg_embed=inp.neg_embed,
                   attn_mask=inp.attn_mask, weight=inp.weight, weight_type=inp.weight_type,
                   weight_composition=_wc(inp.weight_type), start_at=inp.start_at, end_at=inp.end_at,
                   embeds_scaling=inp.embeds_scaling, unfold_batch=unfold)
    return ModelOut(MODEL=inp.model.with_patch(patch))


@node("IPAdapterEmbeds", category="ipadapter/embeds", display_name="IPAdapter Embeds")
def ipadapter_embeds(inp: EmbedsApplyIn, ctx: NodeContext) -> ModelOut:
    """Apply precomputed embeds (IPAdapterEncoder / IPAdapterCombineEmbeds / IPAdapterLoadEmbeds)."""
    return _embeds_apply(inp, ctx, False)


@node("IPAdapterEmbedsBatch", category="ipadapter/embeds", display_name="IPAdapter Embeds Batch")
def ipadapter_embeds_batch(inp: EmbedsApplyIn, ctx: NodeContext) -> ModelOut:
    """Precomputed embeds, one per latent."""
    return _embeds_apply(inp, ctx, True)


class MSIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    weight_faceidv2: float = Field(1.0, ge=-1.0, le=5.0, json_schema_extra={"step": 0.05},
                                   description="FaceID v2 adapters only")
    weight_type: PlusWeightType = "linear"
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    layer_weights: str = Field("", description='"t:weight" pairs by transformer index, e.g. "3:2.5, 6:1"; '
                                               "unnamed blocks get none", json_schema_extra={"multiline": True})
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)
    insightface: Any = Socket("INSIGHTFACE", optional=True)


def _ms_check(literals: dict, runtime):
    from .weights import parse_layer_weights

    try:
        parse_layer_weights(literals.get("layer_weights", ""))
    except ValueError as exc:
        yield "layer_weights", str(exc)


@node("IPAdapterMS", category="ipadapter/dev", display_name="IPAdapter Mad Scientist", check=_ms_check)
def ipadapter_ms(inp: MSIn, ctx: NodeContext) -> ModelOut:
    """Per-block weights by transformer index; the weight type is linear unless it is a precise type."""
    if inp.insightface is not None:
        raise ValueError("input insightface: FaceID adapters are applied by the FaceID nodes")
    wt = inp.weight_type if inp.weight_type.endswith("precise") or not inp.layer_weights.strip() else "linear"
    return _advanced(inp, ctx, weight_type=wt, layer_weights_text=inp.layer_weights)


class PreciseStyleIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    style_boost: float = _f(1.0, -5.0, 5.0, 0.05, "weight of the composition blocks (fed to the negative side)")
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


class PreciseCompositionIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    composition_boost: float = _f(0.0, -5.0, 5.0, 0.05, "weight of the other blocks (fed to the negative side)")
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


@node("IPAdapterPreciseStyleTransfer", category="ipadapter", display_name="IPAdapter Precise Style Transfer")
def ipadapter_precise_style(inp: PreciseStyleIn, ctx: NodeContext) -> ModelOut:
    """'style transfer precise' with style_boost as the composition-block weight."""
    return _advanced(inp, ctx, weight_type="style transfer precise", weight_composition=inp.style_boost)


@node("IPAdapterPreciseStyleTransferBatch", category="ipadapter",
      display_name="IPAdapter Precise Style Transfer Batch")
def ipadapter_precise_style_batch(inp: PreciseStyleIn, ctx: NodeContext) -> ModelOut:
    """Precise style transfer, one reference per latent."""
    return _advanced(inp, ctx, unfold=True, weight_type="style transfer precise", weight_composition=inp.style_boost)


@node("IPAdapterPreciseComposition", category="ipadapter", display_name="IPAdapter Precise Composition")
def ipadapter_precise_composition(inp: PreciseCompositionIn, ctx: NodeContext) -> ModelOut:
    """'composition precise' with composition_boost as the weight of the non-composition blocks."""
    return _advanced(inp, ctx, weight_type="composition precise", weight_composition=inp.composition_boost)


@node("IPAdapterPreciseCompositionBatch", category="ipadapter", display_name="IPAdapter Precise Composition Batch")
def ipadapter_precise_composition_batch(inp: PreciseCompositionIn, ctx: NodeContext) -> ModelOut:
    """Precise composition, one reference per latent."""
    return _advanced(inp, ctx, unfold=True, weight_type="composition precise",
                     weight_composition=inp.composition_boost)


class EnhancerIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    weight_type: PlusWeightType = "linear"
    combine_embeds: Combine = "concat"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    enhance_tiles: int = Field(2, ge=1, le=16, description="k: the image is also encoded as k×k tiles")
    enhance_ratio: float = _f(1.0, 0.0, 1.0, 0.05, "weight of the whole-image embeds against the tiles'")
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


class EnhancerBatchIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = _weight()
    weight_type: PlusWeightType = "linear"
    start_at: float = _start()
    end_at: float = _end()
    embeds_scaling: Scaling = "V only"
    enhance_tiles: int = Field(2, ge=1, le=16)
    enhance_ratio: float = _f(0.5, 0.0, 1.0, 0.05)
    encode_batch_size: int = Field(0, ge=0, le=4096)
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


@node("IPAdapterClipVisionEnhancer", category="ipadapter/dev", display_name="IPAdapter ClipVision Enhancer")
def ipadapter_clip_vision_enhancer(inp: EnhancerIn, ctx: NodeContext) -> ModelOut:
    """The reference encoded whole and as k×k tiles (more detail than one 224² view), merged."""
    return _advanced(inp, ctx, tiles=inp.enhance_tiles, ratio=inp.enhance_ratio)


@node("IPAdapterClipVisionEnhancerBatch", category="ipadapter/dev",
      display_name="IPAdapter ClipVision Enhancer Batch")
def ipadapter_clip_vision_enhancer_batch(inp: EnhancerBatchIn, ctx: NodeContext) -> ModelOut:
    """ClipVision Enhancer, one reference per latent."""
    return _advanced(inp, ctx, unfold=True, tiles=inp.enhance_tiles, ratio=inp.enhance_ratio,
                     encode_batch_size=inp.encode_batch_size)


# -- params ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class AdapterParams:
    """IPADAPTER_PARAMS: parallel tuples, one entry per application (see module docstring)."""

    image: tuple
    attn_mask: tuple
    weight: tuple
    weight_type: tuple
    start_at: tuple
    end_at: tuple

    def __add__(self, other: AdapterParams) -> AdapterParams:
        return AdapterParams(*(getattr(self, f) + getattr(other, f) for f in
                               ("image", "attn_mask", "weight", "weight_type", "start_at", "end_at")))

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.image + self.attn_mask if isinstance(t, torch.Tensor))


class RegionalIn(NodeInputs):
    image: Any = Socket("IMAGE")
    image_weight: float = _f(1.0, -1.0, 3.0, 0.05)
    prompt_weight: float = _f(1.0, 0.0, 10.0, 0.05, "mask_strength of the masked text conditionings")
    weight_type: PlusWeightType = "linear"
    start_at: float = _start()
    end_at: float = _end()
    mask: Any = Socket("MASK", optional=True)
    positive: Any = Socket("CONDITIONING", optional=True)
    negative: Any = Socket("CONDITIONING", optional=True)


class RegionalOut(NodeOutputs):
    IPADAPTER_PARAMS: Any = Output("IPADAPTER_PARAMS")
    POSITIVE: Any = Output("CONDITIONING")
    NEGATIVE: Any = Output("CONDITIONING")


def _mask_conditioning(cond, mask, strength: float, name: str):
    if cond is None or mask is None:
        return cond
    if not hasattr(cond, "map"):
        raise ValueError(f"input {name}: masking a text conditioning needs the sampler's regional conditioning, "
                         "which this build does not have; leave positive/negative unconnected")
    return cond.map(lambda e: e.replace(mask=mask, set_area_to_bounds=False, mask_strength=strength))


@node("IPAdapterRegionalConditioning", category="ipadapter/params", display_name="IPAdapter Regional Conditioning")
def ipadapter_regional_conditioning(inp: RegionalIn, ctx: NodeContext) -> RegionalOut:
    """One masked application for IPAdapterFromParams; the mask also confines the given text conditionings."""
    mask = _mask(inp.mask) if inp.mask is not None else None
    params = AdapterParams((inp.image,), (mask,), (inp.image_weight,), (inp.weight_type,), (inp.start_at,),
                           (inp.end_at,))
    return RegionalOut(IPADAPTER_PARAMS=params,
                       POSITIVE=_mask_conditioning(inp.positive, mask, inp.prompt_weight, "positive"),
                       NEGATIVE=_mask_conditioning(inp.negative, mask, inp.prompt_weight, "negative"))


class CombineParamsIn(NodeInputs):
    params_1: Any = Socket("IPADAPTER_PARAMS")
    params_2: Any = Socket("IPADAPTER_PARAMS")
    params_3: Any = Socket("IPADAPTER_PARAMS", optional=True)
    params_4: Any = Socket("IPADAPTER_PARAMS", optional=True)
    params_5: Any = Socket("IPADAPTER_PARAMS", optional=True)


class ParamsOut(NodeOutputs):
    IPADAPTER_PARAMS: Any = Output("IPADAPTER_PARAMS")


@node("IPAdapterCombineParams", category="ipadapter/params", display_name="IPAdapter Combine Params")
def ipadapter_combine_params(inp: CombineParamsIn, ctx: NodeContext) -> ParamsOut:
    """Concatenate up to five IPADAPTER_PARAMS, in order."""
    out = inp.params_1 + inp.params_2
    for p in (inp.params_3, inp.params_4, inp.params_5):
        if p is not None:
            out = out + p
    return ParamsOut(IPADAPTER_PARAMS=out)


class FromParamsIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    ipadapter_params: Any = Socket("IPADAPTER_PARAMS")
    combine_embeds: Combine = "concat"
    embeds_scaling: Scaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)


@node("IPAdapterFromParams", category="ipadapter/params", display_name="IPAdapter from Params")
def ipadapter_from_params(inp: FromParamsIn, ctx: NodeContext) -> ModelOut:
    """Apply every entry of IPADAPTER_PARAMS (each its own image, mask, weight, type and range)."""
    p: AdapterParams = inp.ipadapter_params
    model = inp.model
    for image, mask, w, wt, s, e in zip(p.image, p.attn_mask, p.weight, p.weight_type, p.start_at, p.end_at, strict=True):
        if image is None:
            continue
        patch = _apply(ctx, inp.model, inp.ipadapter, inp.clip_vision, image=image, image_negative=inp.image_negative,
                       attn_mask=mask, weight=w, weight_type=wt, weight_composition=_wc(wt),
                       combine=inp.combine_embeds, start_at=s, end_at=e, embeds_scaling=inp.embeds_scaling)
        model = model.with_patch(patch)
    return ModelOut(MODEL=model)


# -- embeds helpers -----------------------------------------------------------------------------------------

class CombineEmbedsIn(NodeInputs):
    embed1: Any = Socket("EMBEDS")
    method: Literal["concat", "add", "subtract", "average", "norm average", "max", "min"] = "concat"
    embed2: Any = Socket("EMBEDS", optional=True)
    embed3: Any = Socket("EMBEDS", optional=True)
    embed4: Any = Socket("EMBEDS", optional=True)
    embed5: Any = Socket("EMBEDS", optional=True)


class EmbedsOut(NodeOutputs):
    EMBEDS: Any = Output("EMBEDS")


def reduce_embeds(x: torch.Tensor, method: str) -> torch.Tensor:
    """concat keeps the rows; add, subtract, average, norm average as encoder.combine_embeds; max / min the
    element-wise maximum / minimum over the rows."""
    if method == "max":
        return x.max(0, keepdim=True).values
    if method == "min":
        return x.min(0, keepdim=True).values
    from .encoder import combine_embeds

    return combine_embeds(x, method) if method in COMBINE_METHODS else x


@node("IPAdapterCombineEmbeds", category="ipadapter/embeds", display_name="IPAdapter Combine Embeds")
def ipadapter_combine_embeds(inp: CombineEmbedsIn, ctx: NodeContext) -> EmbedsOut:
    """Stack the embeds given (their images one after another) and reduce them with ``method``."""
    given = [(f"embed{i}", e) for i, e in enumerate((inp.embed1, inp.embed2, inp.embed3, inp.embed4, inp.embed5), 1)
             if e is not None]
    first = given[0][1]
    if inp.method == "concat" and len(given) == 1:
        return EmbedsOut(EMBEDS=first)
    for name, e in given[1:]:
        if e.encoder_input != first.encoder_input or e.cond.shape[1:] != first.cond.shape[1:]:
            raise ValueError(f"input {name}: these embeds are {e.describe()} but embed1 is {first.describe()}; "
                             "only embeds of one encoder and kind can be combined")
    cond = reduce_embeds(torch.cat([e.cond for _, e in given]).float(), inp.method)
    uncond = None
    if all(e.uncond is not None for _, e in given):
        uncond = torch.cat([e.uncond for _, e in given]).float()
        uncond = uncond if inp.method == "concat" else uncond[:1]
    return EmbedsOut(EMBEDS=ImageEmbeds(cond, uncond, first.encoder_input, first.clip_vision, first.adapter))


class PlusEncoderIn(NodeInputs):
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = Field(1.0, ge=-1.0, le=3.0, json_schema_extra={"step": 0.01}, description="multiplies pos_embed")
    mask: Any = Socket("MASK", optional=True, description="multiplies the encoder's pixel values")
    clip_vision: Any = Socket("CLIP_VISION", optional=True)
    image_negative: Any = Socket("IMAGE", optional=True, description="ipgraph: replaces the default negative")


class PlusEncoderOut(NodeOutputs):
    pos_embed: Any = Output("EMBEDS")
    neg_embed: Any = Output("EMBEDS")


@node("IPAdapterEncoder", category="ipadapter/embeds", display_name="IPAdapter Encoder",
      renamed_outputs={"embeds": "pos_embed"})
def ipadapter_encoder(inp: PlusEncoderIn, ctx: NodeContext) -> PlusEncoderOut:
    """Encode reference images once: pos_embed (times weight, carrying its negatives) and neg_embed."""
    adapter, cv = unpack(inp.ipadapter, inp.clip_vision)
    cv = need_encoder(cv)
    mask = resize_mask_for_encoder(_mask(inp.mask), cv.info.image_size) if inp.mask is not None else None
    with runtime_of(ctx).models.on_device(cv.model, once_per_job=True):
        cond = encode_reference(adapter, cv, inp.image, "image", mask=mask)
        if inp.image_negative is not None:
            from .embeds import _fit

            uncond = _fit(encode_reference(adapter, cv, inp.image_negative, "image_negative"), cond.shape[0])
        else:
            uncond = negative_for(adapter, cv, cond)
    if inp.weight != 1.0:
        cond = cond * inp.weight
    meta = (adapter.info.encoder_input, Path(cv.source).name, Path(adapter.info.path).name)
    return PlusEncoderOut(pos_embed=ImageEmbeds(cond, uncond, *meta), neg_embed=ImageEmbeds(uncond, None, *meta))


class SaveEmbedsIn(NodeInputs):
    embeds: Any = Socket("EMBEDS")
    filename_prefix: str = Field("IP_embeds", min_length=1, max_length=200)


class NoOut(NodeOutputs):
    pass


@node("IPAdapterSaveEmbeds", category="ipadapter/embeds", display_name="IPAdapter Save Embeds", output_node=True)
def ipadapter_save_embeds(inp: SaveEmbedsIn, ctx: NodeContext) -> NoOut:
    """Save embeds into the output folder as ``<prefix>_00001.ipadpt`` (safetensors inside, never a pickle)."""
    runtime = runtime_of(ctx)
    prefix = inp.filename_prefix.replace("\\", "/")
    sub, _, stem = prefix.rpartition("/")
    folder = (runtime.output_dir / sub).resolve()
    if runtime.output_dir.resolve() not in (folder, *folder.parents):
        raise ValueError(f"input filename_prefix: {inp.filename_prefix!r} points outside the output folder")
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "IP_embeds"
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d{5})\.ipadpt$")
    counter = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0) + 1
    name = f"{stem}_{counter:05d}.ipadpt"
    save_embeds(inp.embeds, folder / name)
    ctx.set_ui({"embeds": [{"filename": name, "subfolder": sub, "type": "output"}]})
    return NoOut()


class LoadEmbedsIn(NodeInputs):
    embeds: str = Field(..., min_length=1, description=".ipadpt file in the input folder (or models/embeds)")


def _embeds_file(runtime, name: str) -> Path:
    """The input folder first (where the pack looks), then models/embeds and the bundled assets."""
    candidate = (runtime.input_dir / name).resolve()
    if runtime.input_dir.resolve() in candidate.parents and candidate.is_file():
        return candidate
    from .embeds import embeds_path

    return embeds_path(runtime, name)


def _load_embeds_check(literals: dict, runtime):
    if runtime is None:
        return
    try:
        load_embeds(_embeds_file(runtime, literals["embeds"]), 0, False, pack_format=True)
    except (ModelNotFound, EmbedsFileError) as exc:
        yield "embeds", str(exc)


def _load_embeds_fingerprint(literals: dict, runtime) -> str:
    try:
        return file_fingerprint(_embeds_file(runtime, literals["embeds"]))
    except (ModelNotFound, AttributeError):
        return "missing"


@node("IPAdapterLoadEmbeds", category="ipadapter/embeds", display_name="IPAdapter Load Embeds",
      check=_load_embeds_check, fingerprint=_load_embeds_fingerprint)
def ipadapter_load_embeds(inp: LoadEmbedsIn, ctx: NodeContext) -> EmbedsOut:
    """Load embeds saved by IPAdapterSaveEmbeds (or the pack's own tensor files, read weights-only)."""
    return EmbedsOut(EMBEDS=load_embeds(_embeds_file(runtime_of(ctx), inp.embeds), 0, False, pack_format=True))


# -- image helpers --------------------------------------------------------------------------------------------

class NoiseIn(NodeInputs):
    type: Literal["fade", "dissolve", "gaussian", "shuffle"] = "fade"
    strength: float = _f(1.0, 0.0, 1.0, 0.05)
    blur: int = Field(0, ge=0, le=32)
    image_optional: Any = Socket("IMAGE", optional=True)


class ImageOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")


@node("IPAdapterNoise", category="ipadapter/utils", display_name="IPAdapter Noise")
def ipadapter_noise(inp: NoiseIn, ctx: NodeContext) -> ImageOut:
    """A noise image to use as image_negative (math in imageprep.make_noise)."""
    return ImageOut(IMAGE=make_noise(inp.type, inp.strength, inp.blur, inp.image_optional))


class PrepIn(NodeInputs):
    image: Any = Socket("IMAGE")
    interpolation: Literal["LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST"] = "LANCZOS"
    crop_position: Literal["top", "bottom", "left", "right", "center", "pad"] = "top"
    sharpening: float = _f(0.0, 0.0, 1.0, 0.05)


@node("PrepImageForClipVision", category="ipadapter/utils", display_name="Prep Image For ClipVision")
def prep_image(inp: PrepIn, ctx: NodeContext) -> ImageOut:
    """Square-crop (or pad) and resize to 224² with the chosen filter, optionally sharpened."""
    return ImageOut(IMAGE=prep_image_for_clip_vision(inp.image, inp.interpolation, inp.crop_position, inp.sharpening))


# -- per-frame weights -----------------------------------------------------------------------------------------

class WeightsIn(NodeInputs):
    weights: str = Field("1.0, 0.0", json_schema_extra={"multiline": True})
    timing: Literal[TIMINGS] = "linear"  # type: ignore[valid-type]
    frames: int = Field(0, ge=0, le=9999)
    start_frame: int = Field(0, ge=0, le=9999)
    end_frame: int = Field(9999, ge=0, le=9999)
    add_starting_frames: int = Field(0, ge=0, le=9999)
    add_ending_frames: int = Field(0, ge=0, le=9999)
    method: Literal[METHODS] = "full batch"  # type: ignore[valid-type]
    image: Any = Socket("IMAGE", optional=True)


class WeightsOut(NodeOutputs):
    weights: Any = Output("FLOAT")
    weights_invert: Any = Output("FLOAT")
    total_frames: Any = Output("INT")
    image_1: Any = Output("IMAGE")
    image_2: Any = Output("IMAGE")
    weights_strategy: Any = Output("WEIGHTS_STRATEGY")


def _weights_out(strategy: dict, image) -> WeightsOut:
    try:
        w, inv, total, i1, i2 = weights_schedule(strategy, image)
    except ValueError as exc:
        raise ValueError(f"input weights: {exc}") from None
    return WeightsOut(weights=w, weights_invert=inv, total_frames=total, image_1=i1, image_2=i2,
                      weights_strategy=strategy)


@node("IPAdapterWeights", category="ipadapter/weights", display_name="IPAdapter Weights")
def ipadapter_weights(inp: WeightsIn, ctx: NodeContext) -> WeightsOut:
    """A weight per frame (for IPAdapterBatch) from a list or a timing curve (math in schedule.py)."""
    strategy = {k: getattr(inp, k) for k in ("weights", "timing", "frames", "start_frame", "end_frame",
                                             "add_starting_frames", "add_ending_frames", "method")}
    strategy["frame_count"] = inp.image.shape[0] if inp.image is not None else 0
    return _weights_out(strategy, inp.image)


class FromStrategyIn(NodeInputs):
    weights_strategy: Any = Socket("WEIGHTS_STRATEGY")
    image: Any = Socket("IMAGE", optional=True)


@node("IPAdapterWeightsFromStrategy", category="ipadapter/weights", display_name="IPAdapter Weights From Strategy")
def ipadapter_weights_from_strategy(inp: FromStrategyIn, ctx: NodeContext) -> WeightsOut:
    """The same schedule as an earlier IPAdapterWeights, for another image batch."""
    return _weights_out(dict(inp.weights_strategy), inp.image)


class PromptScheduleIn(NodeInputs):
    weights_strategy: Any = Socket("WEIGHTS_STRATEGY")
    prompt: str = Field("", json_schema_extra={"multiline": True})


class PromptScheduleOut(NodeOutputs):
    prompt_schedule: Any = Output("STRING")


@node("IPAdapterPromptScheduleFromWeightsStrategy", category="ipadapter/weights",
      display_name="Prompt Schedule From Weights Strategy")
def ipadapter_prompt_schedule(inp: PromptScheduleIn, ctx: NodeContext) -> PromptScheduleOut:
    """A prompt-travel schedule (one prompt line per image) aligned with a weights strategy."""
    return PromptScheduleOut(prompt_schedule=prompt_schedule(inp.weights_strategy, inp.prompt))


class CombineWeightsIn(NodeInputs):
    weights_1: float = _f(0.0, 0.0, 1.0, 0.05)
    weights_2: float = _f(0.0, 0.0, 1.0, 0.05)


class CombineWeightsOut(NodeOutputs):
    weights: Any = Output("FLOAT")
    count: Any = Output("INT")


@node("IPAdapterCombineWeights", category="ipadapter/utils", display_name="IPAdapter Combine Weights")
def ipadapter_combine_weights(inp: CombineWeightsIn, ctx: NodeContext) -> CombineWeightsOut:
    """Concatenate two weights or weight lists."""
    a = list(inp.weights_1) if isinstance(inp.weights_1, (list, tuple)) else [inp.weights_1]
    b = list(inp.weights_2) if isinstance(inp.weights_2, (list, tuple)) else [inp.weights_2]
    return CombineWeightsOut(weights=a + b, count=len(a + b))

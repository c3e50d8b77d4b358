"""ComfyUI's model-merge nodes as weight patches: the merged model is model1's handle with a patch, never a
new or changed UNet (nothing is copied until sampling, and then only for the call).

Math (ComfyUI's ``add_patches(patches, strength_patch, strength_model)``: ``w ← strength_model·w1 +
strength_patch·w2``, applied key by key over model2's weights, model2's own LoRAs/merges included):

* ModelMergeSimple / CLIPMergeSimple: ``w = ratio·w1 + (1 − ratio)·w2``.
* ModelMergeBlocks: the same with ratio chosen per weight by the longest of ``input`` / ``middle`` / ``out``
  that prefixes its original (LDM) name; other weights (``time_embed``, ``label_emb``) take ``input``'s.
* ModelMergeAdd / CLIPMergeAdd: ``w = w1 + w2``.
* ModelMergeSubtract / CLIPMergeSubtract: ``w = multiplier·w1 − multiplier·w2`` (ComfyUI's
  ``add_patches(kp, −multiplier, multiplier)``).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import ClipHandle, ModelHandle
from ..models.single_file import unet_to_original
from .patch import WeightOf, WeightPatch, named_weights

log = logging.getLogger(__name__)

CATEGORY = "advanced/model_merging"
RATIO = dict(ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
MULTIPLIER = dict(ge=-10.0, le=10.0, json_schema_extra={"step": 0.01})


def _weight_patches(patches: tuple) -> tuple:
    return tuple(p for p in patches if isinstance(p, WeightPatch))


def _shared(target1, target2, what: str, skip=()) -> list[str]:
    w1, w2 = named_weights(target1), named_weights(target2)
    names = [n for n in w2 if not n.endswith(skip)]
    wrong = [n for n in names if n not in w1 or w1[n].shape != w2[n].shape]
    if len(wrong) > max(4, len(names) // 100):
        raise ValueError(f"input {what}2: the two models have different architectures ({len(wrong)} weights "
                         f"differ, first: {wrong[0]}); merge models of the same kind.")
    if wrong:  # ComfyUI's rule: a few mismatched weights (an inpainting model's conv_in) stay unmerged
        log.warning("%s merge: %d weight(s) of other shapes left unmerged: %s", what, len(wrong), ", ".join(wrong))
    return [n for n in names if n not in wrong]


def merge_model(model1: ModelHandle, model2: ModelHandle, strength_patch, strength_model) -> ModelHandle:
    """model1 carrying ``w ← strength_model(name)·w + strength_patch(name)·w2``; the callables take a name."""
    if model1.arch != model2.arch:
        raise ValueError(f"input model2: model1 is {model1.arch} and model2 is {model2.arch}; merge models of "
                         "the same kind.")
    names = _shared(model1.unet, model2.unet, "model")
    own = _weight_patches(model2.patches)
    groups: dict[tuple[float, float], dict] = {}
    for n in names:
        groups.setdefault((strength_patch(n), strength_model(n)), {})[n] = WeightOf(model2.unet, n, own)
    for (sp, sm), terms in groups.items():
        model1 = model1.with_patch(WeightPatch(terms, strength_patch=sp, strength_model=sm, source=model2.source))
    return model1


def merge_clip(clip1: ClipHandle, clip2: ClipHandle, strength_patch: float, strength_model: float) -> ClipHandle:
    if len(clip1.text_encoders) != len(clip2.text_encoders):
        raise ValueError("input clip2: the two CLIPs have different numbers of text encoders; merge CLIPs of the "
                         "same kind.")
    names = _shared(clip1.text_encoders, clip2.text_encoders, "clip", skip=(".position_ids", ".logit_scale"))
    own = _weight_patches(clip2.patches)
    terms = {n: WeightOf(clip2.text_encoders, n, own) for n in names}
    return clip1.with_patch(WeightPatch(terms, strength_patch=strength_patch, strength_model=strength_model,
                                        source=clip2.source))


class MergeOut(NodeOutputs):
    MODEL: Any = Output("MODEL")


class ClipMergeOut(NodeOutputs):
    CLIP: Any = Output("CLIP")


class ModelMergeSimpleIn(NodeInputs):
    model1: Any = Socket("MODEL")
    model2: Any = Socket("MODEL")
    ratio: float = Field(1.0, **RATIO)


@node("ModelMergeSimple", category=CATEGORY)
def model_merge_simple(inp: ModelMergeSimpleIn, ctx: NodeContext) -> MergeOut:
    """ratio·model1 + (1 − ratio)·model2, weight by weight."""
    r = inp.ratio
    return MergeOut(MODEL=merge_model(inp.model1, inp.model2, lambda n: 1.0 - r, lambda n: r))


class ModelMergeBlocksIn(NodeInputs):
    model1: Any = Socket("MODEL")
    model2: Any = Socket("MODEL")
    input: float = Field(1.0, **RATIO)
    middle: float = Field(1.0, **RATIO)
    out: float = Field(1.0, **RATIO)


def block_ratios(unet, ratios: dict[str, float]) -> dict[str, float]:
    """Ratio of every UNet weight: the longest key of ``ratios`` prefixing its LDM name, else the first."""
    default = next(iter(ratios.values()))
    ldm = {v: k for k, v in unet_to_original({k: k for k in named_weights(unet)}, unet.config).items()}
    out = {}
    for name, original in ldm.items():
        best = max((a for a in ratios if original.startswith(a)), key=len, default=None)
        out[name] = ratios[best] if best is not None else default
    return out


@node("ModelMergeBlocks", category=CATEGORY)
def model_merge_blocks(inp: ModelMergeBlocksIn, ctx: NodeContext) -> MergeOut:
    """Merge with one ratio for the input blocks, one for the middle block, one for the output blocks."""
    ratios = block_ratios(inp.model1.unet, {"input": inp.input, "middle": inp.middle, "out": inp.out})
    return MergeOut(MODEL=merge_model(inp.model1, inp.model2, lambda n: 1.0 - ratios[n], lambda n: ratios[n]))


class TwoModelsIn(NodeInputs):
    model1: Any = Socket("MODEL")
    model2: Any = Socket("MODEL")


@node("ModelMergeAdd", category=CATEGORY)
def model_merge_add(inp: TwoModelsIn, ctx: NodeContext) -> MergeOut:
    """model1 + model2, weight by weight (adds a difference model to a base)."""
    return MergeOut(MODEL=merge_model(inp.model1, inp.model2, lambda n: 1.0, lambda n: 1.0))


class ModelMergeSubtractIn(TwoModelsIn):
    multiplier: float = Field(1.0, **MULTIPLIER)


@node("ModelMergeSubtract", category=CATEGORY)
def model_merge_subtract(inp: ModelMergeSubtractIn, ctx: NodeContext) -> MergeOut:
    """multiplier·(model1 − model2), weight by weight (ComfyUI's arithmetic: a difference model)."""
    m = inp.multiplier
    return MergeOut(MODEL=merge_model(inp.model1, inp.model2, lambda n: -m, lambda n: m))


class ClipMergeSimpleIn(NodeInputs):
    clip1: Any = Socket("CLIP")
    clip2: Any = Socket("CLIP")
    ratio: float = Field(1.0, **RATIO)


@node("CLIPMergeSimple", category=CATEGORY)
def clip_merge_simple(inp: ClipMergeSimpleIn, ctx: NodeContext) -> ClipMergeOut:
    """ratio·clip1 + (1 − ratio)·clip2 (position ids and logit scale are kept from clip1)."""
    return ClipMergeOut(CLIP=merge_clip(inp.clip1, inp.clip2, 1.0 - inp.ratio, inp.ratio))


class TwoClipsIn(NodeInputs):
    clip1: Any = Socket("CLIP")
    clip2: Any = Socket("CLIP")


@node("CLIPMergeAdd", category=CATEGORY)
def clip_merge_add(inp: TwoClipsIn, ctx: NodeContext) -> ClipMergeOut:
    """clip1 + clip2, weight by weight."""
    return ClipMergeOut(CLIP=merge_clip(inp.clip1, inp.clip2, 1.0, 1.0))


class ClipMergeSubtractIn(TwoClipsIn):
    multiplier: float = Field(1.0, **MULTIPLIER)


@node("CLIPMergeSubtract", category=CATEGORY)
def clip_merge_subtract(inp: ClipMergeSubtractIn, ctx: NodeContext) -> ClipMergeOut:
    """multiplier·(clip1 − clip2), weight by weight."""
    return ClipMergeOut(CLIP=merge_clip(inp.clip1, inp.clip2, -inp.multiplier, inp.multiplier))

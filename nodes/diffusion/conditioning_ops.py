"""ComfyUI's conditioning nodes: combine, average, concat, area, mask, timestep range, zero-out.

A CONDITIONING is a list of entries (``CondEntry``); these nodes build and edit that list, and the sampler
evaluates and blends the entries (``guidance.py`` states the math). What each node computes:

- Combine: the two lists concatenated (both act; the sampler averages them by weight).
- Average: every ``to`` entry's embeds become ``to * s + from[:, :T_to] * (1 - s)`` (``from`` cut or
  zero-padded to ``to``'s token count), pooled likewise when both have one (else ``from``'s); only the first
  ``from`` entry is used.
- Concat: every ``to`` entry's embeds get the first ``from`` entry's embeds appended along the tokens.
- SetArea: ``area = (height // 8, width // 8, y // 8, x // 8)`` latent pixels and ``strength``.
- SetAreaPercentage: ``area = ("percentage", height, width, y, x)`` (fractions) and ``strength``.
- SetMask: ``mask`` (2-D masks get a batch axis), ``mask_strength`` and ``set_area_to_bounds``
  (``set_cond_area`` "mask bounds").
- SetTimestepRange: ``start_percent``/``end_percent``.
- ZeroOut: embeds and pooled replaced by zeros of the same shape.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

log = logging.getLogger(__name__)
MAX_RESOLUTION = 16384


class CondOut(NodeOutputs):
    CONDITIONING: Any = Output("CONDITIONING")


class CombineIn(NodeInputs):
    conditioning_1: Any = Socket("CONDITIONING")
    conditioning_2: Any = Socket("CONDITIONING")


@node("ConditioningCombine", category="conditioning", display_name="Conditioning (Combine)")
def conditioning_combine(inp: CombineIn, ctx: NodeContext) -> CondOut:
    """Both conditionings act; the sampler blends their outputs by weight (area, mask, strength)."""
    return CondOut(CONDITIONING=inp.conditioning_1 + inp.conditioning_2)


class AverageIn(NodeInputs):
    conditioning_to: Any = Socket("CONDITIONING")
    conditioning_from: Any = Socket("CONDITIONING")
    conditioning_to_strength: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})


def _fit_tokens(t: torch.Tensor, tokens: int) -> torch.Tensor:
    t = t[:, :tokens]
    if t.shape[1] < tokens:
        t = torch.cat([t, torch.zeros(t.shape[0], tokens - t.shape[1], t.shape[2], dtype=t.dtype)], dim=1)
    return t


@node("ConditioningAverage", category="conditioning", display_name="Conditioning (Average)")
def conditioning_average(inp: AverageIn, ctx: NodeContext) -> CondOut:
    """Blend the embeddings of ``conditioning_to`` towards ``conditioning_from``."""
    source = inp.conditioning_from.entries[0]
    if len(inp.conditioning_from.entries) > 1:
        log.warning("ConditioningAverage: conditioning_from holds several entries; only the first is used")
    s = inp.conditioning_to_strength

    def blend(entry):
        if entry.embeds.shape[-1] != source.embeds.shape[-1]:
            raise ValueError(f"conditioning_from: its embeddings are {source.embeds.shape[-1]} wide but "
                             f"conditioning_to's are {entry.embeds.shape[-1]}; average prompts of the same model")
        embeds = entry.embeds * s + _fit_tokens(source.embeds, entry.embeds.shape[1]) * (1.0 - s)
        pooled = entry.pooled
        if entry.pooled is not None and source.pooled is not None:
            pooled = entry.pooled * s + source.pooled * (1.0 - s)
        elif source.pooled is not None:
            pooled = source.pooled
        return entry.replace(embeds=embeds, pooled=pooled)

    return CondOut(CONDITIONING=inp.conditioning_to.map(blend))


class ConcatIn(NodeInputs):
    conditioning_to: Any = Socket("CONDITIONING")
    conditioning_from: Any = Socket("CONDITIONING")


@node("ConditioningConcat", category="conditioning", display_name="Conditioning (Concat)")
def conditioning_concat(inp: ConcatIn, ctx: NodeContext) -> CondOut:
    """Append ``conditioning_from``'s tokens to every entry of ``conditioning_to`` (pooled stays ``to``'s)."""
    source = inp.conditioning_from.entries[0].embeds
    if len(inp.conditioning_from.entries) > 1:
        log.warning("ConditioningConcat: conditioning_from holds several entries; only the first is used")

    def concat(entry):
        if entry.embeds.shape[-1] != source.shape[-1]:
            raise ValueError(f"conditioning_from: its embeddings are {source.shape[-1]} wide but "
                             f"conditioning_to's are {entry.embeds.shape[-1]}; concatenate prompts of one model")
        return entry.replace(embeds=torch.cat([entry.embeds, source.to(entry.embeds.dtype)], dim=1))

    return CondOut(CONDITIONING=inp.conditioning_to.map(concat))


def _pixels(default: int, minimum: int = 0) -> Any:
    return Field(default, ge=minimum, le=MAX_RESOLUTION, json_schema_extra={"step": 8})


class SetAreaIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")
    width: int = _pixels(64, 64)
    height: int = _pixels(64, 64)
    x: int = _pixels(0)
    y: int = _pixels(0)
    strength: float = Field(1.0, ge=0.0, le=10.0, json_schema_extra={"step": 0.01})


@node("ConditioningSetArea", category="conditioning", display_name="Conditioning (Set Area)")
def conditioning_set_area(inp: SetAreaIn, ctx: NodeContext) -> CondOut:
    """Make the conditioning act on a rectangle (pixels, rounded down to the latent's 8-pixel grid)."""
    area = (inp.height // 8, inp.width // 8, inp.y // 8, inp.x // 8)
    return CondOut(CONDITIONING=inp.conditioning.map(
        lambda e: e.replace(area=area, strength=inp.strength, set_area_to_bounds=False)))


class SetAreaPercentageIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")
    width: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    height: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    x: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    y: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    strength: float = Field(1.0, ge=0.0, le=10.0, json_schema_extra={"step": 0.01})


@node("ConditioningSetAreaPercentage", category="conditioning",
      display_name="Conditioning (Set Area with Percentage)")
def conditioning_set_area_percentage(inp: SetAreaPercentageIn, ctx: NodeContext) -> CondOut:
    """Make the conditioning act on a rectangle given as fractions of the image."""
    area = ("percentage", inp.height, inp.width, inp.y, inp.x)
    return CondOut(CONDITIONING=inp.conditioning.map(
        lambda e: e.replace(area=area, strength=inp.strength, set_area_to_bounds=False)))


class SetMaskIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")
    mask: Any = Socket("MASK")
    strength: float = Field(1.0, ge=0.0, le=10.0, json_schema_extra={"step": 0.01})
    set_cond_area: Literal["default", "mask bounds"] = "default"


@node("ConditioningSetMask", category="conditioning", display_name="Conditioning (Set Mask)")
def conditioning_set_mask(inp: SetMaskIn, ctx: NodeContext) -> CondOut:
    """Weight the conditioning by a mask (resized to the latent when sampling); "mask bounds" evaluates it
    only on the mask's bounding box."""
    mask = inp.mask
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"mask: expected a MASK [B,H,W], got {getattr(mask, 'shape', type(mask).__name__)}")
    mask = (mask[None] if mask.ndim == 2 else mask).float()
    bounds = inp.set_cond_area != "default"
    return CondOut(CONDITIONING=inp.conditioning.map(
        lambda e: e.replace(mask=mask, mask_strength=inp.strength, set_area_to_bounds=bounds)))


class TimestepRangeIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")
    start: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.001})
    end: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.001})


@node("ConditioningSetTimestepRange", category="advanced/conditioning",
      display_name="ConditioningSetTimestepRange")
def conditioning_set_timestep_range(inp: TimestepRangeIn, ctx: NodeContext) -> CondOut:
    """Make the conditioning act only between two fractions of the schedule."""
    return CondOut(CONDITIONING=inp.conditioning.map(
        lambda e: e.replace(start_percent=inp.start, end_percent=inp.end)))


class ZeroOutIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")


@node("ConditioningZeroOut", category="advanced/conditioning", display_name="ConditioningZeroOut")
def conditioning_zero_out(inp: ZeroOutIn, ctx: NodeContext) -> CondOut:
    """All-zero embeddings (and pooled) of the same shapes (SDXL's usual negative)."""
    return CondOut(CONDITIONING=inp.conditioning.map(lambda e: e.replace(
        embeds=torch.zeros_like(e.embeds), pooled=None if e.pooled is None else torch.zeros_like(e.pooled))))

"""Turning a parsed LoRA into weight patches for a MODEL and a CLIP, with the checks users need.

Why the checks: a LoRA made for another base model either silently does nothing (no key matches) or fails deep
in torch with a shape error. Here every module is matched by name and shape first, and what does not fit is
reported as a sentence that says how many modules matched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.types import SDXL, ClipHandle, ModelHandle
from .files import PART_NAMES, LoraFile, clip_weight_names, term_fits, unet_weight_names
from .patch import WeightPatch, named_weights

log = logging.getLogger(__name__)


class LoraMismatch(ValueError):
    """The LoRA does not fit the model; the message is a sentence naming the problem."""


def _arch_name(arch: str) -> str:
    return "SDXL" if arch == SDXL else "SD1.5"


def _match(lora: LoraFile, part: str, names: dict[str, str], params: dict, what: str) -> tuple[dict, int]:
    """Terms of ``part`` keyed by the target's parameter names; raises when shapes say another model."""
    terms, total, wrong = {}, 0, []
    for (p, module), term in lora.terms.items():
        if p != part:
            continue
        total += 1
        name = names.get(module)
        if name is None:
            continue
        if not term_fits(term, params[name].shape):
            wrong.append(module)
            continue
        terms[name] = term
    if wrong:
        raise LoraMismatch(
            f"{Path(lora.path).name} does not fit this {what}: {len(wrong)} of its {total} {PART_NAMES[part]} "
            f"modules have other shapes (first: {wrong[0]}), so it was made for another base model.")
    return terms, total


def lora_patches(lora: LoraFile, model: ModelHandle | None, clip: ClipHandle | None, strength_model: float,
                 strength_clip: float) -> tuple[WeightPatch | None, WeightPatch | None]:
    """(MODEL patch or None, CLIP patch or None) for ``lora`` at the given strengths."""
    name = Path(lora.path).name
    arch = model.arch if model is not None else (clip.arch if clip is not None else None)
    if "te1" in lora.parts and arch is not None and arch != SDXL:
        raise LoraMismatch(f"{name} is a LoRA for SDXL (it has weights for SDXL's second text encoder) but the "
                           f"checkpoint is {_arch_name(arch)}; load a LoRA made for {_arch_name(arch)}.")
    matched = 0
    model_patch = clip_patch = None
    if model is not None:
        terms, _ = _match(lora, "unet", unet_weight_names(model.unet), named_weights(model.unet), "model")
        matched += len(terms)
        if terms and strength_model != 0:
            model_patch = WeightPatch(terms, strength_patch=strength_model, source=lora.path)
    if clip is not None:
        names, params = clip_weight_names(clip.text_encoders), named_weights(clip.text_encoders)
        terms = {}
        for part in ("te0", "te1"):
            found, _ = _match(lora, part, names.get(part, {}), params, "text encoder")
            terms.update(found)
        matched += len(terms)
        if terms and strength_clip != 0:
            clip_patch = WeightPatch(terms, strength_patch=strength_clip, source=lora.path)
    considered = sum(1 for p, _ in lora.terms if p == "unet" or clip is not None)
    if matched == 0:
        first = next(f"{p}:{m}" for p, m in lora.terms)
        raise LoraMismatch(
            f"{name} matched none of the layers of this {_arch_name(arch) if arch else ''} model: 0 of its "
            f"{considered} modules matched (first: {first}); it is not a LoRA for this kind of model.")
    if matched < considered:
        log.warning("%s: %d of %d LoRA modules matched this model; the others are ignored", name, matched,
                    considered)
    return model_patch, clip_patch

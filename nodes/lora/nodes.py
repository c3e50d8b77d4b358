"""LoRA nodes: ComfyUI's LoraLoader / LoraLoaderModelOnly and ipgraph's LoadLora, one implementation.

They never change a model: they return ``model.with_patch(...)`` / ``clip.with_patch(...)`` carrying a
:class:`WeightPatch`; KSampler and CLIPTextEncode install it for their call only. Several LoRAs stack by
chaining loaders; the parsed file is loaded once (model manager) whatever the strengths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from .apply import lora_patches
from .files import inspect_lora, load_lora

STRENGTH = dict(ge=-100.0, le=100.0, json_schema_extra={"step": 0.01})  # ComfyUI's bounds


def _check_file(path: Path):
    yield from inspect_lora(path)


def _lora_file(runtime, name: str):
    path = runtime.model_path("loras", name)
    return runtime.models.load(("lora", str(path)), lambda: load_lora(path), path=path)


def apply_lora(runtime, name: str, model, clip, strength_model: float, strength_clip: float):
    """(model, clip) with the LoRA ``name`` from models/loras; a strength of 0 leaves that side unchanged."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    model_patch, clip_patch = lora_patches(_lora_file(runtime, name), model, clip, strength_model, strength_clip)
    return (model.with_patch(model_patch) if model_patch else model,
            clip.with_patch(clip_patch) if (clip is not None and clip_patch) else clip)


def _lora_name(description: str = "LoRA file in models/loras (.safetensors, or .pt/.bin read weights-only)"):
    return ModelName("loras", description)


# -- ComfyUI ---------------------------------------------------------------------------------------------

class LoraLoaderIn(NodeInputs):
    model: Any = Socket("MODEL", description="The diffusion model the LoRA will be applied to.")
    clip: Any = Socket("CLIP", description="The CLIP model the LoRA will be applied to.")
    lora_name: str = _lora_name()
    strength_model: float = Field(1.0, description="How strongly to modify the diffusion model.", **STRENGTH)
    strength_clip: float = Field(1.0, description="How strongly to modify the CLIP model.", **STRENGTH)


class LoraLoaderOut(NodeOutputs):
    MODEL: Any = Output("MODEL", description="The modified diffusion model.")
    CLIP: Any = Output("CLIP", description="The modified CLIP model.")


@node("LoraLoader", category="loaders", display_name="Load LoRA",
      check=model_file_check("loras", _check_file, field="lora_name"),
      fingerprint=model_file_fingerprint("loras", field="lora_name"))
def lora_loader(inp: LoraLoaderIn, ctx: NodeContext) -> LoraLoaderOut:
    """Apply a LoRA to the model and the text encoder(s) (kohya, LyCORIS or diffusers/peft files)."""
    model, clip = apply_lora(runtime_of(ctx), inp.lora_name, inp.model, inp.clip, inp.strength_model,
                             inp.strength_clip)
    return LoraLoaderOut(MODEL=model, CLIP=clip)


class LoraLoaderModelOnlyIn(NodeInputs):
    model: Any = Socket("MODEL")
    lora_name: str = _lora_name()
    strength_model: float = Field(1.0, **STRENGTH)


class ModelOnlyOut(NodeOutputs):
    MODEL: Any = Output("MODEL")


@node("LoraLoaderModelOnly", category="loaders", display_name="LoraLoaderModelOnly",
      check=model_file_check("loras", _check_file, field="lora_name"),
      fingerprint=model_file_fingerprint("loras", field="lora_name"))
def lora_loader_model_only(inp: LoraLoaderModelOnlyIn, ctx: NodeContext) -> ModelOnlyOut:
    """Apply a LoRA to the diffusion model only."""
    model, _ = apply_lora(runtime_of(ctx), inp.lora_name, inp.model, None, inp.strength_model, 0.0)
    return ModelOnlyOut(MODEL=model)


# -- ipgraph -----------------------------------------------------------------------------------------------

class LoadLoraIn(NodeInputs):
    model: Any = Socket("MODEL")
    clip: Any = Socket("CLIP", optional=True, description="text encoder(s) to patch too (optional)")
    name: str = _lora_name()
    strength_model: float = Field(1.0, **STRENGTH)
    strength_clip: float = Field(1.0, **STRENGTH)


class LoadLoraOut(NodeOutputs):
    model: Any = Output("MODEL")
    clip: Any = Output("CLIP", description="the patched text encoder(s); None when none was connected")


@node("LoadLora", category="loaders", check=model_file_check("loras", _check_file),
      fingerprint=model_file_fingerprint("loras"))
def load_lora_node(inp: LoadLoraIn, ctx: NodeContext) -> LoadLoraOut:
    """Apply a LoRA to a model (and optionally its text encoders); chain several to stack them."""
    model, clip = apply_lora(runtime_of(ctx), inp.name, inp.model, inp.clip, inp.strength_model,
                             inp.strength_clip if inp.clip is not None else 0.0)
    return LoadLoraOut(model=model, clip=clip)

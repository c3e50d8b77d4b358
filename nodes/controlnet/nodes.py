"""ControlNet nodes under ComfyUI's class names: ControlNetLoader, DiffControlNetLoader, ControlNetApplyAdvanced
and the legacy ControlNetApply (one conditioning in, one out; chain them for several ControlNets).

ipgraph/1 documents used the name ControlNetApply for today's ControlNetApplyAdvanced (positive/negative in and
out); such a node, recognised by its ``positive``/``negative`` inputs, loads as ControlNetApplyAdvanced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import SD15, SDXL, Conditioning
from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from ..models.single_file import CheckpointError, _header
from .model import ARCH_NAMES, Control, ControlNetHandle, arch_of, is_controlnet_keys, load_controlnet


class ControlNetLoaderIn(NodeInputs):
    control_net_name: str = ModelName("controlnet", "ControlNet file (.safetensors) or diffusers folder in "
                                                    "models/controlnet")


class ControlNetLoaderOut(NodeOutputs):
    CONTROL_NET: Any = Output("CONTROL_NET")


def _inspect_controlnet(path: Path):
    if path.is_file() and path.suffix.lower() == ".safetensors":
        try:
            shapes, _ = _header(path)
        except CheckpointError as exc:
            yield str(exc)
            return
        if "difference" in shapes:
            yield (f"{path.name} is a difference ControlNet (weights relative to a base model), which ipgraph "
                   "does not load yet; use a full ControlNet file")
        elif not is_controlnet_keys(shapes):
            yield f"{path.name} is not a ControlNet (no hint encoder weights)"
    elif path.is_dir() and not (path / "config.json").exists():
        yield f"{path.name} is not a diffusers ControlNet folder (no config.json)"


def load_controlnet_handle(ctx: NodeContext, name: str) -> ControlNetHandle:
    runtime = runtime_of(ctx)
    path = runtime.model_path("controlnet", name)
    net = runtime.models.load(("controlnet", str(path)), lambda: load_controlnet(path, dtype=runtime.dtype),
                                 path=path)
    return ControlNetHandle(net, arch_of(net), str(path))


@node("ControlNetLoader", category="loaders", display_name="Load ControlNet Model",
      check=model_file_check("controlnet", _inspect_controlnet, field="control_net_name"),
      fingerprint=model_file_fingerprint("controlnet", field="control_net_name"),
      renamed_inputs={"name": "control_net_name"}, renamed_outputs={"control_net": "CONTROL_NET"})
def controlnet_loader(inp: ControlNetLoaderIn, ctx: NodeContext) -> ControlNetLoaderOut:
    """Load an SD1.5 or SDXL ControlNet; the architecture is detected from the weights."""
    return ControlNetLoaderOut(CONTROL_NET=load_controlnet_handle(ctx, inp.control_net_name))


class DiffControlNetLoaderIn(NodeInputs):
    model: Any = Socket("MODEL")
    control_net_name: str = ModelName("controlnet", "ControlNet file in models/controlnet")


@node("DiffControlNetLoader", category="loaders", display_name="Load ControlNet Model (diff)",
      check=model_file_check("controlnet", _inspect_controlnet, field="control_net_name"),
      fingerprint=model_file_fingerprint("controlnet", field="control_net_name"))
def diff_controlnet_loader(inp: DiffControlNetLoaderIn, ctx: NodeContext) -> ControlNetLoaderOut:
    """ComfyUI's loader for ControlNets stored as differences to a base model. A full ControlNet file loads as
    with ControlNetLoader (the model is not needed, as in ComfyUI); difference files are refused at validation."""
    return ControlNetLoaderOut(CONTROL_NET=load_controlnet_handle(ctx, inp.control_net_name))


def _apply_check(literals: dict, runtime):
    if literals.get("start_percent", 0.0) > literals.get("end_percent", 1.0):
        yield "start_percent", "start_percent is after end_percent, so the ControlNet would never act"


def check_controlnet_fits(handle: ControlNetHandle, cond: Conditioning, name: str = "control_net") -> None:
    """A ControlNet made for another base model fails here, before sampling, with a plain sentence."""
    cond_arch = SDXL if cond.pooled is not None else SD15
    width = cond.embeds.shape[-1]
    if handle.arch != cond_arch or handle.cross_attention_dim != width:
        raise ValueError(
            f"{name}: {Path(handle.source).name} is an {ARCH_NAMES[handle.arch]} ControlNet (text width "
            f"{handle.cross_attention_dim}) but the conditioning comes from an {ARCH_NAMES[cond_arch]} text "
            f"encoder (width {width}); use a ControlNet made for the checkpoint's base model")


def hint_tensor(image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` -> ``[B,3,H,W]`` float32 in [0, 1]; an empty image is refused."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image: expected an IMAGE batch [B,H,W,3], got {getattr(image, 'shape', type(image))}")
    if image.numel() == 0:
        raise ValueError(f"image: the hint image is empty (shape {list(image.shape)})")
    hint = image[..., :3] if image.shape[-1] != 1 else image.expand(*image.shape[:3], 3)
    return hint.permute(0, 3, 1, 2).float().clamp(0, 1).contiguous()


def make_control(handle: ControlNetHandle, image, strength: float, start: float = 0.0, end: float = 1.0,
                 mask: Any = None, to_uncond: bool = False) -> Control:
    if mask is not None:
        mask = mask.float()
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or mask.numel() == 0:
            raise ValueError(f"mask: expected a MASK [B,H,W], got shape {list(mask.shape)}")
    return Control(handle, hint_tensor(image), float(strength), float(start), float(end), mask, to_uncond)


class ControlNetApplyAdvancedIn(NodeInputs):
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    control_net: Any = Socket("CONTROL_NET")
    image: Any = Socket("IMAGE", description="the hint (e.g. Canny output); resized to the latent size x 8")
    strength: float = Field(1.0, ge=0.0, le=10.0, description="residual scale (diffusers' conditioning_scale)")
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the schedule where control starts")
    end_percent: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the schedule where control ends")
    vae: Any = Socket("VAE", optional=True, description="accepted for ComfyUI workflows; unused by SD1.5/SDXL")
    mask: Any = Socket("MASK", optional=True, description="ipgraph: where the control acts (1) and where not (0)")


class ControlNetApplyAdvancedOut(NodeOutputs):
    positive: Any = Output("CONDITIONING")
    negative: Any = Output("CONDITIONING")


@node("ControlNetApplyAdvanced", category="conditioning/controlnet", display_name="Apply ControlNet",
      check=_apply_check)
def controlnet_apply_advanced(inp: ControlNetApplyAdvancedIn, ctx: NodeContext) -> ControlNetApplyAdvancedOut:
    """Attach a ControlNet with its hint image to both conditionings; chain the node for several ControlNets.

    A hint of another size than the image being generated is resized (nearest-exact, as ComfyUI) to the
    latent size x 8 at sampling time; a mask of another size is resized (bilinear) to each residual.
    """
    if inp.strength == 0:  # no effect at all: pass through, as ComfyUI does
        return ControlNetApplyAdvancedOut(positive=inp.positive, negative=inp.negative)
    handle: ControlNetHandle = inp.control_net
    check_controlnet_fits(handle, inp.positive)
    check_controlnet_fits(handle, inp.negative)
    control = make_control(handle, inp.image, inp.strength, inp.start_percent, inp.end_percent, inp.mask)
    return ControlNetApplyAdvancedOut(positive=inp.positive.with_control(control),
                                      negative=inp.negative.with_control(control))


class ControlNetApplyIn(NodeInputs):
    conditioning: Any = Socket("CONDITIONING")
    control_net: Any = Socket("CONTROL_NET")
    image: Any = Socket("IMAGE", description="the hint (e.g. Canny output); resized to the latent size x 8")
    strength: float = Field(1.0, ge=0.0, le=10.0, description="residual scale (diffusers' conditioning_scale)")


class ConditioningOut(NodeOutputs):
    CONDITIONING: Any = Output("CONDITIONING")


# ipgraph/1's ControlNetApply took positive and negative: that node is today's ControlNetApplyAdvanced.
_OLD_CONTROLNET_APPLY = {"positive": "ControlNetApplyAdvanced", "negative": "ControlNetApplyAdvanced"}


@node("ControlNetApply", category="conditioning/controlnet", display_name="Apply ControlNet (OLD)",
      upgraded_from=_OLD_CONTROLNET_APPLY)
def controlnet_apply(inp: ControlNetApplyIn, ctx: NodeContext) -> ConditioningOut:
    """ComfyUI's legacy ControlNet node: one conditioning, the whole schedule. As in ComfyUI
    (``control_apply_to_uncond``), the control also acts on the negative side at sampling time, so it equals
    ControlNetApplyAdvanced on both conditionings with start 0 and end 1."""
    if inp.strength == 0:
        return ConditioningOut(CONDITIONING=inp.conditioning)
    check_controlnet_fits(inp.control_net, inp.conditioning)
    control = make_control(inp.control_net, inp.image, inp.strength, to_uncond=True)
    return ConditioningOut(CONDITIONING=inp.conditioning.with_control(control))

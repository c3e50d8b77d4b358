"""ControlNet nodes: ControlNetLoader and ControlNetApply (chain it for several ControlNets)."""

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
    name: str = ModelName("controlnet", "ControlNet file (.safetensors) or diffusers folder in models/controlnet")


class ControlNetLoaderOut(NodeOutputs):
    control_net: Any = Output("CONTROL_NET")


def _inspect_controlnet(path: Path):
    if path.is_file() and path.suffix.lower() == ".safetensors":
        try:
            shapes, _ = _header(path)
        except CheckpointError as exc:
            yield str(exc)
            return
        if not is_controlnet_keys(shapes):
            yield f"{path.name} is not a ControlNet (no hint encoder weights)"
    elif path.is_dir() and not (path / "config.json").exists():
        yield f"{path.name} is not a diffusers ControlNet folder (no config.json)"


@node("ControlNetLoader", category="loaders", check=model_file_check("controlnet", _inspect_controlnet), fingerprint=model_file_fingerprint("controlnet"),
      comfy_aliases={"ControlNetLoader": {"control_net_name": "name"}})
def controlnet_loader(inp: ControlNetLoaderIn, ctx: NodeContext) -> ControlNetLoaderOut:
    """Load an SD1.5 or SDXL ControlNet; the architecture is detected from the weights."""
    runtime = runtime_of(ctx)
    path = runtime.model_path("controlnet", inp.name)
    net = runtime.models.load(("controlnet", str(path)), lambda: load_controlnet(path, dtype=runtime.dtype))
    return ControlNetLoaderOut(control_net=ControlNetHandle(net, arch_of(net), str(path)))


class ControlNetApplyIn(NodeInputs):
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    control_net: Any = Socket("CONTROL_NET")
    image: Any = Socket("IMAGE", description="the hint (e.g. CannyEdge output); resized to the latent size x 8")
    strength: float = Field(1.0, ge=0.0, le=10.0, description="residual scale (diffusers' conditioning_scale)")
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the schedule where control starts")
    end_percent: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the schedule where control ends")
    mask: Any = Socket("MASK", optional=True, description="where the control acts (1) and where not (0)")
    vae: Any = Socket("VAE", optional=True, description="accepted for ComfyUI workflows; unused by SD1.5/SDXL")


class ControlNetApplyOut(NodeOutputs):
    positive: Any = Output("CONDITIONING")
    negative: Any = Output("CONDITIONING")


def _apply_check(literals: dict, runtime):
    if literals.get("start_percent", 0.0) > literals.get("end_percent", 1.0):
        yield "start_percent", "start_percent is after end_percent, so the ControlNet would never act"


def check_controlnet_fits(handle: ControlNetHandle, cond: Conditioning) -> None:
    """A ControlNet made for another base model fails here, before sampling, with a plain sentence."""
    cond_arch = SDXL if cond.pooled is not None else SD15
    width = cond.embeds.shape[-1]
    if handle.arch != cond_arch or handle.cross_attention_dim != width:
        raise ValueError(
            f"control_net: {Path(handle.source).name} is an {ARCH_NAMES[handle.arch]} ControlNet (text width "
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


@node("ControlNetApply", category="conditioning", check=_apply_check,
      comfy_aliases={"ControlNetApplyAdvanced": {}})
def controlnet_apply(inp: ControlNetApplyIn, ctx: NodeContext) -> ControlNetApplyOut:
    """Attach a ControlNet with its hint image to both conditionings; chain the node for several ControlNets.

    A hint of another size than the image being generated is resized (nearest-exact, as ComfyUI) to the
    latent size x 8 at sampling time; a mask of another size is resized (bilinear) to each residual.
    """
    if inp.strength == 0:  # no effect at all: pass through, as ComfyUI does
        return ControlNetApplyOut(positive=inp.positive, negative=inp.negative)
    handle: ControlNetHandle = inp.control_net
    check_controlnet_fits(handle, inp.positive)
    check_controlnet_fits(handle, inp.negative)
    mask = None
    if inp.mask is not None:
        mask = inp.mask.float()
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or mask.numel() == 0:
            raise ValueError(f"mask: expected a MASK [B,H,W], got shape {list(inp.mask.shape)}")
    control = Control(handle, hint_tensor(inp.image), float(inp.strength), float(inp.start_percent),
                      float(inp.end_percent), mask)
    return ControlNetApplyOut(positive=inp.positive.with_control(control),
                              negative=inp.negative.with_control(control))

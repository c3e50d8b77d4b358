"""UpscaleModelLoader and ImageUpscaleWithModel (ComfyUI's comfy_extras/nodes_upscale_model.py): ESRGAN-family
super-resolution models from models/upscale_models, detected and built by the real ``spandrel`` library.

Files are read without unpickling (``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``, or
``.safetensors``); spandrel detects the architecture from the state dict, as ComfyUI does. Images go through the
model in tiles of 512 with 32 pixels of overlap, blended with ComfyUI's linear feather (``tiled_scale``); an image
that fits one tile is one plain model call.

spandrel's package import pulls in two architectures (LaMa, RestoreFormer) that need torchvision, which this
project must not install (its wheel here is CUDA-linked and changes CLIPImageProcessor's numerics). Where
torchvision is missing, :func:`spandrel_registry` loads spandrel's own modules without its top-level
registry and registers the single-image super-resolution architectures that do not need it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from ..image.image_ops import ImageOut, _check_image

# spandrel's MAIN_REGISTRY order (detection tries them in turn), minus the two that need torchvision.
_ARCHS = ("Compact", "SwiftSRGAN", "HAT", "Swin2SR", "SwinIR", "OmniSR", "DAT", "SPAN", "RealCUGAN", "PLKSR",
          "ESRGAN")
_registry = None


def spandrel_registry():
    """spandrel's architecture registry (the main one when spandrel imports whole)."""
    global _registry
    if _registry is not None:
        return _registry
    try:
        import spandrel

        _registry = spandrel.MAIN_REGISTRY
        return _registry
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
    spec = importlib.util.find_spec("spandrel")
    package = types.ModuleType("spandrel")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["spandrel"] = package
    registry_mod = importlib.import_module("spandrel.__helpers.registry")
    registry = registry_mod.ArchRegistry()
    for name in _ARCHS:
        try:
            arch_module = importlib.import_module(f"spandrel.architectures.{name}")
        except ModuleNotFoundError:
            continue
        registry.add(registry_mod.ArchSupport.from_architecture(getattr(arch_module, f"{name}Arch")()))
    _registry = registry
    return registry


def read_state_dict(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True, eq=False)
class UpscaleModel:
    """A spandrel ImageModelDescriptor (read-only, owned by the model manager) and its torch module."""

    model: Any  # torch.nn.Module, for the model manager
    descriptor: Any
    source: str

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    def cache_nbytes(self) -> int:
        return 0


def load_upscale_model(path: Path) -> UpscaleModel:
    registry = spandrel_registry()  # first: it decides how the spandrel package is imported
    canonicalize = importlib.import_module("spandrel.__helpers.canonicalize").canonicalize_state_dict
    state = read_state_dict(path)
    if "module.layers.0.residual_group.blocks.0.norm1.weight" in state:  # ComfyUI strips this DataParallel prefix
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        descriptor = registry.load(canonicalize(state))
    except Exception as exc:  # noqa: BLE001 - spandrel's UnsupportedModelError and shape errors alike
        raise ValueError(f"model_name: {path.name} is not an upscale model spandrel recognises ({exc})") from None
    if type(descriptor).__name__ != "ImageModelDescriptor" or descriptor.input_channels != 3:
        raise ValueError(f"model_name: {path.name} is a {descriptor.architecture.name} model, not a single-image "
                         "RGB upscaler")
    descriptor.model.eval().requires_grad_(False)
    return UpscaleModel(descriptor.model, descriptor, str(path))


def _inspect(path: Path):
    if path.is_dir():
        yield f"{path.name} is a folder; upscale models are single files (.pth, .safetensors)"


class UpscaleModelLoaderIn(NodeInputs):
    model_name: str = ModelName("upscale_models", "ESRGAN-family model file in models/upscale_models")


class UpscaleModelOut(NodeOutputs):
    UPSCALE_MODEL: Any = Output("UPSCALE_MODEL")


@node("UpscaleModelLoader", category="loaders", display_name="Load Upscale Model",
      check=model_file_check("upscale_models", _inspect, field="model_name"),
      fingerprint=model_file_fingerprint("upscale_models", field="model_name"))
def upscale_model_loader(inp: UpscaleModelLoaderIn, ctx: NodeContext) -> UpscaleModelOut:
    """Load a super-resolution model (ESRGAN, Real-ESRGAN, SwinIR, ...); the architecture comes from the weights."""
    runtime = runtime_of(ctx)
    path = runtime.model_path("upscale_models", inp.model_name)
    model = runtime.models.load(("upscale_model", str(path)), lambda: load_upscale_model(path), path=path)
    return UpscaleModelOut(UPSCALE_MODEL=model)


def tiled_scale(x: torch.Tensor, fn, scale: int, tile: int = 512, overlap: int = 32, ctx=None) -> torch.Tensor:
    """ComfyUI's comfy.utils.tiled_scale for ``[B,C,H,W]``: tiles stepping ``tile - overlap``, each output tile
    weighted by a mask ramping (t + 1) / feather over ``feather = overlap * scale`` pixels from every edge, the
    weighted sum divided by the summed weights."""
    b, c, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    out = torch.zeros(b, c, h * scale, w * scale, device=x.device, dtype=torch.float32)
    weight = torch.zeros_like(out)
    feather = overlap * scale
    step = tile - overlap
    for y in range(0, max(h - overlap, 1), step):
        for x0 in range(0, max(w - overlap, 1), step):
            y0, xs = max(0, min(h - overlap - 1, y)), max(0, min(w - overlap - 1, x0))
            piece = fn(x[:, :, y0:y0 + tile, xs:xs + tile]).float()
            mask = torch.ones_like(piece)
            ph, pw = piece.shape[-2:]
            for t in range(min(feather, ph // 2, pw // 2)):
                rate = (t + 1) / feather
                mask[:, :, t, :] *= rate
                mask[:, :, ph - 1 - t, :] *= rate
                mask[:, :, :, t] *= rate
                mask[:, :, :, pw - 1 - t] *= rate
            ys, xe = y0 * scale, xs * scale
            out[:, :, ys:ys + ph, xe:xe + pw] += piece * mask
            weight[:, :, ys:ys + ph, xe:xe + pw] += mask
            if ctx is not None:
                ctx.check_cancelled()
    return out / weight


class ImageUpscaleWithModelIn(NodeInputs):
    upscale_model: Any = Socket("UPSCALE_MODEL")
    image: Any = Socket("IMAGE")


@node("ImageUpscaleWithModel", category="image/upscaling", display_name="Upscale Image (using Model)")
def image_upscale_with_model(inp: ImageUpscaleWithModelIn, ctx: NodeContext) -> ImageOut:
    """Upscale images by the model's factor (x2, x4, ...), clamped to 0..1."""
    runtime = runtime_of(ctx)
    model: UpscaleModel = inp.upscale_model
    image = _check_image(inp.image)
    h, w = image.shape[1:3]
    if h * w * model.scale**2 > runtime.max_pixels:
        raise ValueError(f"image: {w}x{h} upscaled x{model.scale} is above the pixel limit of {runtime.max_pixels}")
    with runtime.models.on_device(model.model), torch.no_grad():
        param = next(model.model.parameters())
        x = image[..., :3].movedim(-1, 1).to(device=param.device, dtype=param.dtype)
        out = tiled_scale(x, model.descriptor, model.scale, ctx=ctx)
    return ImageOut(IMAGE=out.float().clamp(0, 1).movedim(1, -1).cpu().contiguous())

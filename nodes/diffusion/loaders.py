"""LoadCheckpoint and LoadVAE: real checkpoint files (single-file original layout or diffusers folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, node

from ..core.types import ClipHandle, ModelHandle, VaeHandle
from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from ..models.single_file import CheckpointError, inspect_checkpoint, load_checkpoint, load_vae


class LoadCheckpointIn(NodeInputs):
    name: str = ModelName("checkpoints", "checkpoint file (.safetensors) or diffusers folder in models/checkpoints")


class LoadCheckpointOut(NodeOutputs):
    model: Any = Output("MODEL", description="the denoising UNet")
    clip: Any = Output("CLIP", description="the text encoder(s)")
    vae: Any = Output("VAE")


def inspect_checkpoint_file(path: Path):
    if path.is_file() and path.suffix.lower() == ".safetensors":
        try:
            info = inspect_checkpoint(path)
        except CheckpointError as exc:
            yield str(exc)
            return
        if info.kind != "checkpoint":
            yield f"{path.name} holds only a VAE; load it with a VAE loader (VAELoader / LoadVAE)"


@node("LoadCheckpoint", category="loaders", check=model_file_check("checkpoints", inspect_checkpoint_file),
      fingerprint=model_file_fingerprint("checkpoints"))
def load_checkpoint_node(inp: LoadCheckpointIn, ctx: NodeContext) -> LoadCheckpointOut:
    """Load an SD1.5 or SDXL checkpoint; the architecture is detected from the weights."""
    model, clip, vae = load_checkpoint_handles(runtime_of(ctx), inp.name)
    return LoadCheckpointOut(model=model, clip=clip, vae=vae)


def load_checkpoint_handles(runtime, name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    """(MODEL, CLIP, VAE) handles of a checkpoint in models/checkpoints (the weights are shared, loaded once)."""
    path = runtime.model_path("checkpoints", name)

    def load():
        ckpt = load_checkpoint(path, device="cpu", dtype=runtime.dtype)
        upcast_sdxl_vae(ckpt.vae, ckpt.arch)
        return ckpt

    ckpt = runtime.models.load(("checkpoint", str(path)), load, path=path)
    return (ModelHandle(ckpt.unet, ckpt.arch, dict(ckpt.scheduler_config), str(path)),
            ClipHandle(tuple(ckpt.text_encoders), tuple(ckpt.tokenizers), ckpt.arch, str(path)),
            VaeHandle(ckpt.vae, ckpt.arch, str(path)))


class LoadVAEIn(NodeInputs):
    name: str = ModelName("vae", "VAE file or folder in models/vae (e.g. sdxl-vae-fp16-fix)")


class LoadVAEOut(NodeOutputs):
    vae: Any = Output("VAE")


@node("LoadVAE", category="loaders", check=model_file_check("vae"), fingerprint=model_file_fingerprint("vae"))
def load_vae_node(inp: LoadVAEIn, ctx: NodeContext) -> LoadVAEOut:
    """Load a standalone VAE to use instead of the checkpoint's own."""
    return LoadVAEOut(vae=load_vae_handle(runtime_of(ctx), inp.name))


def load_vae_handle(runtime, name: str) -> VaeHandle:
    path = runtime.model_path("vae", name)

    def load():
        vae = load_vae(path, device="cpu", dtype=runtime.dtype)
        upcast_sdxl_vae(vae, _vae_arch(vae))
        return vae

    vae = runtime.models.load(("vae", str(path)), load, path=path)
    return VaeHandle(vae, _vae_arch(vae), str(path))


def _vae_arch(vae) -> str:
    return "sdxl" if abs(float(vae.config.scaling_factor) - 0.13025) < 1e-6 else "sd15"


def upcast_sdxl_vae(vae, arch: str) -> None:
    """The SDXL VAE overflows in fp16 (black/NaN images): keep it in fp32 unless its config says it is safe
    (``force_upcast: false``, as sdxl-vae-fp16-fix ships). Done once, at load, before the model is shared; the
    VAE nodes cast their inputs to the VAE's own dtype."""
    if arch == "sdxl" and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", True):
        vae.to(torch.float32)

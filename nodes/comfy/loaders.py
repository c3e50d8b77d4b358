"""CheckpointLoaderSimple and VAELoader: ComfyUI's loader names over LoadCheckpoint / LoadVAE's implementation."""

from __future__ import annotations

from typing import Any

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, node

from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from ..diffusion.loaders import inspect_checkpoint_file, load_checkpoint_handles, load_vae_handle


class CheckpointLoaderSimpleIn(NodeInputs):
    ckpt_name: str = ModelName("checkpoints", "The name of the checkpoint (model) to load.")


class CheckpointLoaderSimpleOut(NodeOutputs):
    MODEL: Any = Output("MODEL", description="The model used for denoising latents.")
    CLIP: Any = Output("CLIP", description="The CLIP model used for encoding text prompts.")
    VAE: Any = Output("VAE", description="The VAE model used for encoding and decoding images to and from latent "
                                         "space.")


@node("CheckpointLoaderSimple", category="loaders", display_name="Load Checkpoint",
      check=model_file_check("checkpoints", inspect_checkpoint_file, field="ckpt_name"),
      fingerprint=model_file_fingerprint("checkpoints", field="ckpt_name"))
def checkpoint_loader_simple(inp: CheckpointLoaderSimpleIn, ctx: NodeContext) -> CheckpointLoaderSimpleOut:
    """Load an SD1.5 or SDXL checkpoint (single-file or diffusers folder); the architecture comes from the weights."""
    model, clip, vae = load_checkpoint_handles(runtime_of(ctx), inp.ckpt_name)
    return CheckpointLoaderSimpleOut(MODEL=model, CLIP=clip, VAE=vae)


class VAELoaderIn(NodeInputs):
    vae_name: str = ModelName("vae", "VAE file or folder in models/vae (e.g. sdxl-vae-fp16-fix)")


class VAEOut(NodeOutputs):
    VAE: Any = Output("VAE")


@node("VAELoader", category="loaders", display_name="Load VAE", check=model_file_check("vae", field="vae_name"),
      fingerprint=model_file_fingerprint("vae", field="vae_name"))
def vae_loader(inp: VAELoaderIn, ctx: NodeContext) -> VAEOut:
    """Load a standalone VAE to use instead of the checkpoint's own."""
    return VAEOut(VAE=load_vae_handle(runtime_of(ctx), inp.vae_name))

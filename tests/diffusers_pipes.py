"""diffusers pipelines on FRESH modules loaded from ipgraph's model files, for the oracle tests.

diffusers' ``load_ip_adapter`` rewrites the UNet it is given (processors, ``encoder_hid_proj``), so every
pipeline here loads the checkpoint and the encoder anew; the engine's shared modules are never touched.
Adapters load with ``low_cpu_mem_usage=False`` so a missing key raises.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPImageProcessor

from ipgraph.nodes.ipadapter import load_clip_vision
from ipgraph.nodes.models.single_file import load_checkpoint

CKPT = {"sd15": "tiny-sd15.safetensors", "sdxl": "tiny-sdxl.safetensors"}
ENCODER = "tiny-clip-vision.safetensors"


def ip_adapter_pipeline(models_dir: Path, arch: str, adapters: list[str], encoder: str = ENCODER):
    """An SD1.5 / SDXL pipeline (Euler) with diffusers' own IP-Adapter loading of ``adapters``."""
    ckpt = load_checkpoint(models_dir / "checkpoints" / CKPT[arch])
    image_encoder = load_clip_vision(models_dir / "clip_vision" / encoder)
    fe = CLIPImageProcessor(size=224, crop_size=224)
    sched = EulerDiscreteScheduler.from_config(ckpt.scheduler_config)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0],
                                       unet=ckpt.unet, scheduler=sched, safety_checker=None, feature_extractor=fe,
                                       image_encoder=image_encoder, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0],
                                         text_encoder_2=ckpt.text_encoders[1], tokenizer=ckpt.tokenizers[0],
                                         tokenizer_2=ckpt.tokenizers[1], unet=ckpt.unet, scheduler=sched,
                                         image_encoder=image_encoder, feature_extractor=fe)
    folder = str(models_dir / "ipadapter")
    pipe.load_ip_adapter([folder] * len(adapters), subfolder=[""] * len(adapters), weight_name=list(adapters),
                         image_encoder_folder=None, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""AnimateDiff test helpers: the graphs under test and diffusers' AnimateDiffPipeline on the same files."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor

from ipgraph.engine import Graph
from ipgraph.nodes.animatediff.motion import load_motion_module
from ipgraph.nodes.ipadapter import load_clip_vision
from ipgraph.nodes.models.single_file import load_checkpoint

PROMPT, NEGATIVE, SEED, CFG = "a gummy bear waving", "bad quality, worse quality", 5, 7.5
CKPT, ENCODER, ADAPTER = "tiny-sd15.safetensors", "tiny-clip-vision.safetensors", "tiny-ip-adapter_sd15.safetensors"
MM = "tiny-mm-sd15-v2.ckpt"


def animatediff_graph(frames: int, steps: int, *, motion: str = MM, reference: str | None = "ipa_bear_ref.png",
                      weight: float = 0.6, context: dict | None = None, combine: str | None = None,
                      save: bool = False, size: int = 64) -> Graph:
    """LoadCheckpoint -> [IPAdapterApply] -> ApplyAnimateDiff -> KSampler(ddim) over a batch of ``frames``.

    ``combine``: a second prompt joined by ConditioningCombine (the sampler's per-entry guidance path)."""
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=CKPT)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    if combine is not None:
        more = g.add("CLIPTextEncode", id="more", clip=ck.clip, text=combine)
        pos = g.add("ConditioningCombine", id="both", conditioning_1=pos.CONDITIONING,
                    conditioning_2=more.CONDITIONING)
    model = ck.model
    if reference is not None:
        cv = g.add("CLIPVisionLoader", id="cv", clip_name=ENCODER)
        ipa = g.add("IPAdapterModelLoader", id="ipa", ipadapter_file=ADAPTER)
        image = g.add("LoadImage", id="ref", image=reference).IMAGE
        model = g.add("IPAdapterApply", id="apply", model=model, ipadapter=ipa.IPADAPTER, clip_vision=cv.CLIP_VISION,
                      image=image, weight=weight).model
    mm = g.add("LoadMotionModule", id="mm", name=motion)
    links = {}
    if context is not None:
        links["context_options"] = g.add("ADE_StandardUniformContextOptions", id="ctx", **context).CONTEXT_OPTS
    model = g.add("ApplyAnimateDiff", id="ad", model=model, motion_model=mm.motion_model, **links).model
    lat = g.add("EmptyLatentImage", id="lat", width=size, height=size, batch_size=frames)
    ks = g.add("KSampler", id="ks", model=model, positive=pos.CONDITIONING, negative=neg.CONDITIONING,
               latent_image=lat.LATENT, seed=SEED, steps=steps, cfg=CFG, sampler_name="ddim", scheduler="normal")
    if save:
        dec = g.add("VAEDecode", id="dec", samples=ks.LATENT, vae=ck.vae)
        g.add("SaveAnimatedWEBP", id="out", images=dec.IMAGE, filename_prefix="ad", fps=8.0)
    return g


def ksampler_noise(frames: int, size: int, seed: int = SEED) -> torch.Tensor:
    """The noise KSampler draws for a batch of frames, in diffusers' video layout [1, C, F, h, w]."""
    noise = randn_tensor((frames, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(seed),
                         device=torch.device("cpu"), dtype=torch.float32)
    return noise.permute(1, 0, 2, 3)[None]


def animatediff_pipeline(models_dir, motion_path, ip_adapter: bool = True) -> AnimateDiffPipeline:
    """diffusers' AnimateDiffPipeline on fresh modules from the same files, with the user's DDIM settings."""
    ckpt = load_checkpoint(models_dir / "checkpoints" / CKPT)
    adapter = load_motion_module(motion_path).adapter
    sched = DDIMScheduler.from_config(ckpt.scheduler_config, clip_sample=False, timestep_spacing="linspace",
                                      beta_schedule="linear", steps_offset=1)
    pipe = AnimateDiffPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0],
                               unet=ckpt.unet, motion_adapter=adapter, scheduler=sched,
                               feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
                               image_encoder=load_clip_vision(models_dir / "clip_vision" / ENCODER))
    if ip_adapter:
        pipe.load_ip_adapter(str(models_dir / "ipadapter"), subfolder="", weight_name=ADAPTER,
                             image_encoder_folder=None, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def graph_factory():
    return animatediff_graph

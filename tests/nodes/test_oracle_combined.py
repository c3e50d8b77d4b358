"""IP-Adapter together with ControlNet and with inpainting vs the diffusers pipelines with ``load_ip_adapter``.

The diffusers side is built on FRESH loads of the same files (``load_ip_adapter`` rewrites the UNet it is
given); the ipgraph side runs through the engine's shared, unpatched modules.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
)
from transformers import CLIPImageProcessor

from ipgraph.nodes.controlnet.model import load_controlnet
from ipgraph.nodes.ipadapter import load_clip_vision
from ipgraph.nodes.models.single_file import load_checkpoint
from tests.nodes.test_controlnet import CN15, cn_graph, hint_of
from tests.nodes.test_inpaint import inpaint_graph, pixels_and_mask
from tests.nodes.test_oracle_ipadapter import asset, diff

pytestmark = pytest.mark.slow
TOL = 1e-4
ADAPTER, ENCODER, REFERENCE, WEIGHT = "tiny-ip-adapter_sd15.safetensors", "tiny-clip-vision.safetensors", \
    "ipa_bear_ref.png", 0.6


def with_ip_adapter(graph):
    """Route the graph's KSampler model through an IPAdapterApply on the reference image."""
    ipa = graph.add("IPAdapterModelLoader", id="ipa", ipadapter_file=ADAPTER)
    cv = graph.add("CLIPVisionLoader", id="cv", name=ENCODER)
    ref = graph.add("LoadImage", id="ref", image=REFERENCE)
    apply = graph.add("IPAdapterApply", id="apply_ip", model=graph.ref("ckpt").model, ipadapter=ipa.ipadapter,
                      image=ref.image, clip_vision=cv.clip_vision, weight=WEIGHT)
    graph.set("ks", "model", apply.model)
    return graph


def fresh_pipeline(models_dir, cls, ckpt_name, **extra):
    ckpt = load_checkpoint(models_dir / "checkpoints" / ckpt_name)
    pipe = cls(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0], unet=ckpt.unet,
               scheduler=EulerDiscreteScheduler.from_config(ckpt.scheduler_config), safety_checker=None,
               feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
               image_encoder=load_clip_vision(models_dir / "clip_vision" / ENCODER), requires_safety_checker=False,
               **extra)
    pipe.load_ip_adapter(str(models_dir / "ipadapter"), subfolder="", weight_name=ADAPTER, image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(WEIGHT)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_controlnet_with_ip_adapter_matches_diffusers(engine, models_dir):
    result = engine.run(with_ip_adapter(cn_graph(controls=((CN15, 0.8, 0.0, 0.8, "canny"),), steps=6)),
                        outputs=["ks"])
    got = result.outputs["ks"].LATENT.samples
    without_ip = engine.run(cn_graph(controls=((CN15, 0.8, 0.0, 0.8, "canny"),), steps=6), outputs=["ks"])
    assert diff(got, without_ip.outputs["ks"].LATENT.samples) > 1e-3  # the adapter acts
    pipe = fresh_pipeline(models_dir, StableDiffusionControlNetPipeline, "tiny-sd15.safetensors",
                          controlnet=load_controlnet(models_dir / "controlnet" / CN15))
    expected = pipe("a house by a tree", image=hint_of(result, "canny"), negative_prompt="blurry", height=64,
                    width=64, num_inference_steps=6, guidance_scale=7.0, controlnet_conditioning_scale=0.8,
                    control_guidance_end=0.8, ip_adapter_image=asset(REFERENCE),
                    generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert diff(got, expected) <= TOL


def test_nine_channel_inpaint_with_ip_adapter_matches_diffusers(engine, models_dir):
    result = engine.run(with_ip_adapter(inpaint_graph(nine=True)), outputs=["ks"])
    got = result.outputs["ks"].LATENT.samples
    assert diff(got, engine.run(inpaint_graph(nine=True), outputs=["ks"]).outputs["ks"].LATENT.samples) > 1e-3
    image, mask = pixels_and_mask(result)
    pipe = fresh_pipeline(models_dir, StableDiffusionInpaintPipeline, "tiny-sd15-inpaint.safetensors")
    expected = pipe("a cute gummy bear waving", image=image, mask_image=mask,
                    masked_image_latents=result.outputs["inpaint"].latent.concat[:, 1:], height=64, width=64,
                    strength=1.0, num_inference_steps=6, guidance_scale=7.0, negative_prompt="blurry",
                    ip_adapter_image=asset(REFERENCE), generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent").images
    assert diff(got, expected) <= TOL

"""ipgraph graphs vs diffusers' own pipelines on the same weights (tiny models, CPU, fp32).

The diffusers pipelines are built from the very modules ipgraph loaded from the single-file checkpoints,
with the scheduler class named explicitly here (not through ipgraph's mapping), and the latents compared.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)

from ipgraph.engine import Graph

TOL = 1e-4
PROMPT, NEGATIVE = "a polar bear in the snow", "blurry"

DIFFUSERS_SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "uni_pc": (UniPCMultistepScheduler, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "lms": (LMSDiscreteScheduler, {}),
}

pytestmark = pytest.mark.slow


def txt2img_graph(ckpt, *, width=64, height=64, batch=1, steps=8, cfg=7.0, sampler="euler", schedule="normal",
                  seed=7, denoise=1.0, init_latent=False):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    if init_latent:
        img = g.add("LoadImage", id="img", image="bear.png")
        lat = g.add("VAEEncode", id="enc", pixels=img.image, vae=ck.vae)
    else:
        lat = g.add("EmptyLatentImage", id="lat", width=width, height=height, batch_size=batch)
    ks = g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, scheduler=schedule,
               denoise=denoise)
    g.add("PreviewImage", id="out", images=g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae).image)
    return g


def scheduler_for(model, sampler, schedule="normal"):
    cls, kwargs = DIFFUSERS_SCHEDULERS[sampler]
    if schedule == "karras":
        kwargs = {**kwargs, "use_karras_sigmas": True}
    return cls.from_config(model.scheduler_config, **kwargs)


def sd15_pipeline(result, cls=StableDiffusionPipeline, sampler="euler", schedule="normal"):
    model, clip, vae = (result.outputs["ckpt"].model, result.outputs["ckpt"].clip, result.outputs["ckpt"].vae)
    return cls(vae=vae.vae, text_encoder=clip.text_encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
               scheduler=scheduler_for(model, sampler, schedule), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)


def sdxl_pipeline(result, cls=StableDiffusionXLPipeline, sampler="euler"):
    model, clip, vae = (result.outputs["ckpt"].model, result.outputs["ckpt"].clip, result.outputs["ckpt"].vae)
    return cls(vae=vae.vae, text_encoder=clip.text_encoders[0], text_encoder_2=clip.text_encoders[1],
               tokenizer=clip.tokenizers[0], tokenizer_2=clip.tokenizers[1], unet=model.unet,
               scheduler=scheduler_for(model, sampler))


def max_diff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


@pytest.mark.parametrize("sampler,schedule", [("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "normal"),
                                              ("euler_ancestral", "normal"), ("dpmpp_2m_sde", "normal"),
                                              ("heun", "normal"), ("uni_pc", "normal"), ("lms", "karras")])
def test_sd15_txt2img_matches_diffusers(engine, sampler, schedule):
    result = engine.run(txt2img_graph("tiny-sd15.safetensors", sampler=sampler, schedule=schedule))
    pipe = sd15_pipeline(result, sampler=sampler, schedule=schedule)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=8, guidance_scale=7.0,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_sd15_batch_and_non_square_matches_diffusers(engine):
    result = engine.run(txt2img_graph("tiny-sd15.safetensors", width=96, height=64, batch=2, seed=3))
    got = result.outputs["ks"].LATENT.samples
    assert got.shape == (2, 4, 8, 12)
    pipe = sd15_pipeline(result)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=96, num_inference_steps=8, guidance_scale=7.0,
                    num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(3),
                    output_type="latent").images
    assert max_diff(got, expected) <= TOL
    assert max_diff(got[0], got[1]) > 1e-3  # the two images differ


def test_sd15_diffusers_folder_gives_the_same_latents(engine):
    single = engine.run(txt2img_graph("tiny-sd15.safetensors")).outputs["ks"].LATENT.samples
    folder = engine.run(txt2img_graph("tiny-sd15-diffusers")).outputs["ks"].LATENT.samples
    assert max_diff(single, folder) <= TOL  # identical weights (tests/models); only memory layout differs


def test_sd15_no_guidance_matches_diffusers(engine):
    result = engine.run(txt2img_graph("tiny-sd15.safetensors", cfg=1.0))
    pipe = sd15_pipeline(result)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=8, guidance_scale=1.0,
                    generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_sd15_img2img_matches_diffusers(engine):
    # ComfyUI's denoise: 6 steps of a int(6 / 0.6) = 10-step schedule = diffusers' strength 0.6 of 10 steps
    result = engine.run(txt2img_graph("tiny-sd15.safetensors", init_latent=True, denoise=0.6, steps=6))
    init = result.outputs["enc"].LATENT.samples
    assert init.shape == (1, 4, 8, 8)
    pipe = sd15_pipeline(result, StableDiffusionImg2ImgPipeline)
    expected = pipe(PROMPT, image=init, strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=10,
                    guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_vae_encode_is_the_latent_mean(engine):
    result = engine.run(txt2img_graph("tiny-sd15.safetensors", init_latent=True, denoise=0.5))
    vae = result.outputs["ckpt"].vae
    pixels = result.outputs["img"].IMAGE.permute(0, 3, 1, 2) * 2 - 1
    expected = vae.vae.encode(pixels).latent_dist.mode() * vae.vae.config.scaling_factor
    assert max_diff(result.outputs["enc"].LATENT.samples, expected) <= 1e-6


def test_vae_decode_matches_diffusers_postprocess(engine):
    result = engine.run(txt2img_graph("tiny-sd15.safetensors"))
    vae = result.outputs["ckpt"].vae.vae
    latents = result.outputs["ks"].LATENT.samples
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert max_diff(result.outputs["dec"].IMAGE, expected) <= 1e-6


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_sdxl_txt2img_matches_diffusers(engine, sampler):
    result = engine.run(txt2img_graph("tiny-sdxl.safetensors", width=64, height=96, sampler=sampler, batch=2))
    pipe = sdxl_pipeline(result, sampler=sampler)
    expected = pipe(PROMPT, negative_prompt=NEGATIVE, height=96, width=64, num_inference_steps=8, guidance_scale=7.0,
                    num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_sdxl_img2img_matches_diffusers(engine):
    result = engine.run(txt2img_graph("tiny-sdxl.safetensors", init_latent=True, denoise=0.7, steps=7))
    pipe = sdxl_pipeline(result, StableDiffusionXLImg2ImgPipeline)
    expected = pipe(PROMPT, image=result.outputs["enc"].LATENT.samples, strength=0.7, negative_prompt=NEGATIVE,
                    num_inference_steps=10, guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_sdxl_size_conditioning_matches_diffusers(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sdxl.safetensors")
    sizes = dict(width=1024, height=768, crop_w=8, crop_h=16, target_width=64, target_height=96)
    pos = g.add("CLIPTextEncodeSDXL", id="pos", clip=ck.clip, text_g=PROMPT, text_l=PROMPT, **sizes)
    neg = g.add("CLIPTextEncodeSDXL", id="neg", clip=ck.clip, text_g=NEGATIVE, text_l=NEGATIVE, **sizes)
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=96)
    g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=neg.conditioning,
          latent_image=lat.latent, seed=7, steps=6, cfg=7.0, scheduler="normal")
    result = engine.run(g, outputs=["ks"])
    expected = sdxl_pipeline(result)(PROMPT, negative_prompt=NEGATIVE, height=96, width=64, num_inference_steps=6,
                                     guidance_scale=7.0, original_size=(768, 1024), crops_coords_top_left=(16, 8),
                                     target_size=(96, 64), generator=torch.Generator("cpu").manual_seed(7),
                                     output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL
    plain = engine.run(txt2img_graph("tiny-sdxl.safetensors", width=64, height=96, steps=6)).outputs["ks"]
    assert max_diff(plain.LATENT.samples, expected) > 1e-3  # the size conditioning does change the result

"""Inpainting: VAEEncodeForInpaint / InpaintModelConditioning / SetLatentNoiseMask vs diffusers'
StableDiffusionInpaintPipeline (tiny models, CPU, fp32), bad inputs and the demo graphs.

Equal inputs: ipgraph encodes with the VAE posterior mean while diffusers samples it with the generator, so
diffusers is handed ipgraph's latents: for 9 channels ``masked_image_latents`` (and the test checks separately
that they are the mean-latents of ``image * (mask < 0.5)``), for 4 channels the image latents as ``image``
(diffusers takes a 4-channel tensor as ready latents; its masked_image_latents are then unused by a 4-channel
UNet). The mask goes to diffusers as the same pixel mask, so
its binarising and downsampling are diffusers' own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline

from ipgraph.engine import Graph, NodeFailed, ValidationFailed
from ipgraph.nodes.diffusion.inpaint import grow, latent_mask, pixel_mask

TOL = 1e-4
PROMPT, NEGATIVE = "a cute gummy bear waving", "blurry"
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"



def max_diff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def inpaint_graph(nine=True, steps=6, denoise=1.0, latent="inpaint", with_mask=True):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15-inpaint.safetensors" if nine else "tiny-sd15.safetensors")
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT).conditioning
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE).conditioning
    img = g.add("LoadImage", id="img", image="inpaint_scene.png")
    mask = {"mask": img.mask} if with_mask else {}
    if latent == "empty":
        lat = g.add("EmptyLatentImage", id="inpaint", width=64, height=64).latent
    elif latent == "nine" or (latent == "inpaint" and nine):
        lat = g.add("InpaintModelConditioning", id="inpaint", positive=pos, negative=neg, vae=ck.vae,
                    pixels=img.image, **mask).latent
    else:
        lat = g.add("VAEEncodeForInpaint", id="inpaint", pixels=img.image, vae=ck.vae, grow_mask_by=0, **mask).latent
    g.add("KSampler", id="ks", model=ck.model, positive=pos, negative=neg, latent_image=lat, seed=7, steps=steps,
          cfg=7.0, sampler_name="euler", scheduler="normal", denoise=denoise)
    return g


def run(engine, graph):
    return engine.run(graph, outputs=["ks"])


def pipeline(result):
    model, clip, vae = result.outputs["ckpt"].model, result.outputs["ckpt"].clip, result.outputs["ckpt"].vae
    return StableDiffusionInpaintPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def pixels_and_mask(result):
    image = result.outputs["img"].IMAGE.permute(0, 3, 1, 2).contiguous()
    return image, result.outputs["img"].MASK[:, None].clone()


def test_nine_channel_matches_diffusers(engine):
    result = run(engine, inpaint_graph(nine=True))
    latent = result.outputs["inpaint"].latent
    image, mask = pixels_and_mask(result)
    assert mask.sum() > 0 and latent.concat.shape == (1, 5, 8, 8)
    vae = result.outputs["ckpt"].vae.vae  # masked-image latents: mean latents of image * (mask < 0.5)
    masked = (image * 2 - 1) * (mask < 0.5)
    assert max_diff(latent.concat[:, 1:], vae.encode(masked).latent_dist.mode() * vae.config.scaling_factor) <= 1e-5
    expected = pipeline(result)(
        PROMPT, image=image, mask_image=mask, masked_image_latents=latent.concat[:, 1:], height=64, width=64,
        strength=1.0, num_inference_steps=6, guidance_scale=7.0, negative_prompt=NEGATIVE,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


@pytest.mark.parametrize("denoise", [1.0, 0.75])
def test_four_channel_matches_diffusers(engine, denoise):
    # ComfyUI's denoise: round(8 * denoise) steps of an 8-step schedule = diffusers' strength of 8 steps
    result = run(engine, inpaint_graph(nine=False, steps=round(8 * denoise), denoise=denoise))
    latent = result.outputs["inpaint"].LATENT
    image, mask = pixels_and_mask(result)
    expected = pipeline(result)(
        PROMPT, image=latent.samples, masked_image_latents=latent.samples, mask_image=mask, height=64, width=64, strength=denoise,
        num_inference_steps=8, guidance_scale=7.0, negative_prompt=NEGATIVE,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    got = result.outputs["ks"].LATENT.samples
    assert max_diff(got, expected) <= TOL
    keep = latent.noise_mask == 0  # outside the mask the original latent comes back exactly
    assert keep.any() and torch.equal(got[keep.expand_as(got)], latent.samples[keep.expand_as(got)])


def test_masks_grow_resize_and_latent_noise_mask(engine):
    small = torch.zeros(1, 32, 32)
    small[:, :, :16] = 1.0  # left half, at half the image size: resized to the image
    pixels = torch.zeros(1, 64, 64, 3)
    full = pixel_mask(small, pixels)
    assert full.shape == (1, 1, 64, 64) and full[..., :32].min() == 1 and full[..., 33:].max() == 0
    dot = torch.zeros(1, 1, 9, 9)
    dot[..., 4, 4] = 1
    assert grow(dot, 2).sum() == 25
    assert latent_mask(full, (8, 8))[0, 0].sum() == 32

    g = inpaint_graph(nine=False)
    g.add("SetLatentNoiseMask", id="setmask", samples=g.ref("inpaint").latent, mask=g.ref("img").mask)
    g.set("ks", "latent_image", g.ref("setmask").latent)
    result = run(engine, g)
    assert torch.equal(result.outputs["setmask"].LATENT.noise_mask, result.outputs["inpaint"].LATENT.noise_mask)


def test_inpaint_without_a_mask_fails_validation(engine):
    with pytest.raises(ValidationFailed) as info:
        run(engine, inpaint_graph(nine=False, with_mask=False))
    assert ("inpaint", "mask") in {(p.node_id, p.input) for p in info.value.problems}


@pytest.mark.parametrize("nine,latent,message", [
    (True, "empty", "9-channel inpainting model"),
    (True, "four", "9-channel inpainting model"),
    (False, "nine", "the latent has 9 channels but the model expects 4"),
])
def test_latent_that_does_not_fit_the_model_is_a_clear_error(engine, nine, latent, message):
    with pytest.raises(NodeFailed) as info:
        run(engine, inpaint_graph(nine=nine, latent=latent, steps=2))
    assert info.value.error.node_id == "ks" and message in info.value.error.message


@pytest.mark.parametrize("name", ["inpaint_sd15.json", "inpaint_sd15_4ch.json"])
def test_demo_graphs_run(engine, name):
    result = engine.run(Graph.from_json((GRAPHS / name).read_text()))
    images = [v.IMAGE for v in result.outputs.values() if hasattr(v, "IMAGE")]  # decoded (VAEDecode)
    assert images and images[-1].shape == (1, 64, 64, 3) and any(ui.get("images") for ui in result.ui.values())

"""The pack's nodes against diffusers (the oracle) where diffusers defines the behaviour, on the tiny models.

* several reference images for ONE adapter (ImageBatch -> IPAdapterAdvanced, concat) == diffusers with a list
  of images for that adapter;
* averaged embeds (IPAdapterEncoder ×2 -> IPAdapterCombineEmbeds average -> IPAdapterEmbeds) == diffusers fed
  the mean of its own ``prepare_ip_adapter_image_embeds`` over the images;
* IPAdapter (simple) with each unified-loader preset == IPAdapterAdvanced on the files the preset resolves to
  (bit for bit) == diffusers on those files.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ipgraph.nodes.core.runtime import ASSETS_DIR
from ipgraph.nodes.ipadapter import describe_unet
from ipgraph.nodes.ipadapter.presets import UNIFIED_PRESETS, resolve, scan

from ..diffusers_pipes import CKPT, ip_adapter_pipeline
from ._api import Prompt, latent, out, txt2img

pytestmark = pytest.mark.slow
TOL = 1e-4
PROMPT, NEGATIVE, STEPS, CFG, SEED = "a polar bear", "blurry", 3, 6.0, 3


def run_pipe(pipe, **kw):
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS, guidance_scale=CFG,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kw).images


def asset(name):
    return Image.open(ASSETS_DIR / name).convert("RGB")


def diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def advanced(arch, adapter, encoder, images, weight=0.7, **kw):
    p = Prompt()
    ck = p.add("CheckpointLoaderSimple", id="ckpt", ckpt_name=CKPT[arch])
    ipa = p.add("IPAdapterModelLoader", id="ipa", ipadapter_file=adapter)
    cv = p.add("CLIPVisionLoader", id="cv", clip_name=encoder)
    img = p.add("LoadImage", id="img0", image=images[0])
    for i, name in enumerate(images[1:], 1):
        other = p.add("LoadImage", id=f"img{i}", image=name)
        img = p.add("ImageBatch", id=f"batch{i}", image1=out(img), image2=out(other))
    app = p.add("IPAdapterAdvanced", id="apply", model=out(ck), ipadapter=out(ipa), image=out(img), weight=weight,
                weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                clip_vision=out(cv), **kw)
    txt2img(p, out(app), ck, steps=STEPS, seed=SEED, cfg=CFG)
    return p


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_several_images_for_one_adapter_match_diffusers_image_list(engine, models_dir, variant):
    adapter = f"tiny-ip-adapter{'-plus' if variant == 'plus' else ''}_sd15.safetensors"
    names = ["ipa_pet.png", "ipa_style.png", "ipa_clothing.png"]
    got = latent(engine.run(advanced("sd15", adapter, "tiny-clip-vision.safetensors", names).graph()))
    one = latent(engine.run(advanced("sd15", adapter, "tiny-clip-vision.safetensors", names[:1]).graph()))
    assert diff(got, one) > 1e-3  # the other images really count
    pipe = ip_adapter_pipeline(models_dir, "sd15", [adapter])
    pipe.set_ip_adapter_scale(0.7)
    assert diff(got, run_pipe(pipe, ip_adapter_image=[[asset(n) for n in names]])) <= TOL


def test_averaged_embeds_match_diffusers_mean_of_its_embeds(engine, models_dir):
    adapter = "tiny-ip-adapter-plus_sd15.safetensors"
    p = Prompt()
    ck = p.add("CheckpointLoaderSimple", id="ckpt", ckpt_name=CKPT["sd15"])
    ipa = p.add("IPAdapterModelLoader", id="ipa", ipadapter_file=adapter)
    cv = p.add("CLIPVisionLoader", id="cv", clip_name="tiny-clip-vision.safetensors")
    encs = []
    for i, name in enumerate(["ipa_pet.png", "ipa_style.png"]):
        img = p.add("LoadImage", id=f"img{i}", image=name)
        encs.append(p.add("IPAdapterEncoder", id=f"enc{i}", ipadapter=out(ipa), image=out(img), weight=1.0,
                          clip_vision=out(cv)))
    comb = p.add("IPAdapterCombineEmbeds", id="comb", embed1=out(encs[0]), method="average", embed2=out(encs[1]))
    app = p.add("IPAdapterEmbeds", id="apply", model=out(ck), ipadapter=out(ipa), pos_embed=out(comb), weight=0.8,
                weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                neg_embed=out(encs[0], 1))
    txt2img(p, out(app), ck, steps=STEPS, seed=SEED, cfg=CFG)
    got = latent(engine.run(p.graph()))
    pipe = ip_adapter_pipeline(models_dir, "sd15", [adapter])
    pipe.set_ip_adapter_scale(0.8)
    with torch.no_grad():
        e = pipe.prepare_ip_adapter_image_embeds([[asset("ipa_pet.png"), asset("ipa_style.png")]], None, "cpu", 1,
                                                 True)[0]
    neg, pos = e.chunk(2)
    averaged = torch.cat([neg.mean(1, keepdim=True), pos.mean(1, keepdim=True)])
    assert diff(got, run_pipe(pipe, ip_adapter_image_embeds=[averaged])) <= TOL


DIFFUSERS_CHECKED = ("VIT-G (medium strength)", "FULL FACE - SD1.5 only (portraits stronger)")


def _simple(arch, preset, weight=0.6):
    p = Prompt()
    ck = p.add("CheckpointLoaderSimple", id="ckpt", ckpt_name=CKPT[arch])
    ul = p.add("IPAdapterUnifiedLoader", id="ul", model=out(ck), preset=preset)
    img = p.add("LoadImage", id="img0", image="ipa_bear_ref.png")
    app = p.add("IPAdapter", id="apply", model=out(ul), ipadapter=out(ul, 1), image=out(img), weight=weight,
                start_at=0.0, end_at=1.0, weight_type="standard")
    txt2img(p, out(app), ck, steps=STEPS, seed=SEED, cfg=CFG)
    return p


@pytest.mark.parametrize("arch,preset", [("sd15", p) for p in UNIFIED_PRESETS]
                         + [("sdxl", p) for p in UNIFIED_PRESETS if "SD1.5 only" not in p][1:2])
def test_simple_with_each_preset_equals_advanced_on_its_files_and_diffusers(engine, runtime, models_dir, arch,
                                                                           preset):
    from ipgraph.nodes.tiny.sd import build_tiny

    found = resolve(preset, describe_unet(build_tiny(arch)["unet"]), scan(runtime, "ipadapter"),
                    scan(runtime, "clip_vision"))
    got = latent(engine.run(_simple(arch, preset).graph()))
    ref = latent(engine.run(advanced(arch, found.adapter_name, found.encoder_name, ["ipa_bear_ref.png"],
                                     weight=0.6).graph()))
    assert torch.equal(got, ref)
    if preset not in DIFFUSERS_CHECKED or arch != "sd15":  # other layouts: diffusers-checked in tests/nodes
        return
    encoder = found.encoder_name
    if not encoder.endswith(".safetensors"):  # the diffusers-folder copy of the same encoder
        encoder = "tiny-clip-vision.safetensors"
    pipe = ip_adapter_pipeline(models_dir, arch, [found.adapter_name], encoder)
    pipe.set_ip_adapter_scale(0.6)
    assert diff(got, run_pipe(pipe, ip_adapter_image=asset("ipa_bear_ref.png"))) <= TOL

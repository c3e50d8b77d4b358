"""IP-Adapter graphs vs diffusers' ``load_ip_adapter`` pipelines on the SAME files (tiny models, CPU, fp32).

The diffusers side is :func:`tests.diffusers_pipes.ip_adapter_pipeline`: fresh modules, diffusers' own loading.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from ipgraph.engine import Graph
from ipgraph.nodes.core.runtime import ASSETS_DIR

from ..diffusers_pipes import CKPT, ENCODER, ip_adapter_pipeline

pytestmark = pytest.mark.slow
TOL = 1e-4
PROMPT, NEGATIVE, STEPS, CFG, SEED = "a polar bear", "blurry", 4, 6.0, 3



def adapter_file(arch, variant):
    return f"tiny-ip-adapter{'-plus' if variant == 'plus' else ''}_{arch}.safetensors"


def graph(arch, applies, *, embeds_file=None):
    """txt2img with a chain of IPAdapterApply nodes; each entry: dict(adapter, image, weight, mask, ...)."""
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=CKPT[arch])
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    model = ck.model
    cv = None
    for i, a in enumerate(applies):
        a = dict(a)
        ipa = g.add("IPAdapterModelLoader", id=f"ipa{i}", ipadapter_file=a.pop("adapter"))
        links = {}
        if embeds_file:
            links["embeds"] = g.add("LoadImageEmbeds", id=f"emb{i}", name=embeds_file).embeds
        else:
            cv = cv or g.add("CLIPVisionLoader", id="cv", name=ENCODER)
            links["clip_vision"] = cv.clip_vision
            links["image"] = g.add("LoadImage", id=f"img{i}", image=a.pop("image")).image
        if "mask" in a:
            links["attn_mask"] = g.add("LoadImage", id=f"mask{i}", image=a.pop("mask")).mask
        model = g.add("IPAdapterApply", id=f"apply{i}", model=model, ipadapter=ipa.ipadapter, **links, **a).model
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    ks = g.add("KSampler", id="ks", model=model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal")
    g.add("PreviewImage", id="out", images=g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae).image)
    return g


def run_pipe(pipe, **kw):
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS, guidance_scale=CFG,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", **kw).images


def asset(name):
    return Image.open(ASSETS_DIR / name).convert("RGB")


def diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def ours_and_plain(engine, arch, applies, **kw):
    got = engine.run(graph(arch, applies, **kw)).outputs["ks"].LATENT.samples
    plain = engine.run(graph(arch, [])).outputs["ks"].LATENT.samples
    assert diff(got, plain) > 1e-3  # the adapter really acts, so the comparison means something
    return got


@pytest.mark.parametrize("arch,variant", [("sd15", "base"), ("sd15", "plus"), ("sdxl", "base"), ("sdxl", "plus")])
def test_single_adapter_matches_diffusers(engine, models_dir, arch, variant):
    file = adapter_file(arch, variant)
    got = ours_and_plain(engine, arch, [dict(adapter=file, image="ipa_bear_ref.png", weight=0.6)])
    pipe = ip_adapter_pipeline(models_dir, arch, [file])
    pipe.set_ip_adapter_scale(0.6)
    assert diff(got, run_pipe(pipe, ip_adapter_image=asset("ipa_bear_ref.png"))) <= TOL


def test_two_adapters_match_diffusers(engine, models_dir):
    files = [adapter_file("sd15", "base"), adapter_file("sd15", "plus")]
    got = ours_and_plain(engine, "sd15", [dict(adapter=files[0], image="ipa_pet.png", weight=0.8),
                                          dict(adapter=files[1], image="ipa_clothing.png", weight=0.3)])
    pipe = ip_adapter_pipeline(models_dir, "sd15", files)
    pipe.set_ip_adapter_scale([0.8, 0.3])
    expected = run_pipe(pipe, ip_adapter_image=[asset("ipa_pet.png"), asset("ipa_clothing.png")])
    assert diff(got, expected) <= TOL


def test_masked_adapters_match_diffusers_ip_adapter_masks(engine, models_dir):
    file = adapter_file("sd15", "base")
    applies = [dict(adapter=file, image="ipa_face_a.png", mask="ipa_mask_left.png", weight=0.7,
                    mask_interpolation="bicubic"),
               dict(adapter=file, image="ipa_face_b.png", mask="ipa_mask_right.png", weight=0.7,
                    mask_interpolation="bicubic")]
    result = engine.run(graph("sd15", applies))
    got = result.outputs["ks"].LATENT.samples
    # diffusers' processor on the same mask pictures (L images, white = where the face goes)
    ours_masks = [result.outputs[f"mask{i}"].MASK for i in (0, 1)]
    pictures = [Image.fromarray((m[0].numpy() * 255).astype("uint8"), "L") for m in ours_masks]
    masks = IPAdapterMaskProcessor().preprocess(pictures, height=64, width=64)
    assert torch.equal(masks[:, 0], torch.cat(ours_masks))  # binary masks: the same numbers on both sides
    pipe = ip_adapter_pipeline(models_dir, "sd15", [file, file])
    pipe.set_ip_adapter_scale([0.7, 0.7])
    expected = run_pipe(pipe, ip_adapter_image=[asset("ipa_face_a.png"), asset("ipa_face_b.png")],
                        cross_attention_kwargs={"ip_adapter_masks": [masks[0:1], masks[1:2]]})
    assert diff(got, expected) <= TOL


def test_instantstyle_dict_matches_diffusers(engine, models_dir):
    file = adapter_file("sdxl", "base")
    scale = {"up": {"block_0": [0.0, 1.0, 0.0]}, "down": {"block_2": [0.0, 0.5]}}
    got = ours_and_plain(engine, "sdxl", [dict(adapter=file, image="ipa_style.png", weight=1.0,
                                               weight_type="per-block", block_weights=json.dumps(scale))])
    pipe = ip_adapter_pipeline(models_dir, "sdxl", [file])
    pipe.set_ip_adapter_scale(scale)
    assert diff(got, run_pipe(pipe, ip_adapter_image=asset("ipa_style.png"))) <= TOL


def test_precomputed_diffusers_embeds_match_without_an_encoder(engine, models_dir):
    file = adapter_file("sd15", "plus")
    pipe = ip_adapter_pipeline(models_dir, "sd15", [file])
    pipe.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(asset("ipa_bear_ref.png"), None, "cpu", 1, True)
    assert embeds[0].shape[0] == 2 and embeds[0].ndim == 4  # [neg; pos] x 1 image x tokens x width
    (models_dir / "embeds").mkdir(exist_ok=True)
    torch.save(embeds, models_dir / "embeds" / "diffusers_plus_sd15.ipadpt")
    g = graph("sd15", [dict(adapter=file, weight=0.7)], embeds_file="diffusers_plus_sd15.ipadpt")
    assert not any(e.type == "CLIPVisionLoader" for e in g.nodes.values())
    got = engine.run(g).outputs["ks"].LATENT.samples
    assert diff(got, run_pipe(pipe, ip_adapter_image_embeds=embeds)) <= TOL

"""IP-Adapter graph nodes: the math diffusers has no switch for, pairing errors, caching, embeds files.

The numerical comparison with diffusers' ``load_ip_adapter`` pipelines is in test_oracle_ipadapter.py; here
the expected results are stated directly (weight 0 / end_at 0 / an all-zero mask == no adapter, bit for bit).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import pytest
import torch

from ipgraph.engine import REGISTRY, Engine, Graph, NodeFailed
from ipgraph.nodes.core.runtime import ASSETS_DIR

pytestmark = pytest.mark.slow

SD15 = "tiny-sd15.safetensors"
ADAPTER = "tiny-ip-adapter_sd15.safetensors"
PLUS = "tiny-ip-adapter-plus_sd15.safetensors"
ENCODER = "tiny-clip-vision.safetensors"


def ip_graph(*, adapter=ADAPTER, ckpt=SD15, encoder=ENCODER, with_adapter=True, seed=1, steps=2, mask=None,
             reference=True, **apply):
    """A small txt2img graph; ``apply`` goes to IPAdapterApply (omitted when with_adapter is False).

    reference=False leaves IPAdapterApply without image/clip_vision (the caller links embeds)."""
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a polar bear")
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="")
    model = ck.model
    if with_adapter:
        ipa = g.add("IPAdapterModelLoader", id="ipa", ipadapter_file=adapter)
        links = {}
        if reference:
            ref = g.add("LoadImage", id="ref", image="ipa_bear_ref.png")
            links["image"] = ref.image
            links["clip_vision"] = g.add("CLIPVisionLoader", id="cv", name=encoder).clip_vision
        if mask is not None:
            links["attn_mask"] = g.add("LoadImage", id="mask", image=mask).mask
        model = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, **links, **apply).model
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    ks = g.add("KSampler", id="ks", model=model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=seed, steps=steps, cfg=5.0)
    g.add("PreviewImage", id="out", images=g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae).image)
    return g


def latents(engine, graph):
    return engine.run(graph).outputs["ks"].LATENT.samples


def failure(engine, graph) -> str:
    with pytest.raises(NodeFailed) as info:
        engine.run(graph)
    return f"{info.value.error.node_id}: {info.value.error.message}"


def problems(engine, graph):
    return {(p.node_id, p.input): p.message for p in engine.validate(graph)}


# -- the math: what must equal "no adapter" and what must not -------------------------------------------

def test_neutral_settings_are_bit_identical_to_no_adapter_and_base_model_is_untouched(engine):
    plain = latents(engine, ip_graph(with_adapter=False))
    active = latents(engine, ip_graph(weight=0.8))
    assert (active - plain).abs().max() > 1e-4  # the adapter does something
    assert torch.equal(latents(engine, ip_graph(weight=0.0)), plain)
    assert torch.equal(latents(engine, ip_graph(weight=0.8, end_at=0.0)), plain)
    # a mask of zeros (an opaque PNG: LoadImage's mask = 1 - alpha = 0 everywhere)
    assert torch.equal(latents(engine, ip_graph(weight=0.8, mask="ipa_bear_ref.png")), plain)
    # A-B-A: the shared UNet is as it was after an IP-Adapter run (fresh key: different seed, so no cache hit)
    g = ip_graph(with_adapter=False, seed=5)
    before = latents(engine, g)
    latents(engine, ip_graph(weight=0.8, seed=5, embeds_scaling="K+V w/ C penalty", weight_type="ease in"))
    fresh = Engine(REGISTRY, engine.resources)  # empty output cache, same loaded UNet (runtime's model manager)
    assert torch.equal(latents(fresh, g.copy()), before)


def test_start_at_late_acts_only_on_late_steps(engine):
    plain = latents(engine, ip_graph(with_adapter=False, steps=4))
    late = latents(engine, ip_graph(weight=0.8, steps=4, start_at=0.5))
    full = latents(engine, ip_graph(weight=0.8, steps=4))
    assert (late - plain).abs().max() > 0 and (late - full).abs().max() > 0


def test_reference_is_encoded_once_and_seed_change_reruns_only_the_sampler(engine):
    first = engine.run(ip_graph(weight=0.7, seed=1))
    assert "apply" in first.executed and "cv" in first.executed
    again = engine.run(ip_graph(weight=0.7, seed=2))
    assert {"cv", "ipa", "ref", "apply", "pos", "neg"} <= set(again.cached)
    assert set(again.executed) == {"ks", "dec", "out"}
    model = first.outputs["apply"].model
    assert first.outputs["ckpt"].model.patches == () and len(model.patches) == 1  # nothing mutated


# -- weights per block ------------------------------------------------------------------------------------

def test_style_only_touches_the_documented_block(engine):
    from ipgraph.nodes.core.types import SamplingState
    from ipgraph.nodes.ipadapter import cross_attention_names, installed
    from ipgraph.nodes.ipadapter.attention import DecoupledAttnProcessor

    g = ip_graph(ckpt="tiny-sdxl.safetensors", adapter="tiny-ip-adapter_sdxl.safetensors", weight=0.5,
                 weight_type="per-block", block_weights=json.dumps({"up": {"block_0": [0.0, 1.0, 0.0]}}))
    g2 = ip_graph(ckpt="tiny-sdxl.safetensors", adapter="tiny-ip-adapter_sdxl.safetensors", weight=0.5,
                  weight_type="style transfer")
    r = engine.run(g, outputs=["apply"])
    model = r.outputs["apply"].model
    (patch,) = model.patches
    names = cross_attention_names(model.unet)
    style = [n.startswith("up_blocks.0.attentions.1.") for n in names]
    assert sum(style) == 10
    assert [w != 0 for w in patch.layer_weights] == style
    assert all(w == 0.5 for w, s in zip(patch.layer_weights, style, strict=True) if s)
    (patch2,) = engine.run(g2, outputs=["apply"]).outputs["apply"].model.patches
    assert patch2.layer_weights == patch.layer_weights  # ComfyUI's SDXL "style transfer" is the same block
    with installed(model.unet, [patch], SamplingState()):
        patched = [isinstance(p, DecoupledAttnProcessor) for n, p in model.unet.attn_processors.items()
                   if n in names]
    assert patched == style


def test_validation_catches_literal_mistakes(engine, runtime):
    bad = runtime.models_dir / "ipadapter" / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 40)
    g = ip_graph(adapter="corrupt.safetensors", weight_type="per-block", block_weights="{up: 1}", start_at=0.9,
                 end_at=0.2)
    found = problems(engine, g)
    assert "could not be read" in found[("ipa", "ipadapter_file")]
    assert "not valid JSON" in found[("apply", "block_weights")]
    assert "after end_at" in found[("apply", "start_at")]
    found = problems(engine, ip_graph(adapter="nope.safetensors", block_weights='{"up": 1}'))
    assert "no ipadapter model named" in found[("ipa", "ipadapter_file")]
    assert "only used when weight_type is per-block" in found[("apply", "block_weights")]


# -- pairing errors: detected before any sampling, naming the input -----------------------------------------

def test_pairing_errors_name_the_input_and_what_is_needed(engine):
    msg = failure(engine, ip_graph(encoder="tiny-clip-vision-wide.safetensors"))
    assert msg.startswith("apply: input clip_vision:") and "needs an image encoder with projection 32" in msg
    assert "tiny-clip-vision-wide.safetensors" in msg and "hidden width 96, projection 48" in msg
    msg = failure(engine, ip_graph(ckpt="tiny-sdxl.safetensors"))
    assert msg.startswith("apply: input ipadapter:") and "SD1.5" in msg and "SDXL" in msg


def test_embeds_from_another_adapter_kind_are_refused(engine):
    g = Graph()
    cv = g.add("CLIPVisionLoader", id="cv", name=ENCODER)
    plus = g.add("IPAdapterModelLoader", id="plus", ipadapter_file=PLUS)
    base = g.add("IPAdapterModelLoader", id="base", ipadapter_file=ADAPTER)
    ck = g.add("LoadCheckpoint", id="ckpt", name=SD15)
    img = g.add("LoadImage", id="ref", image="ipa_pet.png")
    enc = g.add("IPAdapterEncoder", id="enc", ipadapter=plus.ipadapter, clip_vision=cv.clip_vision, image=img.image)
    g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=base.ipadapter, embeds=enc.embeds)
    with pytest.raises(NodeFailed) as info:
        engine.run(g, outputs=["apply"])
    msg = info.value.error.message
    assert msg.startswith("input embeds:") and "penultimate hidden states of width 64" in msg
    assert "image_embeds (projected CLS) of width 32" in msg


def test_bad_masks_and_images_give_clear_errors(engine, caplog):
    from ipgraph.nodes.ipadapter.nodes import IPAdapterApplyIn, ipadapter_apply

    r = engine.run(ip_graph(weight=0.5), outputs=["apply", "pos", "neg", "lat"])
    o = r.outputs
    base = dict(model=o["ckpt"].model, ipadapter=o["ipa"].IPADAPTER, clip_vision=o["cv"].CLIP_VISION,
                image=o["ref"].IMAGE)

    class Ctx:
        resources = engine.resources

    def run(**kw):
        return ipadapter_apply(IPAdapterApplyIn.model_construct(**{**defaults(), **base, **kw}), Ctx())

    with pytest.raises(ValueError, match="input attn_mask: a MASK is float"):
        run(attn_mask=torch.ones(1, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="input image: the image batch is empty"):
        run(image=torch.zeros(0, 64, 64, 3))
    with pytest.raises(ValueError, match="connect only one of image, embeds"):
        run(embeds=object())
    # a wide mask on a square image: resized (stretched) with a log note
    wide = run(attn_mask=torch.ones(1, 32, 96)).model
    lat = o["lat"].LATENT
    from ipgraph.nodes.diffusion.sampling import sample

    with caplog.at_level(logging.INFO, logger="ipgraph.nodes.ipadapter.attention"):
        sample(wide, o["pos"].CONDITIONING, o["neg"].CONDITIONING, lat, seed=1, steps=1, cfg=5.0, sampler="euler",
               schedule="normal", denoise=1.0, device="cpu", dtype=torch.float32)
    assert any("stretched" in rec.message for rec in caplog.records)


def defaults() -> dict:
    from ipgraph.nodes.ipadapter.nodes import IPAdapterApplyIn

    return {n: f.default for n, f in IPAdapterApplyIn.model_fields.items()}


def test_negative_image_replaces_the_default_negative(engine):
    g = ip_graph(weight=0.5)
    neg = g.add("LoadImage", id="negimg", image="ipa_style.png")
    g.set("apply", "image_negative", neg.image)
    with_neg = engine.run(g, outputs=["apply"]).outputs
    default = engine.run(ip_graph(weight=0.5), outputs=["apply"]).outputs
    (p_neg,), (p_def,) = with_neg["apply"].model.patches, default["apply"].model.patches
    assert torch.equal(p_neg.cond_tokens, p_def.cond_tokens)
    adapter, cv = with_neg["ipa"].IPADAPTER, with_neg["cv"].CLIP_VISION
    expected = adapter.project(cv.encode_images(with_neg["negimg"].IMAGE)[0])
    assert torch.allclose(p_neg.uncond_tokens, expected, atol=1e-6)
    assert torch.allclose(p_def.uncond_tokens, adapter.project(torch.zeros(1, 32)), atol=1e-6)


# -- embeds: encode, save, load (ipgraph and diffusers files), run without an encoder --------------------------

def test_embeds_round_trip_runs_without_encoder_and_matches_direct_image(engine, runtime):
    direct = latents(engine, ip_graph(adapter=PLUS, weight=0.7))
    g = Graph()
    cv = g.add("CLIPVisionLoader", id="cv", name=ENCODER)
    ipa = g.add("IPAdapterModelLoader", id="ipa", ipadapter_file=PLUS)
    img = g.add("LoadImage", id="ref", image="ipa_bear_ref.png")
    enc = g.add("IPAdapterEncoder", id="enc", ipadapter=ipa.ipadapter, clip_vision=cv.clip_vision, image=img.image)
    g.add("SaveImageEmbeds", id="save", embeds=enc.embeds, filename_prefix="roundtrip")
    saved = engine.run(g).ui["save"]["embeds"][0]["filename"]
    assert saved.endswith(".ipadpt")
    path = runtime.models_dir / "embeds" / saved
    assert path.read_bytes()[8:9] == b"{"  # safetensors inside

    loaded = ip_graph(adapter=PLUS, reference=False, weight=0.7)
    loaded.set("apply", "embeds", loaded.add("LoadImageEmbeds", id="emb", name=saved).embeds)
    result = engine.run(loaded)
    assert not any(e.type == "CLIPVisionLoader" for e in loaded.nodes.values())
    assert torch.allclose(result.outputs["ks"].LATENT.samples, direct, atol=1e-5)
    assert result.outputs["emb"].embeds.clip_vision == ENCODER


def test_diffusers_torch_save_embeds_load_weights_only(engine, runtime):
    from ipgraph.nodes.ipadapter.embeds import EmbedsFileError, load_embeds

    folder = runtime.models_dir / "embeds"
    folder.mkdir(exist_ok=True)
    neg, pos = torch.zeros(1, 1, 32), torch.randn(1, 1, 32)
    torch.save([torch.cat([neg, pos])], folder / "diffusers.ipadpt")
    e = load_embeds(folder / "diffusers.ipadpt")
    assert torch.equal(e.cond, pos[0]) and torch.equal(e.uncond, neg[0]) and e.encoder_input == "image_embeds"
    assert engine.validate(ip_graph(with_adapter=False)) == []

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent-ipgraph-test",))

    (folder / "evil.ipadpt").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(EmbedsFileError, match="weights-only"):
        load_embeds(folder / "evil.ipadpt")
    g = Graph()
    g.add("LoadImageEmbeds", id="emb", name="evil.ipadpt")
    g.add("SaveImageEmbeds", id="save", embeds=g.ref("emb").embeds)
    assert "weights-only" in problems(engine, g)[("emb", "name")]


def test_bundled_embeds_asset_and_comfy_alias(engine):
    from ipgraph.engine.comfy import from_comfy_api

    assert (ASSETS_DIR / "tiny-embeds_sd15.ipadpt").is_file()
    doc = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": ENCODER}},
           "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ADAPTER}},
           "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
           "4": {"class_type": "LoadImage", "inputs": {"image": "ipa_pet.png"}},
           "5": {"class_type": "IPAdapterAdvanced", "inputs": {
               "model": ["3", 0], "ipadapter": ["2", 0], "image": ["4", 0], "clip_vision": ["1", 0],
               "weight": 0.8, "weight_type": "ease in", "combine_embeds": "average", "start_at": 0.0, "end_at": 1.0,
               "embeds_scaling": "V only"}}}
    graph = from_comfy_api(doc)
    assert engine.validate(graph, outputs=["5"]) == []
    (patch,) = engine.run(graph, outputs=["5"]).outputs["5"].MODEL.patches
    assert patch.layer_weights is not None and patch.layer_weights[1] < 0.8

"""LoRA / LyCORIS math, weight-patch install and exact undo, merges, file formats and bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ipgraph.engine import Graph
from ipgraph.engine.executor import NodeFailed, ValidationFailed
from ipgraph.nodes.lora.files import load_lora
from ipgraph.nodes.lora.patch import LohaTerm, LokrTerm, LoraTerm, WeightPatch, weights_installed

pytestmark = pytest.mark.slow


def first(result, node):
    return next(iter(dict(result.outputs[node]).values()))


def sampled(ckpt="tiny-sd15.safetensors", loras=(), model_only=False, steps=3, seed=1):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    model, clip = ck.model, ck.clip
    for i, (name, s) in enumerate(loras):
        if model_only:
            model = g.add("LoraLoaderModelOnly", id=f"l{i}", model=model, lora_name=name, strength_model=s).MODEL
        else:
            lo = g.add("LoraLoader", id=f"l{i}", model=model, clip=clip, lora_name=name, strength_model=s,
                       strength_clip=s)
            model, clip = lo.MODEL, lo.CLIP
    pos = g.add("CLIPTextEncode", id="pos", clip=clip, text="a bear")
    neg = g.add("CLIPTextEncode", id="neg", clip=clip, text="")
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    g.add("KSampler", id="ks", model=model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=seed, steps=steps, cfg=5.0)
    return g


# -- math ------------------------------------------------------------------------------------------------

def test_terms_follow_the_stated_math():
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    assert torch.allclose(LoraTerm(up, down, alpha=1.0).diff(torch.Size([6, 5]), "cpu"), up @ down / 2)
    assert torch.allclose(LoraTerm(up, down).diff(torch.Size([6, 5]), "cpu"), up @ down)  # no alpha: α/r = 1
    a1, b1, a2, b2 = (torch.randn(s, generator=g) for s in [(6, 2), (2, 5), (6, 2), (2, 5)])
    assert torch.allclose(LohaTerm(a1, b1, a2, b2, alpha=4.0).diff(torch.Size([6, 5]), "cpu"),
                          (a1 @ b1) * (a2 @ b2) * 2.0)
    w1, wa, wb = torch.randn(2, 3, generator=g), torch.randn(3, 2, generator=g), torch.randn(2, 4, generator=g)
    assert torch.allclose(LokrTerm(w1=w1, w2a=wa, w2b=wb, alpha=1.0).diff(torch.Size([6, 12]), "cpu"),
                          torch.kron(w1, wa @ wb) / 2)
    assert torch.allclose(LokrTerm(w1=w1, w2=wa @ wb, alpha=8.0).diff(torch.Size([6, 12]), "cpu"),
                          torch.kron(w1, wa @ wb))  # nothing decomposed: scale 1
    # LoCon conv with a Tucker mid: Δ[o,i,h,w] = Σ up[o,a] mid[a,b,h,w] down[b,i]
    upc, mid, downc = torch.randn(4, 2, 1, 1, generator=g), torch.randn(2, 2, 3, 3, generator=g), \
        torch.randn(2, 3, 1, 1, generator=g)
    expect = torch.einsum("oa,abhw,bi->oihw", upc[:, :, 0, 0], mid, downc[:, :, 0, 0])
    assert torch.allclose(LoraTerm(upc, downc, mid=mid).diff(torch.Size([4, 3, 3, 3]), "cpu"), expect, atol=1e-6)


def test_install_is_undone_exactly_and_applies_in_order():
    lin = torch.nn.Linear(4, 3)
    before = lin.weight.data.clone()
    up, down = torch.randn(3, 1), torch.randn(1, 4)
    p1 = WeightPatch({"weight": LoraTerm(up, down)}, strength_patch=0.5)
    p2 = WeightPatch({"weight": LoraTerm(up, down)}, strength_patch=1.0, strength_model=2.0)
    with weights_installed(lin, [p1, p2]):
        assert torch.allclose(lin.weight, (before + 0.5 * up @ down) * 2.0 + up @ down)
    assert torch.equal(lin.weight.data, before)
    with pytest.raises(RuntimeError), weights_installed(lin, [p1]):
        raise RuntimeError("sampling failed")
    assert torch.equal(lin.weight.data, before)  # restored on errors too


# -- formats ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt,parts", [
    ("tiny-sd15-lora-kohya.safetensors", "kohya", {"unet", "te0"}),
    ("tiny-sd15-lora-peft.safetensors", "peft", {"unet", "te0"}),
    ("tiny-sdxl-lora-kohya.safetensors", "kohya", {"unet", "te0", "te1"}),
    ("tiny-sd15-locon.safetensors", "kohya", {"unet"}),
    ("tiny-sd15-loha.safetensors", "lycoris", {"unet"}),
    ("tiny-sd15-lokr.safetensors", "lycoris", {"unet"})])
def test_formats_are_read_from_the_keys(models_dir, name, fmt, parts):
    lora = load_lora(models_dir / "loras" / name)
    assert lora.format == fmt and lora.parts == parts and not lora.skipped


@pytest.mark.parametrize("name", ["tiny-sd15-locon.safetensors", "tiny-sd15-loha.safetensors",
                                  "tiny-sd15-lokr.safetensors"])
def test_lycoris_files_change_the_image_and_are_undone(engine, name):
    base = first(engine.run(sampled(), outputs=["ks"]), "ks").samples
    got = first(engine.run(sampled(loras=[(name, 1.0)], model_only=True), outputs=["ks"]), "ks").samples
    engine.cache.clear()
    again = first(engine.run(sampled(seed=1, steps=3), outputs=["ks"]), "ks").samples
    assert (got - base).abs().max() > 1e-3
    assert torch.equal(base, again)


def test_pt_file_is_read_weights_only(engine, models_dir, tmp_path):
    tensors = load_lora(models_dir / "loras" / "tiny-sd15-lora-kohya.safetensors")
    from safetensors.torch import load_file
    raw = load_file(models_dir / "loras" / "tiny-sd15-lora-kohya.safetensors")
    torch.save(raw, models_dir / "loras" / "test-kohya.pt")
    again = load_lora(models_dir / "loras" / "test-kohya.pt")
    assert set(again.terms) == set(tensors.terms)
    a = first(engine.run(sampled(loras=[("test-kohya.pt", 0.7)]), outputs=["ks"]), "ks").samples
    b = first(engine.run(sampled(loras=[("tiny-sd15-lora-kohya.safetensors", 0.7)]), outputs=["ks"]), "ks").samples
    assert torch.equal(a, b)


# -- A-B-A, stacking, CLIP -------------------------------------------------------------------------------

def test_a_b_a_is_bit_identical_and_the_model_is_never_mutated(engine):
    ck = engine.run(sampled(), outputs=["ckpt"]).outputs["ckpt"]
    state = {k: v.clone() for k, v in ck.model.unet.state_dict().items()}
    te = {k: v.clone() for k, v in ck.clip.text_encoders[0].state_dict().items()}
    a1 = first(engine.run(sampled(), outputs=["ks"]), "ks").samples
    b = first(engine.run(sampled(loras=[("tiny-sd15-lora-kohya.safetensors", 1.0),
                                        ("tiny-sd15-lora-peft.safetensors", 0.5)]), outputs=["ks"]), "ks").samples
    engine.cache.clear()  # A runs again for real (the loaded model stays in the model manager)
    a2 = first(engine.run(sampled(seed=1), outputs=["ks"]), "ks").samples
    assert torch.equal(a1, a2) and (a1 - b).abs().max() > 1e-2
    assert all(torch.equal(v, ck.model.unet.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(v, ck.clip.text_encoders[0].state_dict()[k]) for k, v in te.items())


def test_clip_strength_changes_the_conditioning_only_through_text_encoding(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    lo = g.add("LoraLoader", id="lo", model=ck.model, clip=ck.clip, lora_name="tiny-sd15-lora-kohya.safetensors",
               strength_model=0.0, strength_clip=1.0)
    g.add("CLIPTextEncode", id="t0", clip=ck.clip, text="a bear")
    g.add("CLIPTextEncode", id="t1", clip=lo.CLIP, text="a bear")
    r = engine.run(g, outputs=["t0", "t1", "lo"])
    assert first(r, "lo").patches == () and first(r, "lo") is not None  # strength 0: the model is unchanged
    assert (first(r, "t0").embeds - first(r, "t1").embeds).abs().max() > 1e-3
    engine.cache.clear()
    again = engine.run(g, outputs=["t0"])
    assert torch.equal(first(again, "t0").embeds, first(r, "t0").embeds)


# -- merges ----------------------------------------------------------------------------------------------

def _merged_weights(engine, node_type, **widgets):
    g = Graph()
    a = g.add("LoadCheckpoint", id="a", name="tiny-sd15.safetensors")
    b = g.add("LoadLora", id="b", model=a.model, name="tiny-sd15-lora-kohya.safetensors", strength_model=1.0)
    g.add(node_type, id="m", model1=a.model, model2=b.model, **widgets)
    r = engine.run(g, outputs=["m", "b", "a"])
    from ipgraph.nodes.lora.patch import named_weights, patched_weight

    unet = first(r, "a").unet
    keys = [k for k in named_weights(unet) if k in CHECKED]
    w1 = {k: named_weights(unet)[k].data.clone() for k in keys}
    w2 = {k: patched_weight(named_weights(unet)[k].data, k, first(r, "b").patches) for k in keys}
    with weights_installed(unet, first(r, "m").patches):
        got = {k: named_weights(unet)[k].data.clone() for k in keys}
    assert all(torch.equal(w1[k], named_weights(unet)[k].data) for k in keys)
    return w1, w2, got


CHECKED = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
           "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
           "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight", "time_embedding.linear_1.weight")


def test_model_merge_math(engine):
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    w1, w2, got = _merged_weights(engine, "ModelMergeSimple", ratio=0.25)
    assert torch.allclose(got[key], 0.25 * w1[key] + 0.75 * w2[key], atol=1e-6)
    w1, w2, got = _merged_weights(engine, "ModelMergeAdd")
    assert torch.allclose(got[key], w1[key] + w2[key], atol=1e-6)
    w1, w2, got = _merged_weights(engine, "ModelMergeSubtract", multiplier=2.0)
    assert torch.allclose(got[key], 2.0 * w1[key] - 2.0 * w2[key], atol=1e-6)
    w1, w2, got = _merged_weights(engine, "ModelMergeBlocks", input=0.2, middle=0.5, out=0.9)
    up = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"  # output_blocks.* -> out
    mid = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"  # middle_block.* -> middle
    for k, r in ((key, 0.2), (up, 0.9), (mid, 0.5), ("time_embedding.linear_1.weight", 0.2)):
        assert torch.allclose(got[k], r * w1[k] + (1 - r) * w2[k], atol=1e-6), k


def test_clip_merge_math(engine):
    g = Graph()
    a = g.add("LoadCheckpoint", id="a", name="tiny-sd15.safetensors")
    b = g.add("LoraLoader", id="b", model=a.model, clip=a.clip, lora_name="tiny-sd15-lora-kohya.safetensors",
              strength_model=0.0, strength_clip=1.0)
    g.add("CLIPMergeSimple", id="m", clip1=a.clip, clip2=b.CLIP, ratio=0.4)
    r = engine.run(g, outputs=["m", "b", "a"])
    from ipgraph.nodes.lora.patch import named_weights, patched_weight

    encs = r.outputs["a"].clip.text_encoders
    key = next(k for k in named_weights(encs) if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
    w = named_weights(encs)[key].data.clone()
    w2 = patched_weight(w, key, r.outputs["b"].CLIP.patches)
    with weights_installed(encs, first(r, "m").patches):
        assert torch.allclose(named_weights(encs)[key].data, 0.4 * w + 0.6 * w2, atol=1e-6)
    assert torch.equal(named_weights(encs)[key].data, w)


# -- bad input -------------------------------------------------------------------------------------------

def _error(engine, graph, outputs=("ks",)):
    with pytest.raises((NodeFailed, ValidationFailed)) as info:
        engine.run(graph, outputs=list(outputs))
    text = str(info.value)
    assert "Traceback" not in text
    return text


def test_sdxl_lora_on_sd15_is_a_sentence(engine):
    text = _error(engine, sampled(loras=[("tiny-sdxl-lora-kohya.safetensors", 1.0)]))
    assert "for SDXL" in text and "SD1.5" in text


def test_sdxl_unet_lora_on_sd15_model_only_names_the_shapes(engine, models_dir):
    from safetensors.torch import load_file
    unet_only = {k: v for k, v in load_file(models_dir / "loras" / "tiny-sdxl-lora-peft.safetensors").items()
                 if k.startswith("unet.")}
    save_file(unet_only, str(models_dir / "loras" / "test-sdxl-unet-only.safetensors"))
    text = _error(engine, sampled(loras=[("test-sdxl-unet-only.safetensors", 1.0)], model_only=True))
    assert "other shapes" in text and "another base model" in text


def test_lora_matching_nothing_says_how_many_matched(engine, models_dir):
    save_file({"lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2)},
              str(models_dir / "loras" / "test-nothing.safetensors"))
    text = _error(engine, sampled(loras=[("test-nothing.safetensors", 1.0)]))
    assert "0 of its 1 modules matched" in text


def test_not_a_lora_and_strength_out_of_range_are_validation_sentences(engine, models_dir):
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(models_dir / "loras" / "test-notlora.safetensors"))
    text = _error(engine, sampled(loras=[("test-notlora.safetensors", 1.0)]))
    assert "is not a LoRA file" in text and "lora_name" in text
    text = _error(engine, sampled(loras=[("tiny-sd15-lora-kohya.safetensors", 150.0)]))
    assert "strength_model" in text and "100" in text

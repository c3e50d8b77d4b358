"""CLIPSetLastLayer and textual-inversion embeddings against diffusers on the same tiny checkpoints.

diffusers is the oracle: ``encode_prompt(clip_skip=k)`` for clip skip, ``load_textual_inversion`` (on copies of
the tokenizer and text encoder, since it changes them) for embeddings.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from ipgraph.engine import Graph, NodeFailed

pytestmark = pytest.mark.slow
PROMPT = "a polar bear in the snow"


def encode(engine, ckpt, texts, layer=None, outputs=None):
    """Encode each text with CheckpointLoaderSimple (-> CLIPSetLastLayer) -> CLIPTextEncode."""
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", id="ckpt", ckpt_name=ckpt)
    clip = ck.CLIP if layer is None else g.add("CLIPSetLastLayer", id="skip", clip=ck.CLIP,
                                               stop_at_clip_layer=layer).CLIP
    for i, text in enumerate(texts):
        g.add("CLIPTextEncode", id=f"t{i}", text=text, clip=clip)
    result = engine.run(g, outputs=["ckpt"] + [f"t{i}" for i in range(len(texts))])
    return result, [result.outputs[f"t{i}"].CONDITIONING for i in range(len(texts))]


def sd15_pipe(out, copies=False):
    te, tok = out.CLIP.text_encoders[0], out.CLIP.tokenizers[0]
    if copies:
        te, tok = copy.deepcopy(te), copy.deepcopy(tok)
    return StableDiffusionPipeline(vae=out.VAE.vae, text_encoder=te, tokenizer=tok, unet=out.MODEL.unet,
                                   scheduler=EulerDiscreteScheduler.from_config(out.MODEL.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl_pipe(out):
    te, te2 = (copy.deepcopy(t) for t in out.CLIP.text_encoders)
    tok, tok2 = (copy.deepcopy(t) for t in out.CLIP.tokenizers)
    return StableDiffusionXLPipeline(vae=out.VAE.vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=out.MODEL.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(out.MODEL.scheduler_config))


def test_clip_set_last_layer_equals_diffusers_clip_skip_sd15(engine):
    result, (default,) = encode(engine, "tiny-sd15.safetensors", [PROMPT])
    _, (last,) = encode(engine, "tiny-sd15.safetensors", [PROMPT], layer=-1)
    _, (skip,) = encode(engine, "tiny-sd15.safetensors", [PROMPT], layer=-2)
    # diffusers' encode_prompt(clip_skip=1): final_layer_norm(hidden_states[-(clip_skip + 1)]). Its own call
    # reaches text_encoder.text_model, which transformers 5 no longer has, so the formula is applied here.
    encoder, tokenizer = result.outputs["ckpt"].CLIP.text_encoders[0], result.outputs["ckpt"].CLIP.tokenizers[0]
    with torch.no_grad():
        ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        hidden = encoder(ids, output_hidden_states=True).hidden_states
        expected = getattr(encoder, "text_model", encoder).final_layer_norm(hidden[-(1 + 1)])
    assert torch.equal(last.embeds, default.embeds)  # -1 = the last layer = no clip skip
    assert (skip.embeds - expected).abs().max() <= 1e-5
    assert (skip.embeds - default.embeds).abs().max() > 1e-3
    clip = result.outputs["ckpt"].CLIP
    assert clip.layer is None  # CLIPSetLastLayer made a new handle; the checkpoint's stays as it was


def test_clip_set_last_layer_sdxl(engine):
    result, (default,) = encode(engine, "tiny-sdxl.safetensors", [PROMPT])
    _, (penultimate,) = encode(engine, "tiny-sdxl.safetensors", [PROMPT], layer=-2)
    _, (last,) = encode(engine, "tiny-sdxl.safetensors", [PROMPT], layer=-1)
    _, (beyond,) = encode(engine, "tiny-sdxl.safetensors", [PROMPT], layer=-24)
    out = result.outputs["ckpt"]
    embeds, _, pooled, _ = sdxl_pipe(out).encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert (default.embeds - embeds).abs().max() <= 1e-5 and (default.pooled - pooled).abs().max() <= 1e-5
    assert torch.equal(penultimate.embeds, default.embeds)  # ComfyUI's SDXL default is the penultimate layer
    with torch.no_grad():
        hidden = [enc(tok(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
                      .input_ids, output_hidden_states=True) for enc, tok in zip(out.CLIP.text_encoders,
                                                                                out.CLIP.tokenizers, strict=True)]
    assert torch.allclose(last.embeds, torch.cat([h.hidden_states[-1] for h in hidden], -1), atol=1e-6)
    assert torch.allclose(beyond.embeds, torch.cat([h.last_hidden_state for h in hidden], -1), atol=1e-6)
    assert torch.equal(last.pooled, default.pooled)  # the pooled projection always comes from the last layer


def test_textual_inversion_sd15_pt_matches_diffusers(engine, models_dir):
    _, (plain,) = encode(engine, "tiny-sd15.safetensors", [PROMPT])
    result, _ = encode(engine, "tiny-sd15.safetensors", [""])
    out = result.outputs["ckpt"]
    width = out.CLIP.text_encoders[0].get_input_embeddings().weight.shape[-1]
    vectors = torch.randn(3, width, generator=torch.Generator().manual_seed(5))
    folder = models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": vectors}, "name": "bearstyle", "step": 100}, folder / "bearstyle.pt")
    _, (ours, named) = encode(engine, "tiny-sd15.safetensors",
                              ["a polar embedding:bearstyle bear in the snow", "a polar embedding:bearstyle.pt bear"])
    pipe = sd15_pipe(out, copies=True)
    pipe.load_textual_inversion(str(folder / "bearstyle.pt"), token="<bearstyle>")
    expected = pipe.encode_prompt("a polar <bearstyle> bear in the snow", "cpu", 1, False)[0]
    assert (ours.embeds - expected).abs().max() <= 1e-5
    assert (ours.embeds - plain.embeds).abs().max() > 1e-3  # the embedding really changes the conditioning
    assert named.embeds.shape == ours.embeds.shape
    assert out.CLIP.tokenizers[0].__len__() == len(out.CLIP.tokenizers[0].get_vocab())  # ipgraph's untouched


def test_textual_inversion_sdxl_safetensors_matches_diffusers(engine, models_dir):
    result, _ = encode(engine, "tiny-sdxl.safetensors", [""])
    out = result.outputs["ckpt"]
    widths = [enc.get_input_embeddings().weight.shape[-1] for enc in out.CLIP.text_encoders]
    gen = torch.Generator().manual_seed(6)
    state = {"clip_l": torch.randn(2, widths[0], generator=gen), "clip_g": torch.randn(2, widths[1], generator=gen)}
    folder = models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file(state, str(folder / "xlstyle.safetensors"))
    _, (ours,) = encode(engine, "tiny-sdxl.safetensors", ["embedding:xlstyle, a polar bear"])
    pipe = sdxl_pipe(out)
    pipe.load_textual_inversion(state["clip_l"], token="<xl>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<xl>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    embeds, _, pooled, _ = pipe.encode_prompt("<xl>, a polar bear", device="cpu", do_classifier_free_guidance=False)
    assert (ours.embeds - embeds).abs().max() <= 1e-5 and (ours.pooled - pooled).abs().max() <= 1e-5


def test_embedding_errors_name_the_input(engine, models_dir):
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", id="ckpt", ckpt_name="tiny-sd15.safetensors")
    g.add("CLIPTextEncode", id="t", text="embedding:nosuchthing", clip=ck.CLIP)
    with pytest.raises(NodeFailed, match="text: no embedding named 'nosuchthing'"):
        engine.run(g, outputs=["t"])

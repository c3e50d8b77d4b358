"""ComfyUI's prompt semantics in CLIPTextEncode on the tiny checkpoints, and sampling with text of different lengths.

The expected values are computed here from the text encoders' own outputs on the token ids the rules give
(``nodes/diffusion/prompt.py``): ``z' = (z - z_empty) * w + z_empty`` at weighted positions, 77-token chunks
concatenated along the tokens, pooled from the first chunk. Sampling with a long positive and a short negative
is compared with the same run where the negative is made long explicitly (ConditioningConcat with itself).
"""

from __future__ import annotations

import pytest
import torch

from ipgraph.engine import Graph, NodeFailed
from tests.nodes.test_controlnet import CN15, cn_graph
from tests.nodes.test_oracle_combined import with_ip_adapter

pytestmark = pytest.mark.slow
VOCAB = ["red", "cat", "dog", "tree", "house", "blue", "sky", "sun"]


def words(n):
    return " ".join(VOCAB[i % len(VOCAB)] for i in range(n))


def encode(engine, ckpt, texts, node="CLIPTextEncode"):
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", id="ckpt", ckpt_name=ckpt)
    for i, text in enumerate(texts):
        if node == "CLIPTextEncode":
            g.add("CLIPTextEncode", id=f"t{i}", text=text, clip=ck.CLIP)
        else:
            g.add("CLIPTextEncodeSDXL", id=f"t{i}", clip=ck.CLIP, text_l=text[0], text_g=text[1])
    result = engine.run(g, outputs=["ckpt"] + [f"t{i}" for i in range(len(texts))])
    return result.outputs["ckpt"].CLIP, [result.outputs[f"t{i}"].CONDITIONING for i in range(len(texts))]


def padded(tokenizer, token_ids):
    ids = [tokenizer.bos_token_id] + token_ids + [tokenizer.eos_token_id]
    return torch.tensor([ids + [tokenizer.pad_token_id] * (77 - len(ids))])


@torch.no_grad()
def run_encoder(clip, index, ids):
    """(hidden, pooled) as CLIPTextEncode's layer choice: SD1.5 the last layer, SDXL the penultimate."""
    out = clip.text_encoders[index](ids, output_hidden_states=True)
    if len(clip.text_encoders) == 1:
        return out[0], None
    return out.hidden_states[-2], out[0] if out[0].ndim == 2 else None


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def weighted(z, z_empty, position_weights):
    z = z.clone()
    for j, w in position_weights.items():
        z[:, j] = (z[:, j] - z_empty[:, j]) * w + z_empty[:, j]
    return z


def test_weighted_prompt_is_the_empty_prompt_interpolation_sd15(engine):
    clip, (cat, plain, nested, default, escaped) = encode(
        engine, "tiny-sd15.safetensors", ["a (cat:1.5)", "a cat", "a ((cat)) sits", "a (cat) sits", r"a \(cat\)"])
    tok = clip.tokenizers[0]
    z, _ = run_encoder(clip, 0, padded(tok, ids_of(tok, "a cat")))
    z_empty, _ = run_encoder(clip, 0, padded(tok, []))
    assert torch.equal(plain.embeds, z)  # no weights: the plain encoding, the empty prompt plays no part
    assert torch.equal(cat.embeds, weighted(z, z_empty, {2: 1.5}))
    assert (cat.embeds[:, 2] - z[:, 2]).abs().max() > 1e-3 and torch.equal(cat.embeds[:, [0, 1, 3]], z[:, [0, 1, 3]])
    z, _ = run_encoder(clip, 0, padded(tok, ids_of(tok, "a cat sits")))
    assert torch.equal(nested.embeds, weighted(z, z_empty, {2: 1.1 * 1.1}))
    assert torch.equal(default.embeds, weighted(z, z_empty, {2: 1.1}))
    literal, _ = run_encoder(clip, 0, padded(tok, ids_of(tok, "a (cat)")))  # escaped parentheses are tokens
    assert torch.equal(escaped.embeds, literal)


def test_long_prompt_is_encoded_in_chunks_sd15(engine):
    text = words(150)
    clip, (long,) = encode(engine, "tiny-sd15.safetensors", [text])
    tok = clip.tokenizers[0]
    flat = ids_of(tok, text)
    assert len(flat) == 150 and long.embeds.shape[:2] == (1, 154)
    first, _ = run_encoder(clip, 0, padded(tok, flat[:75]))
    second, _ = run_encoder(clip, 0, padded(tok, flat[75:]))
    assert torch.equal(long.embeds, torch.cat([first, second], dim=1))


def test_embedding_in_weighted_text_gets_the_weight(engine, models_dir):
    clip, _ = encode(engine, "tiny-sd15.safetensors", [""])
    width = clip.text_encoders[0].get_input_embeddings().weight.shape[-1]
    folder = models_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(2, width, generator=torch.Generator().manual_seed(9))}},
               folder / "pwstyle.pt")
    _, (heavy, plain, empty) = encode(engine, "tiny-sd15.safetensors",
                                      ["a (embedding:pwstyle:1.4) bear", "a embedding:pwstyle bear", ""])
    assert torch.equal(heavy.embeds, weighted(plain.embeds, empty.embeds, {2: 1.4, 3: 1.4}))


def test_sdxl_both_encoders_weighted_and_long(engine):
    clip, (bear, long) = encode(engine, "tiny-sdxl.safetensors", ["a (bear:1.3)", words(100)])
    hidden, pooled = [], None
    for i, tok in enumerate(clip.tokenizers):
        z, p = run_encoder(clip, i, padded(tok, ids_of(tok, "a bear")))
        z_empty, _ = run_encoder(clip, i, padded(tok, []))  # clip_g's empty prompt is padded with id 0
        hidden.append(weighted(z, z_empty, {2: 1.3}))
        pooled = p if p is not None else pooled
    assert clip.tokenizers[1].pad_token_id == 0
    assert torch.equal(bear.embeds, torch.cat(hidden, dim=-1)) and torch.equal(bear.pooled, pooled)
    flat = ids_of(clip.tokenizers[0], words(100))
    chunks = []
    for i, tok in enumerate(clip.tokenizers):
        parts = [run_encoder(clip, i, padded(tok, flat[a:a + 75])) for a in (0, 75)]
        chunks.append(torch.cat([z for z, _ in parts], dim=1))
        if parts[0][1] is not None:
            assert torch.equal(long.pooled, parts[0][1])  # the first chunk's pooled projection
    assert long.embeds.shape[1] == 154 and torch.equal(long.embeds, torch.cat(chunks, dim=-1))


def test_clip_text_encode_sdxl_pads_the_shorter_text_with_empty_chunks(engine):
    clip, (mixed, long_l) = encode(engine, "tiny-sdxl.safetensors",
                                   [(words(100), "a bear"), (words(100), words(100))], node="CLIPTextEncodeSDXL")
    width_l = clip.text_encoders[0].config.hidden_size
    tok_g = clip.tokenizers[1]
    bear, pooled = run_encoder(clip, 1, padded(tok_g, ids_of(tok_g, "a bear")))
    empty, _ = run_encoder(clip, 1, padded(tok_g, []))
    assert mixed.embeds.shape[1] == 154
    assert torch.equal(mixed.embeds[..., :width_l], long_l.embeds[..., :width_l])  # clip_l: the long text
    assert torch.equal(mixed.embeds[..., width_l:], torch.cat([bear, empty], dim=1))  # clip_g: + an empty chunk
    assert torch.equal(mixed.pooled, pooled)


def sampled(engine, graph):
    return engine.run(graph, outputs=["ks"]).outputs["ks"].LATENT.samples


def long_negative(graph, copies):
    """The negative prompt concatenated with itself to ``copies`` times its tokens (ConditioningConcat)."""
    neg = graph.ref("neg").CONDITIONING
    for i in range(copies - 1):
        neg = graph.add("ConditioningConcat", id=f"negx{i}", conditioning_to=neg,
                        conditioning_from=graph.ref("neg").CONDITIONING).CONDITIONING
    graph.set("apply0", "negative", neg)
    return graph


def long_graph(positive_words):
    graph = with_ip_adapter(cn_graph(controls=((CN15, 0.8, 0.0, 1.0, "canny"),), steps=3))
    graph.set("pos", "text", words(positive_words))
    return graph


def test_ksampler_long_positive_short_negative_with_controlnet_and_ip_adapter(engine):
    """154 vs 77 tokens: one CFG batch, the negative repeated to 154 tokens (the LCM), bit for bit the run
    whose negative is the 77 tokens twice."""
    got = sampled(engine, long_graph(150))
    assert torch.equal(got, sampled(engine, long_negative(long_graph(150), 2)))
    short = long_graph(150)
    short.set("pos", "text", words(75))
    assert (got - sampled(engine, short)).abs().max() > 1e-4  # the second chunk acts


def test_ksampler_token_counts_too_far_apart_run_as_separate_calls(engine):
    """385 vs 77 tokens (LCM / 77 = 5 > 4): ComfyUI does not batch them; the result is the batched run with
    the negative repeated to 385 tokens, up to float rounding."""
    got = sampled(engine, long_graph(375))
    batched = sampled(engine, long_negative(long_graph(375), 5))
    assert (got - batched).abs().max() <= 2e-4


def test_unparenthesized_embedding_weight_is_a_name_with_a_hint(engine):
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", id="ckpt", ckpt_name="tiny-sd15.safetensors")
    g.add("CLIPTextEncode", id="t", text="a embedding:nosuch:1.2 bear", clip=ck.CLIP)
    with pytest.raises(NodeFailed, match=r"no embedding named 'nosuch:1\.2'.*write \(embedding:nosuch:1\.2\)"):
        engine.run(g, outputs=["t"])

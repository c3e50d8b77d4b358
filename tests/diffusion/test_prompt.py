"""ComfyUI's prompt syntax: the weight parser and the 77-token chunker, on the shipped CLIP tokenizer.

The expected values are worked out by hand from the rules of ComfyUI's ``comfy/sd1_clip.py`` (parse_parentheses,
token_weights, escape_important, SDTokenizer.tokenize_with_weights) as restated in ``nodes/diffusion/prompt.py``.
"""

from __future__ import annotations

import pytest
import torch

from ipgraph.nodes.diffusion.prompt import embedding_names, parse_weights, tokenize
from ipgraph.nodes.models.tokenizer import sdxl_tokenizers

BOS, EOS = 49406, 49407
TOK, TOK_G = sdxl_tokenizers()  # clip_l / SD1.5 pads with EOS, clip_g with id 0


@pytest.mark.parametrize(("text", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat:1.5)", [("a ", 1.0), ("cat", 1.5)]),
    ("(cat)", [("cat", 1.1)]),
    ("((cat))", [("cat", 1.1 * 1.1)]),
    ("(((cat)))", [("cat", 1.1 * 1.1 * 1.1)]),
    ("((cat:1.5))", [("cat", 1.5)]),  # an inner explicit weight replaces the outer emphasis
    ("(a (b:1.2) c:0.5)", [("a ", 0.5), ("b", 1.2), (" c", 0.5)]),
    ("(a:1.5:2)", [("a:1.5", 2.0)]),  # the number after the last colon
    ("(a: 0.7 )", [("a", 0.7)]),
    ("(a:b)", [("a:b", 1.1)]),  # not a number: the colon stays text
    ("(:1.5)", [(":1.5", 1.1)]),  # a colon at the start is not a weight separator
    ("()", []),
    ("x () y", [("x ", 1.0), (" y", 1.0)]),
    (r"\(cat\)", [("(cat)", 1.0)]),
    (r"(a \(b\):1.3)", [(r"a (b)", 1.3)]),
    ("(a b", [("(a b", 1.0)]),  # unclosed: kept as text with its parenthesis
    ("((a)", [("(a", 1.1)]),
    ("(a)) b", [("a", 1.1), (") b", 1.0)]),
    ("a) (b)", [("a) (b)", 1.0)]),  # a stray ")" takes the depth below zero: no group closes
    ("a) ((b))", [("a) (", 1.0), ("b", 1.1), (")", 1.0)]),  # back at depth zero, "(" opens again
    ("(embedding:foo:1.2) cat", [("embedding:foo", 1.2), (" cat", 1.0)]),
])
def test_parse_weights(text, expected):
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=0, rel=1e-15)


def test_nesting_multiplies_exactly_as_floats_do():
    assert parse_weights("((a))")[0][1] == 1.0 * 1.1 * 1.1


def test_embedding_names_follow_the_parsed_segments():
    assert embedding_names("embedding:one, (embedding:two:1.3) (embedding:three) x") == ["one", "two", "three"]


def ids(text):
    return TOK(text, add_special_tokens=False).input_ids


def no_vectors(name):
    raise AssertionError(name)


def words(n):
    """A prompt of ``n`` one-token words."""
    vocab = ["red", "cat", "dog", "tree", "house", "blue", "sky", "sun"]
    text = " ".join(vocab[i % len(vocab)] for i in range(n))
    assert len(ids(text)) == n
    return text


def test_plain_prompt_is_the_diffusers_tokenization():
    text = "a polar bear, in the snow; photo\nof a: cat"
    (chunk,) = tokenize(TOK, text, no_vectors)
    expected = TOK(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert chunk.ids == expected and chunk.weights == [1.0] * 77 and not chunk.weighted
    (g,) = tokenize(TOK_G, text, no_vectors)
    assert g.ids == TOK_G(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert g.ids[-1] == 0  # clip_g pads with id 0


def test_weighted_tokens_and_positions():
    (chunk,) = tokenize(TOK, "a (cat:1.5) ((sitting))", no_vectors)
    assert chunk.ids[:6] == [BOS] + ids("a") + ids("cat") + ids("sitting") + [EOS, EOS]
    assert chunk.weights[:5] == [1.0, 1.0, 1.5, 1.1 * 1.1, 1.0] and chunk.weighted


def test_empty_prompt():
    (chunk,) = tokenize(TOK, "", no_vectors)
    assert chunk.ids == [BOS, EOS] + [EOS] * 75
    (g,) = tokenize(TOK_G, "()", no_vectors)
    assert g.ids == [BOS, EOS] + [0] * 75


@pytest.mark.parametrize(("n", "chunks"), [(75, 1), (76, 2), (150, 2), (151, 3)])
def test_long_prompt_chunks(n, chunks):
    text = words(n)
    got = tokenize(TOK, text, no_vectors)
    assert len(got) == chunks and all(len(c.ids) == 77 for c in got)
    flat = ids(text)
    for k, chunk in enumerate(got):  # one long segment is split every 75 tokens
        part = flat[75 * k:75 * (k + 1)]
        assert chunk.ids == [BOS] + part + [EOS] + [EOS] * (75 - len(part))


def test_a_short_group_that_does_not_fit_moves_whole():
    head = words(73)
    tail = "bright yellow morning light"  # its own weighted segment, fewer than 8 tokens
    assert len(ids(tail)) < 8
    first, second = tokenize(TOK, f"{head} ({tail}:1.2)", no_vectors)
    assert first.ids == [BOS] + ids(head) + [EOS, EOS, EOS]  # closed early, padded
    assert second.ids[:len(ids(tail)) + 2] == [BOS] + ids(tail) + [EOS]
    assert second.weights[1:1 + len(ids(tail))] == [1.2] * len(ids(tail))


def test_a_long_group_is_split_at_the_chunk_end():
    head = words(73)
    tail = words(10)
    first, second = tokenize(TOK, f"{head} ({tail}:1.2)", no_vectors)
    assert first.ids == [BOS] + ids(head) + ids(tail)[:2] + [EOS]
    assert second.ids[:10] == [BOS] + ids(tail)[2:] + [EOS]
    assert first.weights[74:76] == [1.2, 1.2] and first.weights[76] == 1.0


def test_embedding_vectors_take_positions_and_weights():
    vecs = torch.arange(3 * 4, dtype=torch.float32).view(3, 4)
    (chunk,) = tokenize(TOK, "a (embedding:style:1.3) cat", lambda name: {"style": vecs}[name])
    assert chunk.ids[:7] == [BOS] + ids("a") + [0, 0, 0] + ids("cat") + [EOS]
    assert sorted(chunk.vectors) == [2, 3, 4] and torch.equal(chunk.vectors[3], vecs[1])
    assert chunk.weights[:6] == [1.0, 1.0, 1.3, 1.3, 1.3, 1.0]


def test_cfg_batch_token_count_is_comfyuis_lcm_rule():
    from ipgraph.nodes.diffusion.guidance import batch_tokens

    assert batch_tokens([77, 77]) == 77
    assert batch_tokens([154, 77]) == 154
    assert batch_tokens([231, 154]) == 462  # 6 chunks: 462 / 154 = 3, batched
    assert batch_tokens([308, 77]) == 308  # 4 times: still batched
    assert batch_tokens([385, 77]) is None  # 5 times the shorter: the sides run apart
    assert batch_tokens([385, 308]) is None  # LCM 1540 = 5 * 308

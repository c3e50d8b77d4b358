"""The CLIP tokenizer, rebuilt offline from the BPE vocabulary shipped in ``data/``.

Single-file checkpoints carry no tokenizer and nothing may be fetched from a hub, so the vocabulary
(OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, MIT, see ``data/LICENSE-clip-bpe.txt``) ships with the project
and the transformers ``CLIPTokenizer`` is built in memory the way CLIP builds its own vocabulary.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

BPE_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (the base alphabet of the BPE vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@cache
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and merge list exactly as CLIP orders them: ids match OpenAI's tokenizer."""
    lines = gzip.open(BPE_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIP tokenizer (77 tokens). SD1.5 and SDXL's first encoder pad with ``<|endoftext|>``;
    SDXL's OpenCLIP bigG encoder (tokenizer_2) pads with ``!`` (id 0), as the real SDXL files configure it.

    Cached and shared: callers must not modify it.
    """
    return _build(pad_token)


@cache
def _build(pad_token: str) -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=MAX_LENGTH
    )


def sd15_tokenizer() -> CLIPTokenizer:
    return clip_tokenizer(EOS)


def sdxl_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """(tokenizer, tokenizer_2) of SDXL: same vocabulary, different padding token."""
    return clip_tokenizer(EOS), clip_tokenizer("!")

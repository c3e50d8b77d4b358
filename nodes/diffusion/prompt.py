"""ComfyUI's prompt syntax for CLIP text encoders: emphasis weights, long prompts, embeddings.

What CLIPTextEncode does with a prompt, as ComfyUI's ``comfy/sd1_clip.py`` does it (its default weight
interpretation, "comfy"):

1. **Weights.** ``(text)`` multiplies the weight of ``text`` by 1.1; ``(text:1.3)`` sets it to 1.3 (the number
   after the LAST ``:``; ``(a:b)`` with a non-number keeps ``a:b`` as text, weighted 1.1); nesting multiplies
   (``((a))`` = 1.1 * 1.1) and an inner explicit weight replaces the outer one. ``\\(`` and ``\\)`` are literal
   parentheses. Unbalanced parentheses stay text, as ComfyUI's scanner leaves them: an unclosed ``(`` is kept
   with the text after it; a ``)`` with no ``(`` open takes the depth below zero, and a ``(`` counts as an
   opening again only where the depth is back at zero (``a) (b)`` is all text, ``a) ((b))`` weights ``b`` by
   1.1 and leaves ``a) (`` and ``)`` as text). ``()`` adds nothing.
2. **Tokens.** Each weighted segment is tokenized on its own (ComfyUI tokenizes a segment as one piece, cut
   at ``embedding:NAME`` words), without start/end tokens; an embedding contributes one token per vector,
   weighted like its segment. Newlines are whitespace to the CLIP tokenizer.
3. **Chunks.** The token groups (one per text piece or embedding) are packed into chunks of 75 tokens; each
   chunk is ``start + tokens + end`` padded to 77 with the tokenizer's pad token (SD1.5 / clip_l: the end
   token, SDXL's clip_g: id 0). A group shorter than 8 tokens that does not fit moves whole to the next
   chunk (the current one is closed and padded); a longer group fills the chunk and continues in the next.
   A prompt of ``n`` tokens in one segment gives ``ceil(n / 75)`` chunks (at least one).
4. **Encoding.** Each chunk is encoded on its own (the same encoder call diffusers makes for one 77-token
   prompt), the chunks' hidden states are concatenated along the tokens: ``[1, 77 * k, D]``. The pooled
   output is the first chunk's.
5. **Weighting.** Where any token of the prompt has a weight ``w != 1``, the empty prompt (start, end, padding
   to 77) is encoded too, giving ``z_empty [77, D]``, and every token ``j`` of chunk ``c`` with ``w != 1``
   becomes ``z'[c, j] = (z[c, j] - z_empty[j]) * w + z_empty[j]`` (computed in float32); tokens of weight
   1 (start, end, padding included) keep their hidden state. Without weights the empty prompt is not encoded.

SDXL: each encoder tokenizes and weights its own text (clip_l pads with the end token, clip_g with 0); the two
are cut to the shorter token count and concatenated along the features. CLIPTextEncodeSDXL first pads the
encoder with fewer chunks with chunks of the empty prompt, as ComfyUI's node does.

A prompt without parentheses and within 75 tokens gives exactly the token ids of diffusers' tokenizer call,
so its conditioning is bit-identical to ``encode_prompt``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .embeddings import EmbeddingRef, split_prompt

EMPHASIS = 1.1  # the factor of one pair of parentheses
LONG_GROUP = 8  # ComfyUI's max_word_length: groups at least this long may be split across chunks
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def _escape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(literal, placeholder)
    return text


def _unescape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(placeholder, literal[-1])
    return text


def _top_level(text: str) -> list[str]:
    """Split into pieces at the outermost parentheses: ``"a (b) c"`` -> ``["a ", "(b)", " c"]``.

    A depth counter: ``(`` at depth 0 starts a new piece; ``)`` that brings the depth back to 0 ends it.
    A ``)`` at depth 0 drives it negative, after which no piece boundary is found again (ComfyUI's scanner).
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                pieces.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _top_level(text):
        if len(piece) < 2 or not (piece.startswith("(") and piece.endswith(")")):
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1:])
            except ValueError:
                pass
            else:
                inner = inner[:colon]
        out.extend(_weighted(inner, inner_weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``[(segment, weight), ...]`` of a prompt, escapes resolved (``"a (b:1.5)"`` -> ``[("a ", 1.0), ("b", 1.5)]``)."""
    return [(_unescape(segment), weight) for segment, weight in _weighted(_escape(text), 1.0)]


def embedding_names(text: str) -> list[str]:
    """The ``embedding:NAME`` references of a prompt, in order (parentheses and weights parsed first)."""
    return [part.name for segment, _ in parse_weights(text) for part in split_prompt(segment)
            if isinstance(part, EmbeddingRef)]


@dataclass
class Chunk:
    """One 77-token encoder input: ids (embedding positions hold 0), the weight of each position, and the
    embedding vectors by position."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)

    def add(self, token, weight: float) -> None:
        if isinstance(token, torch.Tensor):
            self.vectors[len(self.ids)] = token
            token = 0  # any ordinary id: the embedding output is replaced at this position
        self.ids.append(int(token))
        self.weights.append(float(weight))

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def token_groups(tokenizer, text: str, vectors) -> list[list[tuple[object, float]]]:
    """``[[(id or vector, weight), ...], ...]``: one group per text piece or embedding, in prompt order.

    ``vectors(name)`` gives an embedding's vectors ``[n, D]`` for this encoder.
    """
    groups = []
    for segment, weight in parse_weights(text):
        for part in split_prompt(segment):
            if isinstance(part, EmbeddingRef):
                groups.append([(vec, weight) for vec in vectors(part.name)])
            else:
                ids = tokenizer(part, add_special_tokens=False, verbose=False).input_ids
                if ids:
                    groups.append([(i, weight) for i in ids])
    return groups


def chunk_groups(groups, start: int, end: int, pad: int, length: int = 77) -> list[Chunk]:
    """Pack token groups into chunks of ``length`` (start + up to length - 2 tokens + end + padding)."""
    chunks: list[Chunk] = []
    last = length - 1  # positions before the end token, the start token included

    def opened() -> Chunk:
        chunk = Chunk()
        chunk.add(start, 1.0)
        chunks.append(chunk)
        return chunk

    def close(chunk: Chunk) -> None:
        chunk.add(end, 1.0)
        while len(chunk.ids) < length:
            chunk.add(pad, 1.0)

    chunk = opened()
    for group in groups:
        split = len(group) >= LONG_GROUP
        while group:
            room = last - len(chunk.ids)
            if len(group) <= room:
                for token, weight in group:
                    chunk.add(token, weight)
                break
            if split:
                for token, weight in group[:room]:
                    chunk.add(token, weight)
                group = group[room:]
            close(chunk)
            chunk = opened()
    close(chunk)
    return chunks


def empty_chunk(tokenizer) -> Chunk:
    """The empty prompt: start, end, padding."""
    return chunk_groups([], tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.model_max_length)[0]


def tokenize(tokenizer, text: str, vectors) -> list[Chunk]:
    """The chunks of a prompt for one encoder (see the module docstring)."""
    return chunk_groups(token_groups(tokenizer, text, vectors), tokenizer.bos_token_id, tokenizer.eos_token_id,
                        tokenizer.pad_token_id, tokenizer.model_max_length)


def apply_weights(z: torch.Tensor, z_empty: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """``(z - z_empty) * w + z_empty`` at the positions whose weight is not 1 (z, z_empty ``[1, T, D]``)."""
    out = z.float().clone()
    empty = z_empty.float()
    for j, w in enumerate(weights):
        if w != 1.0:
            out[:, j] = (out[:, j] - empty[:, j]) * w + empty[:, j]
    return out.to(z.dtype)

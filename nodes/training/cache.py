"""Image embeddings computed once per dataset and encoder, kept on disk for every later run.

The encoder is frozen, and its input for an image is fixed (``CLIPImageProcessor``: no random crop), so its
output is a pure function of (encoder weights, image file, variant input). Caching it is exact: the training
step reads the same tensor the reference computes each step. Dropped images use the "null" embedding the
reference uses: zeros for base (``image_embeds`` zeroed), and for plus the penultimate hidden states of an
all-zero pixel tensor (the reference zeroes the preprocessed pixels before encoding).

The cache file is keyed by a hash of the encoder file's fingerprint, the input kind, and every image's path,
size and mtime, so a changed image or encoder makes a new file instead of stale embeddings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..core.runtime import file_fingerprint
from .data import Record, clip_processor, open_rgb
from .files import write_atomic

INPUTS = {"base": "image_embeds", "plus": "hidden_states"}


def encode_pixels(encoder, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B,3,S,S]`` CLIP pixels -> ``image_embeds [B,E]`` or penultimate hidden states ``[B,T,W]``."""
    p = next(encoder.parameters())
    with torch.no_grad():
        pixels = pixels.to(device=p.device, dtype=p.dtype)
        if kind == "image_embeds":
            return encoder(pixels).image_embeds
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]


def null_embed(encoder, kind: str) -> torch.Tensor:
    """The embedding a dropped image gets (see module docstring), without a batch dimension."""
    size = int(encoder.config.image_size)
    zeros = torch.zeros(1, 3, size, size)
    if kind == "image_embeds":
        return torch.zeros_like(encode_pixels(encoder, zeros, kind))[0]
    return encode_pixels(encoder, zeros, kind)[0]


def cache_key(records: list[Record], encoder_source: str | Path | None, kind: str, dtype: torch.dtype) -> str:
    h = hashlib.sha256()
    enc = Path(encoder_source) if encoder_source else None
    h.update((file_fingerprint(enc) if enc and enc.exists() else str(encoder_source)).encode())
    h.update(f"|{kind}|{dtype}|".encode())
    for r in records:
        h.update(f"{file_fingerprint(r.path)}\n".encode())
    return h.hexdigest()[:24]


def image_embeddings(records: list[Record], encoder, kind: str, cache_dir: Path | None = None,
                     encoder_source: str | Path | None = None, batch_size: int = 16,
                     progress=None) -> tuple[torch.Tensor, torch.Tensor, Path | None, bool]:
    """(embeds ``[N, ...]`` CPU float32, null embed, cache file or None, whether it came from the cache)."""
    from safetensors.torch import load_file, save

    dtype = next(encoder.parameters()).dtype
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-{cache_key(records, encoder_source, kind, dtype)}.safetensors"
        if path.is_file():
            got = load_file(str(path))
            if got["embeds"].shape[0] == len(records):
                return got["embeds"], got["null"], path, True
    processor = clip_processor(int(encoder.config.image_size))
    chunks = []
    for start in range(0, len(records), batch_size):
        images = [open_rgb(r.path) for r in records[start:start + batch_size]]
        pixels = processor(images=images, return_tensors="pt").pixel_values
        chunks.append(encode_pixels(encoder, pixels, kind).float().cpu())
        if progress:
            progress(min(start + batch_size, len(records)), len(records))
    embeds = torch.cat(chunks)
    null = null_embed(encoder, kind).float().cpu()
    if path is not None:
        write_atomic(path, save({"embeds": embeds.contiguous(), "null": null.contiguous()}))
    return embeds, null, path, False

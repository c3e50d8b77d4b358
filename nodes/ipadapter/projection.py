"""Image-projection models of the h94 IP-Adapter files, built from diffusers' own modules.

Why diffusers' modules: diffusers is the numerical oracle of this project, so running the very same
``ImageProjection`` / ``IPAdapterPlusImageProjection`` / ``IPAdapterFullImageProjection`` classes makes the
projected image tokens identical to the oracle's, not merely close. The h94 files use the original
tencent-ailab key names, so this module owns the (reversible) key renaming between the two layouts:

=====================  ==========================================  ============================
variant                h94 ``image_proj.*`` keys                   diffusers module keys
=====================  ==========================================  ============================
base / light           ``proj``, ``norm``                          ``image_embeds``, ``norm``
plus / plus-face       ``latents``, ``proj_in``, ``proj_out``,     same names, and per layer i:
                       ``norm_out``, ``layers.i.0.norm1/norm2``    ``layers.i.ln0/ln1``
                       ``layers.i.0.to_q``, ``layers.i.0.to_kv``   ``layers.i.attn.to_q``, ``to_k`` + ``to_v``
                       ``layers.i.0.to_out``                       ``layers.i.attn.to_out.0``
                       ``layers.i.1.0/1/3``                        ``layers.i.ff.0``, ``ff.1.net.0.proj``, ``ff.1.net.2``
full-face              ``proj.0``, ``proj.2``, ``proj.3``          ``ff.net.0.proj``, ``ff.net.2``, ``norm``
=====================  ==========================================  ============================

``to_kv`` is one matrix in h94 files (K rows first, then V) and two in diffusers.
"""

from __future__ import annotations

import re

import torch
from diffusers.models.embeddings import (
    ImageProjection,
    IPAdapterFullImageProjection,
    IPAdapterPlusImageProjection,
)

PERCEIVER_HEAD_DIM = 64  # fixed in every h94 plus file (tencent-ailab Resampler dim_head=64)

_PLUS_RULES = [  # (h94 regex, diffusers replacement) for one-to-one keys of the Perceiver resampler
    (r"^layers\.(\d+)\.0\.norm1\.", r"layers.\1.ln0."),
    (r"^layers\.(\d+)\.0\.norm2\.", r"layers.\1.ln1."),
    (r"^layers\.(\d+)\.0\.to_q\.", r"layers.\1.attn.to_q."),
    (r"^layers\.(\d+)\.0\.to_out\.", r"layers.\1.attn.to_out.0."),
    (r"^layers\.(\d+)\.1\.0\.", r"layers.\1.ff.0."),
    (r"^layers\.(\d+)\.1\.1\.", r"layers.\1.ff.1.net.0.proj."),
    (r"^layers\.(\d+)\.1\.3\.", r"layers.\1.ff.1.net.2."),
]
_FULL_RULES = [(r"^proj\.0\.", "ff.net.0.proj."), (r"^proj\.2\.", "ff.net.2."), (r"^proj\.3\.", "norm.")]
_BASE_RULES = [(r"^proj\.", "image_embeds.")]
_PLUS_INVERSE = [
    (r"^layers\.(\d+)\.ln0\.", r"layers.\1.0.norm1."),
    (r"^layers\.(\d+)\.ln1\.", r"layers.\1.0.norm2."),
    (r"^layers\.(\d+)\.attn\.to_q\.", r"layers.\1.0.to_q."),
    (r"^layers\.(\d+)\.attn\.to_out\.0\.", r"layers.\1.0.to_out."),
    (r"^layers\.(\d+)\.ff\.0\.", r"layers.\1.1.0."),
    (r"^layers\.(\d+)\.ff\.1\.net\.0\.proj\.", r"layers.\1.1.1."),
    (r"^layers\.(\d+)\.ff\.1\.net\.2\.", r"layers.\1.1.3."),
]
_FULL_INVERSE = [(r"^ff\.net\.0\.proj\.", "proj.0."), (r"^ff\.net\.2\.", "proj.2."), (r"^norm\.", "proj.3.")]
_BASE_INVERSE = [(r"^image_embeds\.", "proj.")]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def h94_to_diffusers(variant: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an h94 ``image_proj`` state dict to the diffusers module's names (splitting ``to_kv``)."""
    out: dict[str, torch.Tensor] = {}
    if variant in ("plus", "plus-face"):
        for key, value in sd.items():
            m = re.match(r"^layers\.(\d+)\.0\.to_kv\.weight$", key)
            if m:
                k, v = value.chunk(2, dim=0)
                out[f"layers.{m.group(1)}.attn.to_k.weight"] = k
                out[f"layers.{m.group(1)}.attn.to_v.weight"] = v
            else:
                out[_rename(key, _PLUS_RULES)] = value
        return out
    rules = _FULL_RULES if variant == "full-face" else _BASE_RULES
    return {_rename(key, rules): value for key, value in sd.items()}


def diffusers_to_h94(variant: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`h94_to_diffusers`, used to write files in the real h94 layout."""
    if variant in ("plus", "plus-face"):
        out: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            m = re.match(r"^layers\.(\d+)\.attn\.to_([kv])\.weight$", key)
            if m:
                if m.group(2) == "k":
                    v = sd[f"layers.{m.group(1)}.attn.to_v.weight"]
                    out[f"layers.{m.group(1)}.0.to_kv.weight"] = torch.cat([value, v], 0)
                continue
            out[_rename(key, _PLUS_INVERSE)] = value
        return out
    rules = _FULL_INVERSE if variant == "full-face" else _BASE_INVERSE
    return {_rename(key, rules): value for key, value in sd.items()}


def build_image_proj(variant: str, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the projection module for an h94 ``image_proj`` state dict and load it strictly.

    Sizes come from the tensor shapes (as diffusers does), so any width works, tiny ones included.
    Raises ``ValueError``/``RuntimeError`` on inconsistent shapes; files.py turns them into plain sentences.
    """
    from ..models.tensorfile import assign, empty_module

    if variant in ("base", "light"):
        rows, embed_dim = sd["proj.weight"].shape
        dim = sd["norm.weight"].shape[0]
        make = lambda: ImageProjection(  # noqa: E731
            cross_attention_dim=dim, image_embed_dim=embed_dim, num_image_text_embeds=rows // dim
        )
    elif variant == "full-face":
        make = lambda: IPAdapterFullImageProjection(  # noqa: E731
            cross_attention_dim=sd["proj.3.weight"].shape[0], image_embed_dim=sd["proj.0.weight"].shape[1]
        )
    elif variant in ("plus", "plus-face"):
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        make = lambda: IPAdapterPlusImageProjection(  # noqa: E731
            embed_dims=sd["proj_in.weight"].shape[1],
            output_dims=sd["proj_out.weight"].shape[0],
            hidden_dims=sd["latents"].shape[2],
            depth=depth,
            dim_head=PERCEIVER_HEAD_DIM,
            heads=sd["layers.0.0.to_q.weight"].shape[0] // PERCEIVER_HEAD_DIM,
            num_queries=sd["latents"].shape[1],
            ffn_ratio=sd["layers.0.1.1.weight"].shape[0] // sd["latents"].shape[2],
        )
    else:
        raise ValueError(f"unknown IP-Adapter variant {variant!r}")
    # built with empty weights that take the file's tensors (no random init, no second copy)
    return assign(empty_module(make), h94_to_diffusers(variant, sd))

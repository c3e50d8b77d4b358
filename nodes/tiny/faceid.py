"""Tiny FaceID IP-Adapter files in the h94 layouts, named so that the pack's preset patterns find them.

* ``ipadapter/tiny-ip-adapter-faceid_sd15.bin`` / ``..._sdxl.bin``: MLPProjModelFaceId (4 tokens) + K/V +
  LoRA weights in ``ip_adapter`` (``{i}.to_q_lora.down.weight`` ...), nested ``torch.save`` dict as h94 ships.
* ``ipadapter/tiny-ip-adapter-faceid-plusv2_sd15.bin``: ProjModelFaceIdPlus (perceiver over the tiny CLIP
  vision's penultimate states, width 64) + K/V + LoRA.
* ``ipadapter/tiny-ip-adapter-faceid-portrait-v11_sd15.safetensors`` / ``..._portrait_sdxl``: 16 tokens, no LoRA
  (flat keys).
* ``embeds/tiny-face.npy``: one face embedding as the reference code saves it (``np.save`` of a normed [512]).
* ``loras/tiny-ip-adapter-faceid_sd15_lora.safetensors`` / ``...plusv2_sd15_lora``: the same LoRA weights
  as the .bin files, in kohya layout (``lora_unet_...``, the separate files ComfyUI users load).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..lora.files import flat
from .common import atomic_write

GENERATOR_VERSION = 1
ID = 512
RANK = 4


def _lin(g, out, inp, scale=1.0):
    return torch.randn(out, inp, generator=g) * scale / inp ** 0.5


def _norm(g, n):
    return 1.0 + 0.1 * torch.randn(n, generator=g), 0.1 * torch.randn(n, generator=g)


def _proj_faceid(g, dim, tokens):
    w, b = _norm(g, dim)
    return {"proj.0.weight": _lin(g, 2 * ID, ID), "proj.0.bias": 0.1 * torch.randn(2 * ID, generator=g),
            "proj.2.weight": _lin(g, dim * tokens, 2 * ID), "proj.2.bias": 0.1 * torch.randn(dim * tokens, generator=g),
            "norm.weight": w, "norm.bias": b}


def _proj_plus(g, dim, clip_width=64, heads=1, depth=4):
    sd = _proj_faceid(g, dim, 4)
    pr = "perceiver_resampler."
    sd[pr + "proj_in.weight"], sd[pr + "proj_in.bias"] = _lin(g, dim, clip_width), 0.1 * torch.randn(dim, generator=g)
    sd[pr + "proj_out.weight"], sd[pr + "proj_out.bias"] = _lin(g, dim, dim), 0.1 * torch.randn(dim, generator=g)
    sd[pr + "norm_out.weight"], sd[pr + "norm_out.bias"] = _norm(g, dim)
    inner = 64 * heads
    for i in range(depth):
        p = f"{pr}layers.{i}."
        sd[p + "0.norm1.weight"], sd[p + "0.norm1.bias"] = _norm(g, dim)
        sd[p + "0.norm2.weight"], sd[p + "0.norm2.bias"] = _norm(g, dim)
        sd[p + "0.to_q.weight"], sd[p + "0.to_kv.weight"] = _lin(g, inner, dim), _lin(g, 2 * inner, dim)
        sd[p + "0.to_out.weight"] = _lin(g, dim, inner)
        sd[p + "1.0.weight"], sd[p + "1.0.bias"] = _norm(g, dim)
        sd[p + "1.1.weight"], sd[p + "1.3.weight"] = _lin(g, 4 * dim, dim), _lin(g, dim, 4 * dim)
    return sd


def _ip_layers(g, unet, lora: bool) -> tuple[dict, dict]:
    """(ip_adapter dict, the same LoRA as kohya tensors)."""
    ip, kohya = {}, {}
    dim = unet.config.cross_attention_dim
    for i, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        if name.endswith("attn2.processor"):
            width = attn.to_k.out_features
            ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = _lin(g, width, dim), _lin(g, width, dim)
        if not lora:
            continue
        base = name[: -len(".processor")]
        for part, module in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            down, up = _lin(g, RANK, module.in_features), _lin(g, module.out_features, RANK, 0.3)
            ip[f"{i}.to_{part}_lora.down.weight"], ip[f"{i}.to_{part}_lora.up.weight"] = down, up
            key = "lora_unet_" + flat(f"{base}.{'to_out.0' if part == 'out' else 'to_' + part}")
            kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = down, up
            kohya[f"{key}.alpha"] = torch.tensor(float(RANK))
    return ip, kohya


def write_tiny_faceid(models_dir: Path, unets: dict) -> dict[str, Path]:
    """Write the tiny FaceID adapters (and their separate LoRA files); ``unets`` maps sd15/sdxl to UNets."""
    models_dir = Path(models_dir)
    specs = [  # (file, arch, kind, seed)
        ("tiny-ip-adapter-faceid_sd15.bin", "sd15", "faceid", 300),
        ("tiny-ip-adapter-faceid_sdxl.bin", "sdxl", "faceid", 301),
        ("tiny-ip-adapter-faceid-plusv2_sd15.bin", "sd15", "plus", 302),
        ("tiny-ip-adapter-faceid-portrait-v11_sd15.safetensors", "sd15", "portrait", 303),
        ("tiny-ip-adapter-faceid-portrait_sdxl.safetensors", "sdxl", "portrait", 304),
    ]
    out = {}
    for name, arch, kind, seed in specs:
        dest = models_dir / "ipadapter" / name
        stamp = dest.with_name(f".{name}.v{GENERATOR_VERSION}")
        out[name] = dest
        lora_dest = models_dir / "loras" / name.replace(".bin", "_lora.safetensors")
        if kind != "portrait":  # portrait adapters come without a LoRA
            out[lora_dest.name] = lora_dest
        if dest.exists() and stamp.exists():
            continue
        unet = unets[arch]
        g = torch.Generator().manual_seed(seed)
        dim = unet.config.cross_attention_dim
        proj = _proj_plus(g, dim) if kind == "plus" else _proj_faceid(g, dim, 16 if kind == "portrait" else 4)
        ip, kohya = _ip_layers(g, unet, lora=kind != "portrait")
        if name.endswith(".bin"):
            state = {"image_proj": proj, "ip_adapter": ip}
            atomic_write(dest, lambda tmp, s=state: torch.save(s, str(tmp)))
        else:
            flat_sd = {f"image_proj.{k}": v for k, v in proj.items()} | {f"ip_adapter.{k}": v for k, v in ip.items()}
            atomic_write(dest, lambda tmp, s=flat_sd: save_file(s, str(tmp)))
        if kohya:
            atomic_write(lora_dest, lambda tmp, s=kohya: save_file(s, str(tmp)))
        stamp.touch()
    face = models_dir / "embeds" / "tiny-face.npy"
    if not face.exists():
        import numpy as np

        e = torch.randn(ID, generator=torch.Generator().manual_seed(305))
        atomic_write(face, lambda tmp: np.save(open(tmp, "wb"), (e / e.norm()).numpy()))
    out[face.name] = face
    return out

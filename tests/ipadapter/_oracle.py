"""diffusers-side helpers: load h94 state dicts into a UNet copy with diffusers' own loader and run it."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers.loaders.ip_adapter import IPAdapterMixin
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from safetensors.torch import load_file


def h94_state(path) -> dict:
    flat = load_file(str(path))
    out = {"image_proj": {}, "ip_adapter": {}}
    for k, v in flat.items():
        part, rest = k.split(".", 1)
        out[part][rest] = v
    return out


def load_into(unet, states: list[dict]):
    """diffusers' _load_ip_adapter_weights (low_cpu_mem_usage=False so missing keys raise)."""
    unet._load_ip_adapter_weights(states, low_cpu_mem_usage=False)
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            assert isinstance(proc, IPAdapterAttnProcessor2_0)
    return unet


def set_scale(unet, scale):
    """diffusers' own IPAdapterMixin.set_ip_adapter_scale (float, list per adapter, or InstantStyle dict)."""
    IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=unet), scale)


def sdxl_added(batch: int) -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "text_embeds": torch.randn(batch, 32, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
    }

"""Our decoupled processors vs diffusers' own IP-Adapter machinery at the UNet level (max abs diff <= 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from ipgraph.nodes.core.types import SamplingState
from ipgraph.nodes.ipadapter import IPAdapterPatch, installed, instantstyle_weights, load_ipadapter

from ._oracle import h94_state, load_into, sdxl_added, set_scale

TOL = 1e-4
H, W = 16, 24  # latent (non-square, so the mask grid's aspect handling is exercised)


def _inputs(arch, unet, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2 * batch, 4, H, W, generator=g)
    text = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, generator=g)
    added = sdxl_added(2 * batch) if arch == "sdxl" else None
    return latents, text, added


def _embeds(adapter, n_img, seed):
    """Raw CLIP-like embeds for n reference images and the diffusers-style negatives."""
    g = torch.Generator().manual_seed(seed)
    if adapter.info.encoder_input == "image_embeds":
        cond = torch.randn(n_img, adapter.info.encoder_width, generator=g)
        return cond, torch.zeros_like(cond)
    cond = torch.randn(n_img, 50, adapter.info.encoder_width, generator=g)
    return cond, torch.randn(1, 50, adapter.info.encoder_width, generator=g).expand(n_img, -1, -1)


def _diffusers_embeds(cond, uncond, batch):
    """Per adapter [2B, n_img, ...], negative half first (prepare_ip_adapter_image_embeds layout)."""
    return torch.cat([uncond[None].expand(batch, *uncond.shape), cond[None].expand(batch, *cond.shape)], 0)


def _run_oracle(arch, fresh_unet, paths, embeds, scale, latents, text, added, masks=None):
    unet = load_into(fresh_unet(arch), [h94_state(p) for p in paths])
    set_scale(unet, scale)
    kwargs = {"ip_adapter_masks": masks} if masks is not None else None
    added_cond = dict(added or {}, image_embeds=embeds)
    with torch.no_grad():
        return unet(
            latents,
            500,
            encoder_hidden_states=text,
            added_cond_kwargs=added_cond,
            cross_attention_kwargs=kwargs,
        ).sample


def _run_ours(unet, patches, latents, text, added, batch=1):
    state = SamplingState(step=0, total_steps=1, latent_hw=(H, W), do_cfg=True, batch_size=batch)
    with torch.no_grad(), installed(unet, patches, state):
        return unet(latents, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample


@pytest.mark.parametrize(
    "arch, variant", [("sd15", "base"), ("sd15", "plus"), ("sdxl", "base"), ("sdxl", "plus")]
)
def test_single_adapter_matches_diffusers(arch, variant, unets, fresh_unet, models_dir):
    _, paths = models_dir
    path = paths[f"{variant}_{arch}"]
    unet = unets[arch]
    adapter = load_ipadapter(path)
    batch = 2 if arch == "sd15" else 1
    latents, text, added = _inputs(arch, unet, batch)
    cond, uncond = _embeds(adapter, n_img=2, seed=1)  # two reference images: tokens concatenated
    ref = _run_oracle(
        arch, fresh_unet, [path], [_diffusers_embeds(cond, uncond, batch)], 0.7, latents, text, added
    )
    patch = IPAdapterPatch(adapter, adapter.project(cond), adapter.project(uncond), weight=0.7)
    ours = _run_ours(unet, [patch], latents, text, added, batch)
    plain = _run_ours(unet, [], latents, text, added, batch)
    assert (ref - plain).abs().max() > 1e-3  # the adapter does something
    assert (ours - ref).abs().max() <= TOL


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_two_adapters_with_binary_masks(arch, unets, fresh_unet, models_dir):
    """base + plus with scales [0.8, 0.3] and binary masks prepared by diffusers' IPAdapterMaskProcessor."""
    _, paths = models_dir
    files = [paths[f"base_{arch}"], paths[f"plus_{arch}"]]
    adapters = [load_ipadapter(p) for p in files]
    unet = unets[arch]
    latents, text, added = _inputs(arch, unet, seed=3)
    m1 = np.zeros((H * 8, W * 8), np.uint8)
    m1[:, : W * 4] = 255  # left half
    m2 = np.zeros((H * 8, W * 8), np.uint8)
    m2[37:101, 50:170] = 255  # a rectangle not aligned to any token grid
    masks = IPAdapterMaskProcessor().preprocess(
        [Image.fromarray(m1), Image.fromarray(m2)], height=H * 8, width=W * 8
    )
    embeds = [_embeds(a, 1, seed=10 + i) for i, a in enumerate(adapters)]
    ref = _run_oracle(
        arch,
        fresh_unet,
        files,
        [_diffusers_embeds(c, u, 1) for c, u in embeds],
        [0.8, 0.3],
        latents,
        text,
        added,
        masks=masks,
    )
    patches = [
        IPAdapterPatch(
            a, a.project(c), a.project(u), weight=w, mask=masks[i, :1].clone(), mask_interpolation="bicubic"
        )
        for i, (a, (c, u), w) in enumerate(zip(adapters, embeds, (0.8, 0.3), strict=True))
    ]
    ours = _run_ours(unet, patches, latents, text, added)
    assert (ours - ref).abs().max() <= TOL


@pytest.mark.parametrize(
    "arch, scale",
    [
        ("sdxl", {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}),
        (
            "sd15",
            {"down": {"block_1": [0.0, 0.6]}, "up": {"block_2": 0.9, "block_3": [0.0, 1.0, 0.2]}, "mid": 0.5},
        ),
    ],
)
def test_instantstyle_dict_matches_set_ip_adapter_scale(arch, scale, unets, fresh_unet, models_dir):
    _, paths = models_dir
    path = paths[f"base_{arch}"]
    unet = unets[arch]
    adapter = load_ipadapter(path)
    latents, text, added = _inputs(arch, unet, seed=5)
    cond, uncond = _embeds(adapter, 1, seed=6)
    ref = _run_oracle(
        arch, fresh_unet, [path], [_diffusers_embeds(cond, uncond, 1)], scale, latents, text, added
    )
    lw = instantstyle_weights(scale, unet)
    patch = IPAdapterPatch(adapter, adapter.project(cond), adapter.project(uncond), layer_weights=lw)
    assert (_run_ours(unet, [patch], latents, text, added) - ref).abs().max() <= TOL
    if (
        arch == "sdxl"
    ):  # the documented InstantStyle layers: layout = down_blocks.2.attentions.1, style = up_blocks.0.attentions.1
        assert [j for j, w in enumerate(lw) if w] == list(range(14, 24)) + list(range(34, 44))

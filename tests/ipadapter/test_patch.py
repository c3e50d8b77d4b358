"""Installing patches: bit-identity when nothing acts, restoration, step ranges, masks, layer selection."""

from __future__ import annotations

import pytest
import torch

from ipgraph.nodes.core.types import SamplingState
from ipgraph.nodes.ipadapter import (
    IPAdapterPatch,
    cross_attention_names,
    installed,
    layer_weights,
    load_ipadapter,
)
from ipgraph.nodes.ipadapter.attention import DecoupledAttnProcessor, mask_grid

H, W = 16, 16


@pytest.fixture(scope="module")
def setup(unets, models_dir):
    _, paths = models_dir
    unet = unets["sd15"]
    adapter = load_ipadapter(paths["base_sd15"])
    g = torch.Generator().manual_seed(0)
    cond = adapter.project(torch.randn(1, 32, generator=g))
    uncond = adapter.project(torch.zeros(1, 32))
    latents = torch.randn(2, 4, H, W, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    return unet, adapter, cond, uncond, latents, text


def _run(unet, patches, latents, text, state=None):
    state = state or SamplingState(step=0, total_steps=10, latent_hw=(H, W), do_cfg=True, batch_size=1)
    with torch.no_grad(), installed(unet, patches, state):
        return unet(latents, 500, encoder_hidden_states=text).sample


@pytest.mark.parametrize(
    "changes",
    [
        dict(weight=0.0),
        dict(end_at=0.0),
        dict(start_at=0.5),  # step 0 of 10 lies before the range
        dict(mask=torch.zeros(1, 128, 128)),
        dict(layer_weights=(0.0,) * 16),
    ],
)
def test_inactive_patch_is_bit_identical_to_no_adapter(setup, changes):
    unet, adapter, cond, uncond, latents, text = setup
    plain = _run(unet, [], latents, text)
    patch = IPAdapterPatch(adapter, cond, uncond, **{"weight": 1.0, **changes})
    assert torch.equal(_run(unet, [patch], latents, text), plain)
    active = IPAdapterPatch(adapter, cond, uncond, weight=1.0)
    assert not torch.equal(_run(unet, [active], latents, text), plain)


def test_step_range(setup):
    unet, adapter, cond, uncond, latents, text = setup
    patch = IPAdapterPatch(adapter, cond, uncond, start_at=0.2, end_at=0.6)
    plain = _run(unet, [], latents, text)
    acted = []
    for step in range(10):
        state = SamplingState(step=step, total_steps=10, latent_hw=(H, W))
        acted.append(not torch.equal(_run(unet, [patch], latents, text, state), plain))
    assert acted == [False, False, True, True, True, True, False, False, False, False]


def test_original_processors_restored(setup):
    unet, adapter, cond, uncond, latents, text = setup
    before = dict(unet.attn_processors)
    keys_before = set(unet.state_dict())
    patch = IPAdapterPatch(adapter, cond, uncond)
    with installed(unet, [patch], SamplingState()):
        assert all(
            isinstance(unet.attn_processors[n], DecoupledAttnProcessor) for n in cross_attention_names(unet)
        )
        assert set(unet.state_dict()) == keys_before  # nothing registered as parameters
    assert all(unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(RuntimeError, match="boom"):
        with installed(unet, [patch], SamplingState()):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_style_transfer_touches_only_documented_layers(setup):
    unet, adapter, cond, uncond, latents, text = setup
    patch = IPAdapterPatch(adapter, cond, uncond, layer_weights=layer_weights("style transfer", 1.0, "sd15"))
    with installed(unet, [patch], SamplingState()):
        patched = {
            n.split(".transformer_blocks")[0]
            for n, p in unet.attn_processors.items()
            if isinstance(p, DecoupledAttnProcessor)
        }
    # t in {0,1,2,3,9..15}: down_blocks.0-1, and up_blocks.1.attentions.2 onwards (never mid, t=6)
    assert patched == {
        "down_blocks.0.attentions.0",
        "down_blocks.0.attentions.1",
        "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2",
        "up_blocks.3.attentions.0",
        "up_blocks.3.attentions.1",
        "up_blocks.3.attentions.2",
    }


def test_wrong_unet_is_a_sentence(unets, models_dir):
    _, paths = models_dir
    adapter = load_ipadapter(paths["base_sdxl"])
    t = torch.zeros(4, 96)
    with pytest.raises(ValueError, match="is for SDXL"):
        with installed(unets["sd15"], [IPAdapterPatch(adapter, t, t)], SamplingState()):
            pass


def test_mask_grid_exact_for_sd_shapes():
    assert mask_grid((64, 64), 4096) == (64, 64)
    assert mask_grid((128, 96), 24 * 32) == (32, 24)
    assert mask_grid((143, 114), 72 * 57) == (72, 57)  # odd sizes: the UNet rounds up at each downsample
    assert mask_grid((143, 114), 18 * 15) == (18, 15)


def test_soft_mask_and_cfg_layout(setup):
    """A soft mask scales the image term linearly, on the cond AND the uncond half; no-CFG uses cond tokens."""
    unet, adapter, cond, uncond, latents, text = setup
    plain = _run(unet, [], latents, text)
    full = _run(unet, [IPAdapterPatch(adapter, cond, uncond, weight=1.0)], latents, text)
    half_mask = _run(
        unet,
        [IPAdapterPatch(adapter, cond, uncond, weight=1.0, mask=torch.full((1, 8, 8), 0.5))],
        latents,
        text,
    )
    half_weight = _run(unet, [IPAdapterPatch(adapter, cond, uncond, weight=0.5)], latents, text)
    assert (half_mask - half_weight).abs().max() < 1e-5
    assert (full[0] - plain[0]).abs().max() > 1e-3 and (full[1] - plain[1]).abs().max() > 1e-3
    # without CFG the batch is cond only: same as the cond half of a CFG run
    state = SamplingState(latent_hw=(H, W), do_cfg=False, batch_size=1)
    solo = _run(unet, [IPAdapterPatch(adapter, cond, uncond)], latents[1:], text[1:], state)
    assert (solo[0] - full[1]).abs().max() < 1e-5


def test_embeds_scaling_k_plus_v_differs_and_c_penalty(setup):
    unet, adapter, cond, uncond, latents, text = setup
    outs = {
        m: _run(unet, [IPAdapterPatch(adapter, cond, uncond, weight=0.6, embeds_scaling=m)], latents, text)
        for m in ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
    }
    assert all(not torch.equal(outs["V only"], outs[m]) for m in outs if m != "V only")
    # weight 1 with K+V equals V only (no penalty): Attn(q, 1·K, 1·V) = 1·Attn(q, K, V)
    a = _run(unet, [IPAdapterPatch(adapter, cond, uncond, embeds_scaling="K+V")], latents, text)
    b = _run(unet, [IPAdapterPatch(adapter, cond, uncond)], latents, text)
    assert (a - b).abs().max() < 1e-5

"""ComfyUI's conditioning nodes and the sampler's blending of conditioning entries (guidance.py's math),
checked against the formulas computed here with the real tiny UNet."""

from __future__ import annotations

import pytest
import torch

from ipgraph.engine import Graph
from ipgraph.nodes.core.types import CondEntry, Conditioning, SamplingState
from ipgraph.nodes.diffusion import conditioning_ops as ops
from ipgraph.nodes.diffusion.guidance import Guidance, resolve_area, weight
from ipgraph.nodes.diffusion.samplers import ModelSampling

TOL = 1e-5


def cond(seed: int, tokens: int = 77, width: int = 32, pooled: bool = False) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(1, tokens, width, generator=g),
                        torch.randn(1, 16, generator=g) if pooled else None)


def test_combine_average_concat_zero_out():
    a, b = cond(1, pooled=True), cond(2, tokens=10, pooled=True)
    combined = ops.conditioning_combine(ops.CombineIn(conditioning_1=a, conditioning_2=b), None).CONDITIONING
    assert [e.embeds for e in combined.entries] == [a.embeds, b.embeds]

    avg = ops.conditioning_average(ops.AverageIn(conditioning_to=a, conditioning_from=b,
                                                 conditioning_to_strength=0.25), None).CONDITIONING
    padded = torch.cat([b.embeds, torch.zeros(1, 67, 32)], dim=1)  # from: zero-padded to to's 77 tokens
    assert torch.allclose(avg.embeds, a.embeds * 0.25 + padded * 0.75)
    assert torch.allclose(avg.pooled, a.pooled * 0.25 + b.pooled * 0.75)
    short = ops.conditioning_average(ops.AverageIn(conditioning_to=b, conditioning_from=a,
                                                   conditioning_to_strength=0.5), None).CONDITIONING
    assert torch.allclose(short.embeds, b.embeds * 0.5 + a.embeds[:, :10] * 0.5)  # from: cut to 10 tokens

    cat = ops.conditioning_concat(ops.ConcatIn(conditioning_to=combined, conditioning_from=b), None).CONDITIONING
    assert [tuple(e.embeds.shape) for e in cat.entries] == [(1, 87, 32), (1, 20, 32)]
    assert torch.equal(cat.entries[0].embeds[:, 77:], b.embeds) and cat.entries[0].pooled is a.pooled

    zero = ops.conditioning_zero_out(ops.ZeroOutIn(conditioning=combined), None).CONDITIONING
    assert all(e.embeds.abs().sum() == 0 and e.pooled.abs().sum() == 0 for e in zero.entries)
    assert zero.entries[0].embeds.shape == a.embeds.shape
    assert a.embeds.abs().sum() > 0  # inputs untouched


def test_area_mask_and_range_nodes_set_comfyui_fields():
    a = cond(1)
    area = ops.conditioning_set_area(ops.SetAreaIn(conditioning=a, width=100, height=64, x=20, y=8, strength=0.5),
                                     None).CONDITIONING.entries[0]
    assert area.area == (8, 12, 1, 2) and area.strength == 0.5
    pct = ops.conditioning_set_area_percentage(ops.SetAreaPercentageIn(conditioning=a, width=0.5, height=0.25,
                                                                       x=0.5, y=0.0), None).CONDITIONING.entries[0]
    assert pct.area == ("percentage", 0.25, 0.5, 0.0, 0.5)
    assert resolve_area(pct, 8, 12) == ((2, 6, 0, 6), None)
    mask = torch.zeros(16, 16)
    mask[4:8, 2:6] = 1
    masked = ops.conditioning_set_mask(ops.SetMaskIn(conditioning=a, mask=mask, strength=0.7,
                                                     set_cond_area="mask bounds"), None).CONDITIONING.entries[0]
    assert masked.mask.shape == (1, 16, 16) and masked.mask_strength == 0.7 and masked.set_area_to_bounds
    area_b, mask_b = resolve_area(masked, 16, 16)
    assert area_b == (8, 8, 4, 2)  # bounds 4x4 at (y 4, x 2), grown to ComfyUI's 8x8 minimum
    ranged = ops.conditioning_set_timestep_range(ops.TimestepRangeIn(conditioning=a, start=0.2, end=0.6),
                                                 None).CONDITIONING.entries[0]
    assert (ranged.start_percent, ranged.end_percent) == (0.2, 0.6)
    assert a.entries[0].area is None and a.entries[0].mask is None  # values never mutated


def test_area_weight_is_feathered_at_inner_edges():
    entry = CondEntry(torch.zeros(1, 1, 1), area=(28, 20, 4, 0), strength=2.0)  # down to the bottom edge
    w = weight(entry, entry.area, None, 1, 1, 32, 32)[0, 0]
    assert w.shape == (28, 20)
    ramp = torch.arange(1, 9) / 8 * 2.0
    assert torch.allclose(w[:8, 2], ramp)  # top edge (y = 4 > 0) fades in over 8 rows
    assert torch.allclose(w[8:, 2], torch.full((20,), 2.0))  # bottom and left are image edges: no fade
    assert torch.allclose(w[12, 12:], ramp.flip(0))  # right edge (x = 20 < 32) fades out


@pytest.fixture(scope="module")
def sd15(models_dir):
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    engine = Engine(REGISTRY, Runtime.create(models_dir=models_dir, device="cpu", dtype="float32"))
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    for name, text in [("a", "a bear"), ("b", "a forest"), ("n", "blurry")]:
        g.add("CLIPTextEncode", id=name, clip=ck.clip, text=text)
    out = engine.run(g, outputs=["ckpt", "a", "b", "n"]).outputs
    return engine, out["ckpt"].model, out["a"].CONDITIONING, out["b"].CONDITIONING, out["n"].CONDITIONING


def _unet(model, x, t, c: Conditioning):
    return model.unet(x, t, encoder_hidden_states=c.embeds.repeat(x.shape[0], 1, 1), return_dict=False)[0]


def _guide(model, pos, neg, cfg, x, t=torch.tensor(500), sigma=None):
    ms = ModelSampling(model.scheduler_config)
    g = Guidance(model, pos, neg, cfg, tuple(x.shape), ms, SamplingState(), "cpu", torch.float32)
    return g(x, t, ms.sigma(500) if sigma is None else sigma), ms


@torch.no_grad()
def test_blending_of_areas_masks_and_cfg(sd15):
    _, model, a, b, n = sd15
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    area = (8, 16, 8, 0)  # bottom half
    b_area = Conditioning(entries=(b.entries[0].replace(area=area, strength=0.5),))
    got, _ = _guide(model, a + b_area, n, 6.0, x)
    # positive: full a (weight 1) + b on the bottom half, weight 0.5 feathered over its top 8 rows
    wb = weight(b_area.entries[0], area, None, 2, 4, 16, 16)
    cond = _unet(model, x, t, a)
    num, den = cond.clone(), torch.ones_like(x)
    num[:, :, 8:] += _unet(model, x[:, :, 8:], t, b) * wb
    den[:, :, 8:] += wb
    cond = num / (den + 1e-37)
    # negative: n everywhere, plus its twin over b's area (ComfyUI's create_cond_with_same_area_if_none)
    uncond = _unet(model, x, t, n)
    unum = uncond.clone()
    unum[:, :, 8:] += _unet(model, x[:, :, 8:], t, n) * wb
    uncond = unum / (den + 1e-37)
    assert (got - (uncond + 6.0 * (cond - uncond))).abs().max() <= TOL

    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1.0  # left half at twice the latent size: resized bilinearly to 16x16
    b_mask = Conditioning(entries=(b.entries[0].replace(mask=mask, mask_strength=0.8),))
    got, _ = _guide(model, a + b_mask, None, 1.0, x)
    m = torch.nn.functional.interpolate(mask[:, None], size=(16, 16), mode="bilinear")[:, 0] * 0.8
    m = m[:, None].repeat(2, 4, 1, 1)
    expected = (_unet(model, x, t, a) + _unet(model, x, t, b) * m) / (1 + m + 1e-37)
    assert (got - expected).abs().max() <= TOL


@torch.no_grad()
def test_timestep_range_switches_entries_by_sigma(sd15):
    _, model, a, b, _ = sd15
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    early = Conditioning(entries=(a.entries[0].replace(start_percent=0.0, end_percent=0.5),))
    late = Conditioning(entries=(b.entries[0].replace(start_percent=0.5, end_percent=1.0),))
    ms = ModelSampling(model.scheduler_config)
    high, low = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)  # early / late in the schedule
    t = torch.tensor(500)
    got_high, _ = _guide(model, early + late, None, 1.0, x, t, high)
    got_low, _ = _guide(model, early + late, None, 1.0, x, t, low)
    assert (got_high - _unet(model, x, t, a)).abs().max() <= TOL
    assert (got_low - _unet(model, x, t, b)).abs().max() <= TOL


@torch.no_grad()
def test_general_path_equals_the_batched_pipeline_path(sd15):
    """One full-area entry per side evaluated entry by entry equals the one-batch CFG call."""
    _, model, a, _, n = sd15
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    plain, _ = _guide(model, a, n, 7.0, x)
    whole = Conditioning(entries=(a.entries[0].replace(area=(8, 8, 0, 0)),))
    general, _ = _guide(model, whole, n, 7.0, x)
    assert (plain - general).abs().max() <= 1e-4  # two UNet calls round unlike one batch; cfg 7 amplifies


def test_sdxl_style_graph_with_zero_out_and_combined_areas_runs(sd15):
    engine = sd15[0]
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    a = g.add("CLIPTextEncode", id="a", clip=ck.clip, text="a bear").conditioning
    b = g.add("CLIPTextEncode", id="b", clip=ck.clip, text="a forest").conditioning
    left = g.add("ConditioningSetArea", id="left", conditioning=b, width=64, height=64, x=0, y=0, strength=1.0)
    pos = g.add("ConditioningCombine", id="pos", conditioning_1=a, conditioning_2=left.CONDITIONING)
    neg = g.add("ConditioningZeroOut", id="neg", conditioning=a)
    lat = g.add("EmptyLatentImage", id="lat", width=128, height=64).latent  # the area: its left half
    g.add("KSampler", id="ks", model=ck.model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
          positive=pos.CONDITIONING, negative=neg.CONDITIONING, latent_image=lat)
    g.add("KSampler", id="plain", model=ck.model, seed=1, steps=3, cfg=5.0, sampler_name="euler",
          scheduler="normal", positive=a, negative=neg.CONDITIONING, latent_image=lat)
    out = engine.run(g, outputs=["ks", "plain"]).outputs
    got, plain = out["ks"].LATENT.samples, out["plain"].LATENT.samples
    assert torch.isfinite(got).all() and (got - plain).abs().max() > 1e-3


def test_controlnet_acts_on_area_entries(sd15):
    """ControlNetApply on a combined, area-restricted conditioning: each entry runs its ControlNet on its crop."""
    engine = sd15[0]

    def graph(strength):
        g = Graph()
        ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
        a = g.add("CLIPTextEncode", id="a", clip=ck.clip, text="a bear").conditioning
        b = g.add("CLIPTextEncode", id="b", clip=ck.clip, text="a forest").conditioning
        n = g.add("CLIPTextEncode", id="n", clip=ck.clip, text="blurry").conditioning
        left = g.add("ConditioningSetArea", id="left", conditioning=b, width=64, height=64, x=0, y=0)
        pos = g.add("ConditioningCombine", id="pos", conditioning_1=a, conditioning_2=left.CONDITIONING)
        img = g.add("LoadImage", id="img", image="scene.png")
        hint = g.add("ImageScale", id="scale", image=img.image, width=128, height=64, crop="center").image
        net = g.add("ControlNetLoader", id="cn", name="tiny-controlnet-sd15.safetensors")
        apply = g.add("ControlNetApply", id="apply", positive=pos.CONDITIONING, negative=n, control_net=net.control_net,
                      image=hint, strength=strength, start_percent=0.0, end_percent=1.0)
        lat = g.add("EmptyLatentImage", id="lat", width=128, height=64).latent
        g.add("KSampler", id="ks", model=ck.model, seed=1, steps=2, cfg=5.0, sampler_name="euler",
              scheduler="normal", positive=apply.positive, negative=apply.negative, latent_image=lat)
        return g

    with_cn = engine.run(graph(1.0), outputs=["ks"]).outputs["ks"].LATENT.samples
    without = engine.run(graph(0.0), outputs=["ks"]).outputs["ks"].LATENT.samples
    assert torch.isfinite(with_cn).all() and (with_cn - without).abs().max() > 1e-3

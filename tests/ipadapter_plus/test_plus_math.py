"""The math ipgraph defines where diffusers does not: weight types, precise swaps, noise, prep, tiles, schedules,
combine methods, ImageBatch and the pack's node signatures. Fast: no diffusion model is run here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ipgraph.engine import REGISTRY
from ipgraph.nodes.image.batch import fit_center
from ipgraph.nodes.ipadapter import imageprep, schedule
from ipgraph.nodes.ipadapter.weights import layer_table, layer_weights, mad_scientist_weights, swapped_layers

PACK = json.loads((Path(__file__).parent / "pack_signatures.json").read_text())["nodes"]


def by_t(arch, values):
    """Per-layer values -> {transformer index: value} (every layer of a transformer shares its t)."""
    out = {}
    for (_, t), v in zip(layer_table(arch), values, strict=True):
        out.setdefault(t, v)
        assert out[t] == v
    return out


@pytest.mark.parametrize("name", sorted(PACK))
def test_pack_node_signature(name):
    """Class name, input names in the pack's order, outputs (RETURN_NAMES), category and display name."""
    spec, nt = PACK[name], REGISTRY[name]
    expected = spec["required"] + spec["optional"]
    assert list(nt.inputs)[:len(expected)] == expected
    assert all(not nt.inputs[n].required for n in spec["optional"])
    assert list(nt.outputs) == spec["outputs"]
    assert (nt.category, nt.display_name) == (spec["category"], spec["display_name"])


def test_precise_weight_tables_and_swaps():
    w, b = 0.8, 0.3
    sd15 = by_t("sd15", layer_weights("composition precise", w, "sd15", b))
    assert sd15 == {**{t: b for t in (0, 1, 2, 3, *range(9, 16))}, 4: 0.25 * w, 5: w, 6: 0.1 * b, 7: 0.1 * b,
                    8: 0.1 * b}
    sdxl = by_t("sdxl", layer_weights("composition precise", w, "sdxl", b))
    assert sdxl == {**{t: pytest.approx(0.1 * b) for t in range(11)}, 3: w, 6: b}
    style = by_t("sd15", layer_weights("style transfer precise", w, "sd15", b))
    assert style == {**{t: w for t in (0, 1, 2, 3, *range(9, 16))}, 4: 0.25 * b, 5: b, 6: 0.0, 7: 0.0, 8: 0.0}
    assert by_t("sdxl", layer_weights("strong style and composition", w, "sdxl", b)) == {
        **{t: w for t in range(11)}, 3: b}
    # swaps: style precise on the composition blocks, composition precise everywhere else
    assert by_t("sd15", swapped_layers("style transfer precise", "sd15")) == {t: t in (4, 5) for t in range(16)}
    assert by_t("sdxl", swapped_layers("composition precise", "sdxl")) == {t: t != 3 for t in range(11)}
    assert not any(swapped_layers("style transfer", "sdxl"))


def test_mad_scientist_layer_weights():
    got = by_t("sdxl", mad_scientist_weights("3:2.5, 6:1", 0.5, "sdxl"))
    assert got == {**{t: 0.0 for t in range(11)}, 3: 1.25, 6: 0.5}
    with pytest.raises(ValueError, match="index:weight"):
        mad_scientist_weights("3=2", 1.0, "sdxl")


def test_precise_swap_feeds_the_image_to_the_negative_side():
    """At a swapped layer the positive half's image K/V are zero and the negative half's are the reference's."""
    from ipgraph.nodes.ipadapter.files import IPAdapterInfo, IPAdapterWeights
    from ipgraph.nodes.ipadapter.patch import IPAdapterPatch, _layer_term

    info = IPAdapterInfo("x.safetensors", "base", "sd15", 32, 16, (32,) * 16, "image_embeds", 32, 4)
    g = torch.Generator().manual_seed(0)
    wk = tuple(torch.randn(32, 32, generator=g) for _ in range(16))
    adapter = IPAdapterWeights(info, torch.nn.Identity(), wk, wk)
    cond, uncond = torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g)
    swap = tuple(j == 3 for j in range(16))
    patch = IPAdapterPatch(adapter, cond, uncond, weight=0.5, swap_layers=swap)
    plain, swapped = _layer_term(patch, 2, "cpu", torch.float32), _layer_term(patch, 3, "cpu", torch.float32)
    assert torch.allclose(plain.k_cond, F.linear(cond, wk[2])) and torch.allclose(plain.k_uncond, F.linear(uncond, wk[2]))
    assert torch.equal(swapped.k_cond, torch.zeros_like(swapped.k_cond))
    assert torch.allclose(swapped.k_uncond, F.linear(cond, wk[3]))
    # per-latent weights: the output scale per batch row, CFG halves alike
    framed = _layer_term(IPAdapterPatch(adapter, cond.expand(3, 4, 32), uncond, frame_weights=(0.2, 1.0, 0.6),
                                        unfold_batch=True), 0, "cpu", torch.float32)
    rows = framed.row_scale(8, True, torch.float32).flatten().tolist()
    assert rows == pytest.approx([0.2, 1.0, 0.6, 0.6, 0.2, 1.0, 0.6, 0.6])


def test_noise_types_follow_their_formulas():
    g = torch.Generator().manual_seed(0)  # black image: Σx = 0 -> seed 0
    u = torch.rand(1, 3, 224, 224, generator=g)
    fade = imageprep.make_noise("fade", 0.4, 0)
    assert torch.allclose(fade, (0.4 * u).clamp(0, 1).permute(0, 2, 3, 1))
    ref = torch.rand(1, 300, 200, 3, generator=torch.Generator().manual_seed(5))
    x = F.interpolate(imageprep.center_crop(ref.permute(0, 3, 1, 2), 200, 200), size=(224, 224), mode="bicubic",
                      antialias=True)
    g = torch.Generator().manual_seed(int(x.sum().item()) % 1000000007)
    gauss = imageprep.make_noise("gaussian", 0.3, 0, ref)
    assert torch.allclose(gauss, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1).permute(0, 2, 3, 1),
                          atol=1e-6)
    g = torch.Generator().manual_seed(int(x.sum().item()) % 1000000007)
    m = (torch.rand(x.shape, generator=g) < 0.5).float()
    dissolve = (x * (1 - m) + torch.rand(x.shape, generator=g) * m).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(imageprep.make_noise("dissolve", 0.5, 0, ref), dissolve, atol=1e-6)
    shuffled = imageprep.make_noise("shuffle", 0.5, 0, ref)
    assert shuffled.shape == (1, 224, 224, 3) and torch.equal(shuffled, imageprep.make_noise("shuffle", 0.5, 0, ref))
    blurred = imageprep.make_noise("fade", 0.4, 4)  # kernel 5 (made odd), reflect padding
    sigma = 0.3 * (2 - 1) + 0.8
    k = torch.exp(-0.5 * (torch.arange(-2.0, 3.0) / sigma) ** 2)
    k = (k / k.sum())
    k2 = (k[:, None] * k[None]).expand(3, 1, 5, 5)
    manual = F.conv2d(F.pad(fade.permute(0, 3, 1, 2), (2, 2, 2, 2), mode="reflect"), k2, groups=3)
    assert torch.allclose(blurred.permute(0, 3, 1, 2), manual, atol=1e-6)


def test_sharpening_and_prep_crops():
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(imageprep.contrast_adaptive_sharpening(flat, 0.7)[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1])
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    sharp = imageprep.contrast_adaptive_sharpening(img, 1.0)
    lap = lambda t: (t[..., 1:-1, 1:-1] * 4 - t[..., :-2, 1:-1] - t[..., 2:, 1:-1] - t[..., 1:-1, :-2]  # noqa: E731
                     - t[..., 1:-1, 2:]).abs().mean()
    assert lap(sharp) > lap(img) and 0 <= sharp.min() and sharp.max() <= 1
    tall = torch.rand(1, 60, 40, 3, generator=torch.Generator().manual_seed(2))
    top = imageprep.prep_image_for_clip_vision(tall, "BICUBIC", "top")
    pil = Image.fromarray((tall[0, :40] * 255).to(torch.uint8).numpy()).resize((224, 224), Image.BICUBIC)
    assert torch.allclose(top[0], torch.from_numpy(__import__("numpy").asarray(pil, dtype="float32") / 255))
    padded = imageprep.prep_image_for_clip_vision(tall, "NEAREST", "pad")
    assert padded.shape == (1, 224, 224, 3) and padded[0, :, :10].max() == 0  # black bars left and right


def test_reference_tiles():
    square = torch.rand(1, 64, 64, 3)
    tiles, masks = imageprep.reference_tiles(square, None)
    assert len(tiles) == 4 and all(t.shape == (1, 256, 256, 3) for t in tiles)
    assert torch.allclose(sum(masks), torch.ones(1, 512, 512), atol=1e-5)  # 2×2 tiles, no overlap
    wide = torch.rand(1, 60, 150, 3)  # H/W = 0.4: short side 256, long side 640 -> 3 tiles of 256, overlap 64
    tiles, masks = imageprep.reference_tiles(wide, None)
    assert len(tiles) == 3 and masks[0].shape == (1, 256, 640)
    starts = [int(m[0].sum(0).nonzero().min()) for m in masks]
    assert starts == [0, 192, 384]
    very = torch.rand(1, 40, 400, 3)  # 10:1 -> cropped to 4 tiles
    assert len(imageprep.reference_tiles(very, None)[0]) == 4


def test_weight_schedules():
    s = dict(weights="0.0, 1.0", timing="linear", frames=4, start_frame=0, end_frame=9999, add_starting_frames=0,
             add_ending_frames=0, method="full batch", frame_count=0)
    assert schedule.weights_schedule(s)[0] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    w = schedule.weights_schedule({**s, "timing": "ease_in_out", "frames": 3})[0]
    assert w == pytest.approx([0, 0.5, 1])
    assert schedule.weights_schedule({**s, "timing": "ease_in", "frames": 3})[0] == pytest.approx(
        [0, math.sin(math.pi / 4), 1])
    imgs = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 2, 3)
    w, inv, n, i1, i2 = schedule.weights_schedule({**s, "method": "shift batches", "add_ending_frames": 2}, imgs)
    assert n == 4 * 2 + 2 and inv == w[::-1] and i1.shape[0] == i2.shape[0] == 10
    assert i1[:4, 0, 0, 0].tolist() == [0] * 4 and i2[:4, 0, 0, 0].tolist() == [1] * 4
    w = schedule.weights_schedule({**s, "timing": "custom", "weights": "0.2\n0.4,0.6"}, imgs)[0]
    assert w == pytest.approx([0.2, 0.4, 0.6] * 3)
    assert schedule.prompt_schedule({**s, "frame_count": 2}, "a\nb\nc") == '"0": "a",\n"4": "b",\n'


def test_combine_embeds_max_min_and_image_batch():
    from ipgraph.nodes.ipadapter.plus_nodes import reduce_embeds

    x = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert reduce_embeds(x, "max").tolist() == [[3.0, 0.0]] and reduce_embeds(x, "min").tolist() == [[1.0, -2.0]]
    assert reduce_embeds(x, "norm average").shape == (1, 2) and reduce_embeds(x, "concat") is x
    b = torch.rand(1, 40, 80, 3)
    fitted = fit_center(b, 40, 40)  # centre 40×40 of the 40×80 image, resized (here: unchanged size)
    assert torch.allclose(fitted, b[:, :, 20:60])

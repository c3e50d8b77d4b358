"""The latent and image nodes' math, stated in ComfyUI's terms and checked directly (no models needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ipgraph.nodes  # noqa: F401
from ipgraph.engine import REGISTRY
from ipgraph.nodes.comfy.image import outpaint_mask
from ipgraph.nodes.comfy.upscale import tiled_scale
from ipgraph.nodes.core.types import Latent


def call(type_name: str, **inputs):
    nt = REGISTRY[type_name]
    return nt.fn(nt.inputs_model(**inputs), None)


def lat(b=1, h=8, w=8, seed=0, **kw):
    return Latent(torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(seed)), **kw)


def test_latent_composite_paste_and_feather():
    to, src = lat(h=8, w=8, seed=1), lat(h=4, w=4, seed=2)
    out = call("LatentComposite", samples_to=to, samples_from=src, x=16, y=24, feather=0).LATENT.samples
    expected = to.samples.clone()
    expected[:, :, 3:7, 2:6] = src.samples  # pixels // 8
    assert torch.equal(out, expected)
    # clipped at the far border: only the part of the source that fits is pasted
    out = call("LatentComposite", samples_to=to, samples_from=src, x=48, y=48, feather=0).LATENT.samples
    assert torch.equal(out[:, :, 6:, 6:], src.samples[:, :, :2, :2]) and torch.equal(out[:, :, :6], to.samples[:, :, :6])
    # feather 16 px = 2 latent pixels: ramps 1/2, 1 from every edge inside samples_to; none on its border
    out = call("LatentComposite", samples_to=to, samples_from=src, x=0, y=16, feather=16).LATENT.samples
    rows = torch.tensor([0.5, 1.0, 1.0, 0.5])  # y != 0 and the block ends inside: both row edges ramp
    cols = torch.tensor([1.0, 1.0, 1.0, 0.5])  # x == 0: the left edge is on the border, no ramp
    m = rows[:, None] * cols[None, :]
    region = to.samples[:, :, 2:6, 0:4]
    assert torch.allclose(out[:, :, 2:6, 0:4], src.samples * m + region * (1 - m))
    assert torch.equal(out[:, :, 6:], to.samples[:, :, 6:])
    assert to.samples.data_ptr() != out.data_ptr()  # inputs untouched


def test_latent_blend_and_resize_of_the_second():
    a, b = lat(seed=3), lat(seed=4)
    out = call("LatentBlend", samples1=a, samples2=b, blend_factor=0.25).LATENT.samples
    assert torch.allclose(out, a.samples * 0.25 + b.samples * 0.75)
    small = lat(h=4, w=4, seed=5)
    out = call("LatentBlend", samples1=a, samples2=small, blend_factor=0.5).LATENT.samples
    resized = F.interpolate(small.samples, size=(8, 8), mode="bicubic")
    assert torch.allclose(out, a.samples * 0.5 + resized * 0.5)


def test_bislerp_joins_neighbours_on_the_sphere():
    """LatentUpscaleBy(bislerp): at the bilinear sampling positions, neighbouring channel vectors are slerped
    with the magnitudes interpolated linearly; the same direction keeps the left vector (ComfyUI's rule)."""
    e1, e2 = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 2.0, 0, 0])
    a = Latent(torch.stack([e1, e2], dim=-1).reshape(1, 4, 1, 2))
    out = call("LatentUpscaleBy", samples=a, upscale_method="bislerp", scale_by=2.0).LATENT.samples
    assert out.shape == (1, 4, 2, 4)
    pos = F.interpolate(torch.arange(2.0).reshape(1, 1, 1, 2), size=(1, 4), mode="bilinear").flatten()
    for i, p in enumerate(pos.tolist()):
        r = p - int(p)
        if int(p) == 1:  # the last index pairs with itself: the same direction, the left vector
            expected = e2
        else:
            angle = torch.tensor(torch.pi / 2)
            unit = torch.sin((1 - r) * angle) * e1 + torch.sin(r * angle) * (e2 / 2)
            expected = unit * (1 * (1 - r) + 2 * r)
        assert torch.allclose(out[0, :, 0, i], expected, atol=1e-6), (i, p)
        assert torch.allclose(out[0, :, 1, i], out[0, :, 0, i])  # rows: one source row, repeated
    same = lat(h=4, w=4, seed=9)
    assert torch.allclose(call("LatentUpscaleBy", samples=same, upscale_method="bislerp", scale_by=1.0)
                          .LATENT.samples, same.samples)


def test_latent_upscale_rules_and_batch_nodes():
    a = lat(b=3, h=8, w=16, noise_mask=torch.ones(3, 1, 8, 16))
    up = call("LatentUpscale", samples=a, upscale_method="bilinear", width=0, height=128, crop="disabled").LATENT
    assert up.samples.shape == (3, 4, 16, 32) and up.noise_mask.shape == (3, 1, 16, 32)
    assert call("LatentUpscale", samples=a, upscale_method="area", width=16, height=16, crop="center").LATENT \
        .samples.shape == (3, 4, 8, 8)  # at least 64 px a side
    assert call("LatentUpscale", samples=a, width=0, height=0).LATENT is a
    by = call("LatentUpscaleBy", samples=a, upscale_method="nearest-exact", scale_by=1.5).LATENT.samples
    assert torch.equal(by, F.interpolate(a.samples, size=(12, 24), mode="nearest-exact"))
    rep = call("RepeatLatentBatch", samples=a, amount=2).LATENT
    assert torch.equal(rep.samples, torch.cat([a.samples, a.samples])) and rep.noise_mask.shape[0] == 6
    picked = call("LatentFromBatch", samples=a, batch_index=1, length=5).LATENT  # clipped to the batch
    assert torch.equal(picked.samples, a.samples[1:3]) and picked.noise_mask.shape[0] == 2
    last = call("LatentFromBatch", samples=a, batch_index=60, length=1).LATENT
    assert torch.equal(last.samples, a.samples[2:3])


def _comfy_outpaint_mask(h, w, left, top, right, bottom, feathering):
    """ComfyUI's ImagePadForOutpaint mask loop (nodes.py), transcribed as the reference."""
    mask = torch.ones(h + top + bottom, w + left + right)
    t = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                dt = i if top != 0 else h
                db = h - i if bottom != 0 else h
                dl = j if left != 0 else w
                dr = w - j if right != 0 else w
                d = min(dt, db, dl, dr)
                if d >= feathering:
                    continue
                v = (feathering - d) / feathering
                t[i, j] = v * v
    mask[top:top + h, left:left + w] = t
    return mask


@pytest.mark.parametrize("pads", [(8, 0, 16, 0, 4), (0, 8, 0, 8, 5), (8, 8, 8, 8, 0), (16, 0, 0, 0, 20)])
def test_pad_for_outpaint_image_and_mask(pads):
    left, top, right, bottom, feathering = pads
    image = torch.rand(2, 20, 24, 3)
    out = call("ImagePadForOutpaint", image=image, left=left, top=top, right=right, bottom=bottom,
               feathering=feathering)
    assert out.IMAGE.shape == (2, 20 + top + bottom, 24 + left + right, 3)
    assert torch.equal(out.IMAGE[:, top:top + 20, left:left + 24], image)
    if left:
        assert (out.IMAGE[:, :, :left] == 0.5).all()
    expected = _comfy_outpaint_mask(20, 24, left, top, right, bottom, feathering)
    assert torch.allclose(outpaint_mask(20, 24, left, top, right, bottom, feathering), expected)
    assert torch.allclose(out.MASK[0], expected) and out.MASK.shape[0] == 1


def test_image_scale_by_invert_crop():
    image = torch.rand(1, 10, 30, 3)
    out = call("ImageScaleBy", image=image, upscale_method="bilinear", scale_by=1.5).IMAGE
    assert out.shape == (1, 15, 45, 3)
    assert torch.allclose(out, F.interpolate(image.movedim(-1, 1), size=(15, 45), mode="bilinear").movedim(1, -1))
    lanczos = call("ImageScaleBy", image=image, upscale_method="lanczos", scale_by=0.5).IMAGE
    assert lanczos.shape == (1, 5, 15, 3) and 0 <= lanczos.min() and lanczos.max() <= 1
    assert torch.equal(call("ImageInvert", image=image).IMAGE, 1.0 - image)
    crop = call("ImageCrop", image=image, width=8, height=100, x=40, y=2).IMAGE  # origin past the edge: last px
    assert torch.equal(crop, image[:, 2:, 29:30])
    scaled = call("ImageScale", image=image, upscale_method="nearest-exact", width=0, height=20, crop="disabled")
    assert scaled.IMAGE.shape == (1, 20, 60, 3)


def test_tiled_scale_blends_tiles_back_to_the_whole():
    """A position-independent model (nearest x2) gives the same result tiled as in one call."""
    x = torch.rand(1, 3, 40, 56)
    fn = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    tiled = tiled_scale(x, fn, 2, tile=16, overlap=4)
    assert tiled.shape == (1, 3, 80, 112) and torch.allclose(tiled, fn(x), atol=1e-6)

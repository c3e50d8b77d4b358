"""Mask nodes: each operation on small hand-made masks with exact expected values, bad inputs, the engine path,
ComfyUI API import, and that inputs are never changed in place."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import ipgraph.nodes  # noqa: F401  (registers every node type)
from ipgraph.engine import REGISTRY, Engine, Graph, ValidationFailed
from ipgraph.engine.comfy import from_comfy_api
from ipgraph.nodes import mask as M
from ipgraph.nodes.core.runtime import Runtime


# --------------------------------------------------------------------------------------------------- helpers
def call(type_name: str, **inputs):
    """Run one node function directly (inputs validated by its model), returning its only output."""
    nt = REGISTRY[type_name]
    result = nt.fn(nt.inputs_model(**inputs), None)
    return getattr(result, next(iter(nt.outputs)))


def dot(h=5, w=5, y=2, x=2):
    m = torch.zeros(1, h, w)
    m[0, y, x] = 1.0
    return m


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None]


@pytest.fixture
def runtime(tmp_path):
    for sub in ("models", "output", "input"):
        (tmp_path / sub).mkdir()
    return Runtime.create(models_dir=tmp_path / "models", output_dir=tmp_path / "output",
                          input_dir=tmp_path / "input", device="cpu", dtype="float32")


@pytest.fixture
def engine(runtime):
    return Engine(REGISTRY, runtime)


def write_rgba(path, rgba: np.ndarray):
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path)


# --------------------------------------------------------------------------------------------------- grow / shrink
def test_grow_single_pixel_square_and_tapered():
    square = call("GrowMask", mask=dot(), expand=1, tapered_corners=False)
    expected = torch.zeros(1, 5, 5)
    expected[0, 1:4, 1:4] = 1
    assert torch.equal(square, expected)

    plus = call("GrowMask", mask=dot(), expand=1, tapered_corners=True)
    assert torch.equal(plus, t([[0, 0, 0, 0, 0],
                                [0, 0, 1, 0, 0],
                                [0, 1, 1, 1, 0],
                                [0, 0, 1, 0, 0],
                                [0, 0, 0, 0, 0]]))
    diamond = call("GrowMask", mask=dot(), expand=2, tapered_corners=True)
    yy, xx = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.equal(diamond[0], ((yy - 2).abs() + (xx - 2).abs() <= 2).float())
    assert torch.equal(call("GrowMask", mask=dot(), expand=2, tapered_corners=False), torch.ones(1, 5, 5))


def test_shrink_is_the_reverse_and_ignores_the_image_border():
    block = torch.zeros(1, 5, 5)
    block[0, 1:4, 1:4] = 1
    assert torch.equal(call("GrowMask", mask=block, expand=-1, tapered_corners=False), dot())
    # only the centre has its whole neighbourhood inside, for the square and for the plus
    assert torch.equal(call("GrowMask", mask=block, expand=-1, tapered_corners=True), dot())
    # the image border is not "outside": a full mask stays full
    assert torch.equal(call("GrowMask", mask=torch.ones(1, 4, 4), expand=-2), torch.ones(1, 4, 4))
    # grey values: min/max of the neighbourhood
    soft = t([[0.2, 0.9, 0.4]])
    assert torch.allclose(call("GrowMask", mask=soft, expand=1), t([[0.9, 0.9, 0.9]]))
    assert torch.allclose(call("GrowMask", mask=soft, expand=-1), t([[0.2, 0.2, 0.4]]))
    # MaskProcess grow/shrink agree with GrowMask
    assert torch.equal(call("MaskProcess", mask=dot(), operation="grow", amount=1, tapered_corners=False),
                       call("GrowMask", mask=dot(), expand=1, tapered_corners=False))
    assert torch.equal(call("MaskProcess", mask=block, operation="shrink", amount=1), dot())


# --------------------------------------------------------------------------------------------------- simple ops
def test_invert_and_threshold():
    m = t([[0.0, 0.25, 0.5], [0.75, 1.0, 0.5]])
    assert torch.equal(call("InvertMask", mask=m), t([[1.0, 0.75, 0.5], [0.25, 0.0, 0.5]]))
    assert torch.equal(call("MaskProcess", mask=m, operation="invert"), 1 - m)
    assert torch.equal(call("ThresholdMask", mask=m, value=0.5), t([[0, 0, 0], [1, 1, 0]]))
    assert torch.equal(call("MaskProcess", mask=m, operation="threshold", threshold=0.2), t([[0, 1, 1], [1, 1, 1]]))


def test_solid_mask():
    out = call("SolidMask", value=0.25, width=3, height=2)
    assert out.shape == (1, 2, 3) and out.dtype == torch.float32 and bool((out == 0.25).all())


def test_mask_to_image_and_image_to_mask():
    m = t([[0.0, 0.5], [1.0, 0.25]])
    image = call("MaskToImage", mask=m)
    assert image.shape == (1, 2, 2, 3) and all(torch.equal(image[..., c], m) for c in range(3))
    rgba = torch.rand(2, 3, 4, 4)
    for i, channel in enumerate(("red", "green", "blue", "alpha")):
        assert torch.equal(call("ImageToMask", image=rgba, channel=channel), rgba[..., i])
    assert torch.equal(call("ImageToMask", image=rgba[..., :3], channel="alpha"), torch.ones(2, 3, 4))


# --------------------------------------------------------------------------------------------------- feather / blur
def test_feather_mask_edge_ramps():
    out = call("FeatherMask", mask=torch.ones(1, 3, 6), left=2, top=0, right=3, bottom=2)
    cols = torch.tensor([1 / 2, 1.0, 1.0, 3 / 3, 2 / 3, 1 / 3])  # i-th pixel from a side: (i+1)/n
    rows = torch.tensor([1.0, 2 / 2, 1 / 2])
    assert torch.allclose(out[0], rows[:, None] * cols[None, :])
    # overlapping ramps multiply: width 2 with left=2 and right=2 -> [0.5*1, 1*0.5]
    assert torch.allclose(call("FeatherMask", mask=torch.ones(1, 1, 2), left=2, right=2), t([[0.5, 0.5]]))
    # corners multiply
    corner = call("FeatherMask", mask=torch.ones(1, 2, 2), left=2, top=2)
    assert torch.allclose(corner, t([[0.25, 0.5], [0.5, 1.0]]))


def test_feather_fades_towards_the_region_edge_without_spilling():
    m = torch.zeros(1, 7, 7)
    m[0, 1:6, 1:6] = 1
    out = call("MaskProcess", mask=m, operation="feather", amount=2)
    expected = torch.zeros(1, 7, 7)
    expected[0, 1:6, 1:6] = 0.5
    expected[0, 2:5, 2:5] = 1.0
    assert torch.equal(out, expected)
    assert torch.equal(call("MaskProcess", mask=m, operation="feather", amount=0), m)


def test_blur_is_a_separable_gaussian():
    out = call("MaskProcess", mask=dot(9, 9, 4, 4), operation="blur", amount=2)
    g = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / (2 * 1.0**2))
    g = g / g.sum()
    expected = torch.zeros(9, 9)
    expected[2:7, 2:7] = g[:, None] * g[None, :]
    assert torch.allclose(out[0], expected, atol=1e-7)
    # replicated borders: a constant mask stays constant, edges included
    assert torch.allclose(call("MaskProcess", mask=torch.full((1, 4, 6), 0.7), operation="blur", amount=5),
                          torch.full((1, 4, 6), 0.7))


# --------------------------------------------------------------------------------------------------- resize
def test_resize_stretch_and_keep_aspect():
    m = t([[0.0, 1.0], [0.0, 1.0]])
    out = call("MaskResize", mask=m, width=4, height=4)
    assert torch.allclose(out, t([[0, 0.25, 0.75, 1]] * 4))
    # 4 wide x 2 high into 8x8: fit -> 8x4 content, padded with 0 above and below
    pad = call("MaskResize", mask=torch.ones(1, 2, 4), width=8, height=8, resize_mode="keep_aspect_pad")
    expected = torch.zeros(1, 8, 8)
    expected[0, 2:6] = 1
    assert torch.equal(pad, expected)
    # cover: 4x2 -> 8x4, then the centre 4 columns are kept
    crop = call("MaskProcess", mask=t([[0, 0, 1, 1], [0, 0, 1, 1]]), operation="resize", width=4, height=4,
                resize_mode="keep_aspect_crop")
    assert torch.allclose(crop, t([[0, 0.25, 0.75, 1]] * 4))
    # shrinking averages (antialiased); same size is a copy
    assert torch.allclose(call("MaskResize", mask=t([[1, 0], [0, 1]]), width=1, height=1), t([[0.5]]))
    same = torch.rand(1, 3, 3)
    assert torch.equal(call("MaskResize", mask=same, width=3, height=3), same)


# --------------------------------------------------------------------------------------------------- composite
def test_composite_at_an_offset_with_clipping():
    dest = torch.zeros(1, 4, 4)
    src = torch.ones(1, 3, 3)
    out = call("MaskComposite", destination=dest, source=src, x=2, y=-1, operation="add")
    expected = torch.zeros(1, 4, 4)
    expected[0, 0:2, 2:4] = 1
    assert torch.equal(out, expected)
    # entirely outside: unchanged copy
    assert torch.equal(call("MaskComposite", destination=dest, source=src, x=4, y=0, operation="add"), dest)

    d = t([[0.2, 0.8], [0.6, 1.0]])
    s = t([[0.5, 0.5], [0.9, 0.4]])
    ops = {"multiply": d * s, "add": (d + s).clamp(0, 1), "subtract": (d - s).clamp(0, 1),
           "and": t([[0, 0], [1, 0]]), "or": t([[0, 1], [1, 1]]), "xor": t([[0, 1], [0, 1]])}
    for op, want in ops.items():
        assert torch.allclose(call("MaskComposite", destination=d, source=s, operation=op), want), op
    # batches of 1 broadcast
    out = call("MaskComposite", destination=torch.zeros(3, 2, 2), source=torch.ones(1, 1, 1), x=1, y=1,
               operation="add")
    assert out.shape == (3, 2, 2) and bool((out[:, 1, 1] == 1).all()) and out.sum() == 3
    with pytest.raises(ValueError, match="source"):
        call("MaskComposite", destination=torch.zeros(3, 2, 2), source=torch.ones(2, 1, 1))


# --------------------------------------------------------------------------------------------------- bad inputs
def test_dtype_and_shape_rules():
    b = torch.tensor([[True, False]])
    assert torch.equal(call("InvertMask", mask=b), t([[0.0, 1.0]]))
    u8 = torch.tensor([[[0, 51, 255]]], dtype=torch.uint8)
    assert torch.allclose(call("InvertMask", mask=u8), t([[1.0, 0.8, 0.0]]))
    assert torch.equal(call("InvertMask", mask=torch.tensor([[[0, 1]]])), t([[1.0, 0.0]]))
    f64 = torch.tensor([[[0.25, 2.0, -1.0]]], dtype=torch.float64)
    out = call("InvertMask", mask=f64)
    assert out.dtype == torch.float32 and torch.equal(out, t([[0.75, 0.0, 1.0]]))
    assert call("InvertMask", mask=torch.zeros(3, 5)).shape == (1, 3, 5)  # [H,W] -> batch of one
    assert call("InvertMask", mask=torch.zeros(2, 1, 3, 5)).shape == (2, 3, 5)  # [B,1,H,W]

    with pytest.raises(ValueError, match="mask: a torch.int64 mask is ambiguous"):
        call("InvertMask", mask=torch.tensor([[[0, 2]]]))
    with pytest.raises(ValueError, match="mask: .*NaN"):
        call("InvertMask", mask=torch.tensor([[[float("nan")]]]))
    with pytest.raises(ValueError, match="mask: the MASK batch is empty"):
        call("GrowMask", mask=torch.zeros(0, 4, 4), expand=1)
    with pytest.raises(ValueError, match="destination: expected a MASK"):
        call("MaskComposite", destination=torch.zeros(4), source=torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match="mask: expected a MASK tensor"):
        call("InvertMask", mask=[[0, 1]])
    with pytest.raises(ValueError, match="image: the IMAGE batch is empty"):
        call("ImageToMask", image=torch.zeros(0, 2, 2, 3))


def test_size_limits():
    small = SimpleNamespace(resources=SimpleNamespace(max_pixels=16))
    nt = REGISTRY["InvertMask"]
    with pytest.raises(ValueError, match="5x4, above the pixel limit of 16"):
        nt.fn(nt.inputs_model(mask=torch.zeros(1, 4, 5)), small)
    with pytest.raises(ValueError, match="pixel limit"):
        M.as_mask(torch.zeros(1, 2049, 2048))


def test_size_limit_is_a_validation_problem(engine):
    g = Graph()
    g.add("SolidMask", id="big", width=4096, height=4096)
    g.add("MaskProcess", id="rs", mask=g.add("SolidMask", id="s", width=8, height=8).mask, operation="resize",
          width=4096, height=2048)
    with pytest.raises(ValidationFailed) as info:
        engine.run(g, outputs=["big", "rs"])
    text = str(info.value)
    assert "big" in text and "rs" in text and "pixel limit" in text
    with pytest.raises(ValidationFailed, match="operation"):
        g2 = Graph()
        g2.add("MaskProcess", id="p", mask=g2.add("SolidMask", id="s").mask, operation="dilate")
        engine.run(g2, outputs=["p"])


# --------------------------------------------------------------------------------------------------- engine
def test_nodes_run_through_the_engine_without_mutating_inputs(engine, runtime):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[..., 3] = 255  # opaque ...
    rgba[2:4, 3:5, 3] = 0  # ... except a transparent 2x2 hole
    write_rgba(runtime.input_dir / "hole.png", rgba)
    Image.fromarray(rgba[..., :3]).save(runtime.input_dir / "rgb.png")

    g = Graph()
    load = g.add("LoadImageMask", id="load", image="hole.png", channel="alpha")
    g.add("LoadImageMask", id="red", image="hole.png", channel="red")
    g.add("LoadImageMask", id="noalpha", image="rgb.png", channel="alpha")
    for op in ("resize", "threshold", "invert", "grow", "shrink", "blur", "feather"):
        g.add("MaskProcess", id=op, mask=load.mask, operation=op, amount=1, width=4, height=3)
    grown = g.add("GrowMask", id="growmask", mask=load.mask, expand=1, tapered_corners=False)
    solid = g.add("SolidMask", id="solid", value=0.5, width=8, height=6)
    g.add("MaskComposite", id="comp", destination=solid.mask, source=grown.mask, x=0, y=0, operation="multiply")
    g.add("FeatherMask", id="feathermask", mask=load.mask, left=2)
    g.add("ThresholdMask", id="thr", mask=load.mask, value=0.5)
    g.add("InvertMask", id="inv", mask=load.mask)
    g.add("MaskResize", id="mres", mask=load.mask, width=16, height=12)
    img = g.add("MaskToImage", id="img", mask=load.mask)
    g.add("ImageToMask", id="back", image=img.image, channel="green")
    ids = list(g.nodes)
    result = engine.run(g, outputs=ids)  # an input changed in place would fail the run (InputMutatedError)

    hole = torch.zeros(1, 6, 8)
    hole[0, 2:4, 3:5] = 1
    out = {i: getattr(result.outputs[i], next(iter(REGISTRY[g.nodes[i].type].outputs))) for i in ids}
    assert torch.equal(out["load"], hole)  # still the loaded values after every consumer ran
    assert torch.equal(out["red"], torch.ones(1, 6, 8))
    assert torch.equal(out["noalpha"], torch.zeros(1, 6, 8))
    assert torch.equal(out["invert"], 1 - hole) and torch.equal(out["inv"], 1 - hole)
    assert torch.equal(out["back"], hole) and out["img"].shape == (1, 6, 8, 3)
    assert out["resize"].shape == (1, 3, 4) and out["mres"].shape == (1, 12, 16)
    block = torch.zeros(1, 6, 8)
    block[0, 1:5, 2:6] = 1
    assert torch.equal(out["growmask"], block)
    assert torch.equal(out["comp"], block * 0.5)
    assert out["shrink"].sum() == 0 and torch.equal(out["feather"], hole)  # 2x2 shrinks away; feather 1 = same
    # every node handed back a new tensor, never its input
    assert all(out[i].data_ptr() != out["load"].data_ptr() for i in ids if i != "load")

    # a second run is served from the cache, bit-identical
    again = engine.run(g, outputs=ids)
    assert set(again.cached) == set(ids)


def test_load_image_mask_channels_and_missing_file(engine, runtime):
    rgba = np.array([[[255, 0, 51, 0], [0, 102, 0, 255]]], np.uint8)
    write_rgba(runtime.input_dir / "px.png", rgba)
    g = Graph()
    for ch in ("alpha", "red", "green", "blue"):
        g.add("LoadImageMask", id=ch, image="px.png", channel=ch)
    r = engine.run(g, outputs=["alpha", "red", "green", "blue"])
    assert torch.allclose(r.outputs["alpha"].MASK, t([[1.0, 0.0]]))
    assert torch.allclose(r.outputs["red"].MASK, t([[1.0, 0.0]]))
    assert torch.allclose(r.outputs["green"].MASK, t([[0.0, 0.4]]))
    assert torch.allclose(r.outputs["blue"].MASK, t([[0.2, 0.0]]))
    Image.fromarray(np.array([[0, 65535, 32896]], np.uint16)).save(runtime.input_dir / "g16.png")  # 16-bit grey
    g16 = Graph()
    g16.add("LoadImageMask", id="g", image="g16.png", channel="red")
    assert torch.allclose(engine.run(g16, outputs=["g"]).outputs["g"].MASK, t([[0.0, 1.0, 128 / 255]]))
    g2 = Graph()
    g2.add("LoadImageMask", id="x", image="nope.png")
    with pytest.raises(ValidationFailed, match="nope.png"):
        engine.run(g2, outputs=["x"])


def test_wrong_socket_type_is_refused_before_running(engine):
    g = Graph()
    a = g.add("SolidMask", id="a", width=4, height=4)
    img = g.add("MaskToImage", id="img", mask=a.mask)
    g.add("InvertMask", id="bad", mask=img.image)  # an IMAGE wired into a MASK socket is refused up front
    with pytest.raises(ValidationFailed):
        engine.run(g, outputs=["bad"])


def test_comfyui_api_prompt_imports_and_runs(engine):
    prompt = {
        "1": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 5, "height": 5}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 1, "height": 1}},
        "3": {"class_type": "MaskComposite", "inputs": {"destination": ["1", 0], "source": ["2", 0],
                                                        "x": 2, "y": 2, "operation": "add"}},
        "4": {"class_type": "GrowMask", "inputs": {"mask": ["3", 0], "expand": 1, "tapered_corners": True}},
        "5": {"class_type": "InvertMask", "inputs": {"mask": ["4", 0]}},
    }
    result = engine.run(from_comfy_api(prompt), outputs=["5"])
    assert torch.equal(result.outputs["5"].MASK, 1 - call("GrowMask", mask=dot(), expand=1))


def test_describe():
    d = REGISTRY["MaskProcess"].describe()
    assert d["category"] == "mask"
    inputs = {i["name"]: i for i in d["inputs"]}
    assert inputs["operation"]["choices"] == ["resize", "threshold", "invert", "grow", "shrink", "blur", "feather"]
    assert inputs["threshold"]["ge"] == 0 and inputs["threshold"]["le"] == 1
    assert inputs["amount"]["ge"] == 0 and "description" in inputs["amount"]
    for op in ("resize", "threshold", "invert", "grow", "shrink", "blur", "feather"):
        assert f"- {op}:" in d["description"]
    assert all(REGISTRY[n].category == "mask" for n in (
        "LoadImageMask", "SolidMask", "MaskComposite", "InvertMask", "GrowMask", "FeatherMask", "ThresholdMask",
        "MaskResize", "MaskToImage", "ImageToMask"))

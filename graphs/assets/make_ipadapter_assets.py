"""Writes the IP-Adapter demo inputs and the graphs/ipadapter_*.json workflows (deterministic: same bytes every run).

    /work/venv/bin/python graphs/assets/make_ipadapter_assets.py

Assets (64x64, drawn with PIL):
    ipa_bear_ref.png            a white bear shape on blue (the txt2img / img2img reference)
    ipa_face_a.png, ipa_face_b.png   two simple faces for the two-region graph
    ipa_mask_left.png, ipa_mask_right.png   RGBA; transparent where the face goes (LoadImage mask = 1 - alpha);
                                used by the oracle test (the demo graph builds its masks with SolidMask/MaskComposite)
    ipa_pet.png, ipa_clothing.png    references of the two-adapter graph
    ipa_style.png               a stripy "painting" for InstantStyle
    tiny-embeds_sd15.ipadpt     IPAdapterEncoder output for ipa_pet.png with tiny-ip-adapter_sd15 and
                                tiny-clip-vision (the reload graph runs without any encoder)

The graphs are built with the Python builder on the tiny models; each is run by
tests/nodes/test_diffusion_nodes.py::test_every_bundled_graph_validates_and_runs.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
GRAPHS = HERE.parent
sys.path.insert(0, str(GRAPHS.parent))

STEPS = 6  # the tiny models need few steps; keeps the bundled-graph test quick


def bear_ref() -> Image.Image:
    im = Image.new("RGB", (64, 64), (90, 140, 210))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 46, 64, 64], fill=(235, 240, 245))
    d.ellipse([14, 22, 50, 50], fill=(250, 250, 245))
    d.ellipse([36, 14, 56, 32], fill=(250, 250, 245))
    d.ellipse([48, 20, 52, 24], fill=(20, 20, 20))
    return im


def face(skin, hair) -> Image.Image:
    im = Image.new("RGB", (64, 64), (200, 200, 190))
    d = ImageDraw.Draw(im)
    d.ellipse([10, 4, 54, 52], fill=hair)
    d.ellipse([16, 12, 48, 52], fill=skin)
    d.ellipse([23, 26, 29, 32], fill=(40, 40, 60))
    d.ellipse([35, 26, 41, 32], fill=(40, 40, 60))
    d.arc([24, 34, 40, 46], 20, 160, fill=(150, 40, 50), width=2)
    return im


def region_mask(left: bool) -> Image.Image:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    alpha = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(alpha).rectangle([0, 0, 31, 63] if left else [32, 0, 63, 63], fill=0)
    im.putalpha(alpha)
    return im


def pet() -> Image.Image:
    im = Image.new("RGB", (64, 64), (120, 180, 90))
    d = ImageDraw.Draw(im)
    d.ellipse([12, 20, 52, 56], fill=(200, 130, 60))
    d.polygon([(16, 26), (22, 8), (28, 24)], fill=(200, 130, 60))
    d.polygon([(36, 24), (42, 8), (48, 26)], fill=(200, 130, 60))
    d.ellipse([22, 32, 28, 38], fill=(10, 10, 10))
    d.ellipse([36, 32, 42, 38], fill=(10, 10, 10))
    return im


def clothing() -> Image.Image:
    im = Image.new("RGB", (64, 64), (240, 240, 240))
    d = ImageDraw.Draw(im)
    d.polygon([(14, 10), (26, 6), (38, 6), (50, 10), (58, 26), (48, 30), (46, 58), (18, 58), (16, 30), (6, 26)],
              fill=(180, 30, 40))
    for y in range(14, 58, 8):
        d.line([(18, y), (46, y)], fill=(240, 200, 60), width=2)
    return im


def style() -> Image.Image:
    im = Image.new("RGB", (64, 64))
    d = ImageDraw.Draw(im)
    for i in range(0, 64, 4):
        d.line([(i, 0), (64 - i, 64)], fill=(30 + 3 * i, 60, 200 - 2 * i), width=3)
    return im


def write_pngs() -> None:
    bear_ref().save(HERE / "ipa_bear_ref.png", optimize=False)
    face((240, 200, 170), (60, 40, 20)).save(HERE / "ipa_face_a.png", optimize=False)
    face((200, 150, 110), (230, 200, 90)).save(HERE / "ipa_face_b.png", optimize=False)
    region_mask(True).save(HERE / "ipa_mask_left.png", optimize=False)
    region_mask(False).save(HERE / "ipa_mask_right.png", optimize=False)
    pet().save(HERE / "ipa_pet.png", optimize=False)
    clothing().save(HERE / "ipa_clothing.png", optimize=False)
    style().save(HERE / "ipa_style.png", optimize=False)


def write_embeds() -> None:
    """Run IPAdapterEncoder (through the engine) on the pet image and save the result as a bundled asset."""
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.ipadapter.embeds import save_embeds
    from ipgraph.nodes.tiny import write_all

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        write_all(models)
        runtime = Runtime.create(models_dir=models, output_dir=Path(tmp) / "out", input_dir=Path(tmp) / "in",
                                 device="cpu", dtype="float32")
        g = Graph()
        cv = g.add("CLIPVisionLoader", id="cv", name="tiny-clip-vision.safetensors")
        ipa = g.add("IPAdapterModelLoader", id="ipa", name="tiny-ip-adapter_sd15.safetensors")
        img = g.add("LoadImage", id="img", image="ipa_pet.png")
        g.add("IPAdapterEncoder", id="enc", ipadapter=ipa.ipadapter, clip_vision=cv.clip_vision, image=img.image)
        embeds = Engine(REGISTRY, runtime).run(g, outputs=["enc"]).outputs["enc"].embeds
        save_embeds(embeds, HERE / "tiny-embeds_sd15.ipadpt")


# -- graphs ----------------------------------------------------------------------------------------------

def _positions(g) -> dict:
    """Columns by depth (longest path from a source), rows in insertion order: a readable default layout."""
    depth: dict[str, int] = {}
    for node_id, entry in g.nodes.items():  # insertion order is topological for builder-made graphs
        ups = [v.node for v in entry.inputs.values() if hasattr(v, "node")]
        depth[node_id] = 1 + max((depth[u] for u in ups), default=-1)
    rows: dict[int, int] = {}
    out = {}
    for node_id, d in depth.items():
        out[node_id] = [d * 300, rows.get(d, 0) * 160]
        rows[d] = rows.get(d, 0) + 1
    return out


def _base(g, ckpt="tiny-sd15.safetensors", prompt="a polar bear in the snow", negative="blurry, lowres"):
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="positive", clip=ck.clip, text=prompt)
    neg = g.add("CLIPTextEncode", id="negative", clip=ck.clip, text=negative)
    return ck, pos, neg


def _sample(g, ck, model, pos, neg, latent, suffix="", seed=42, denoise=1.0, prefix="ipadapter"):
    ks = g.add("KSampler", id=f"sampler{suffix}", model=model, positive=pos.conditioning,
               negative=neg.conditioning, latent_image=latent, seed=seed, steps=STEPS, cfg=6.0,
               sampler_name="euler", scheduler="normal", denoise=denoise)
    dec = g.add("VAEDecode", id=f"decode{suffix}", samples=ks.latent, vae=ck.vae)
    g.add("SaveImage", id=f"save{suffix}", images=dec.image, filename_prefix=prefix)


def _encoders(g, adapter="tiny-ip-adapter_sd15.safetensors", ipa_id="ipadapter"):
    cv = g.add("CLIPVisionLoader", id="clip_vision", name="tiny-clip-vision.safetensors")
    ipa = g.add("IPAdapterModelLoader", id=ipa_id, name=adapter)
    return cv, ipa


def txt2img():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g)
    cv, ipa = _encoders(g)
    ref = g.add("LoadImage", id="reference", image="ipa_bear_ref.png")
    ap = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, image=ref.image,
               clip_vision=cv.clip_vision, weight=0.6)
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    _sample(g, ck, ap.model, pos, neg, lat.latent, prefix="ipadapter_txt2img")
    return g


def img2img():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, prompt="a polar bear, oil painting")
    cv, ipa = _encoders(g, "tiny-ip-adapter-plus_sd15.safetensors")
    ref = g.add("LoadImage", id="reference", image="ipa_style.png")
    ap = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, image=ref.image,
               clip_vision=cv.clip_vision, weight=0.6)
    init = g.add("LoadImage", id="init_image", image="bear.png")
    lat = g.add("VAEEncode", id="encode", pixels=init.image, vae=ck.vae)
    _sample(g, ck, ap.model, pos, neg, lat.latent, denoise=0.6, prefix="ipadapter_img2img")
    return g


def two_masks():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, prompt="2 girls", negative="blurry, lowres, monochrome")
    cv, ipa = _encoders(g)
    face_a = g.add("LoadImage", id="face_left", image="ipa_face_a.png")
    face_b = g.add("LoadImage", id="face_right", image="ipa_face_b.png")
    # two half-image masks: a 32x64 block of ones composited onto an empty 64x64 mask, left and right
    empty = g.add("SolidMask", id="mask_empty", value=0.0, width=64, height=64)
    half = g.add("SolidMask", id="mask_half", value=1.0, width=32, height=64)
    mask_a = g.add("MaskComposite", id="mask_left", destination=empty.mask, source=half.mask, x=0, y=0,
                   operation="add")
    mask_b = g.add("MaskComposite", id="mask_right", destination=empty.mask, source=half.mask, x=32, y=0,
                   operation="add")
    left = g.add("IPAdapterApply", id="apply_left", model=ck.model, ipadapter=ipa.ipadapter, image=face_a.image,
                 clip_vision=cv.clip_vision, attn_mask=mask_a.mask, weight=0.7)
    right = g.add("IPAdapterApply", id="apply_right", model=left.model, ipadapter=ipa.ipadapter,
                  image=face_b.image, clip_vision=cv.clip_vision, attn_mask=mask_b.mask, weight=0.7)
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    _sample(g, ck, right.model, pos, neg, lat.latent, prefix="ipadapter_two_masks")
    return g


def two_adapters_sweep():
    """A pet (base adapter, 0.8) and clothing (plus adapter, swept 0.3/0.4/0.5): three branches, one encoding."""
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, prompt="a dog wearing a sweater")
    cv, ipa = _encoders(g)
    ipa_plus = g.add("IPAdapterModelLoader", id="ipadapter_plus", name="tiny-ip-adapter-plus_sd15.safetensors")
    pet_img = g.add("LoadImage", id="pet", image="ipa_pet.png")
    cloth_img = g.add("LoadImage", id="clothing", image="ipa_clothing.png")
    pet_enc = g.add("CLIPVisionEncode", id="encode_pet", clip_vision=cv.clip_vision, image=pet_img.image)
    cloth_enc = g.add("CLIPVisionEncode", id="encode_clothing", clip_vision=cv.clip_vision, image=cloth_img.image)
    pet_model = g.add("IPAdapterApply", id="apply_pet", model=ck.model, ipadapter=ipa.ipadapter,
                      clip_vision_output=pet_enc.clip_vision_output, weight=0.8)
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    for w in (0.3, 0.4, 0.5):
        s = f"_{int(w * 10)}"
        both = g.add("IPAdapterApply", id=f"apply_clothing{s}", model=pet_model.model, ipadapter=ipa_plus.ipadapter,
                     clip_vision_output=cloth_enc.clip_vision_output, weight=w)
        _sample(g, ck, both.model, pos, neg, lat.latent, suffix=s, prefix=f"ipadapter_two_adapters{s}")
    return g


def embeds_save():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, prompt="a dog on the grass")
    cv, ipa = _encoders(g)
    pet_img = g.add("LoadImage", id="pet", image="ipa_pet.png")
    enc = g.add("IPAdapterEncoder", id="encode", ipadapter=ipa.ipadapter, clip_vision=cv.clip_vision,
                image=pet_img.image)
    g.add("SaveImageEmbeds", id="save_embeds", embeds=enc.embeds, filename_prefix="pet_sd15")
    ap = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, embeds=enc.embeds, weight=0.8)
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    _sample(g, ck, ap.model, pos, neg, lat.latent, prefix="ipadapter_embeds_save")
    return g


def embeds_load():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, prompt="a dog on the grass")
    ipa = g.add("IPAdapterModelLoader", id="ipadapter", name="tiny-ip-adapter_sd15.safetensors")
    emb = g.add("LoadImageEmbeds", id="embeds", name="tiny-embeds_sd15.ipadpt")
    ap = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, embeds=emb.embeds, weight=0.8)
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    _sample(g, ck, ap.model, pos, neg, lat.latent, prefix="ipadapter_embeds_load")
    return g


def instantstyle_sdxl():
    from ipgraph.engine import Graph

    g = Graph()
    ck, pos, neg = _base(g, ckpt="tiny-sdxl.safetensors", prompt="a cat, masterpiece")
    cv, ipa = _encoders(g, "tiny-ip-adapter_sdxl.safetensors")
    ref = g.add("LoadImage", id="style", image="ipa_style.png")
    ap = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, image=ref.image,
               clip_vision=cv.clip_vision, weight=1.0, weight_type="per-block",
               block_weights=json.dumps({"up": {"block_0": [0.0, 1.0, 0.0]}}))
    lat = g.add("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    _sample(g, ck, ap.model, pos, neg, lat.latent, prefix="ipadapter_instantstyle_sdxl")
    return g


GRAPHS_TO_WRITE = {
    "ipadapter_txt2img.json": txt2img,
    "ipadapter_img2img.json": img2img,
    "ipadapter_two_masks.json": two_masks,
    "ipadapter_two_adapters_sweep.json": two_adapters_sweep,
    "ipadapter_embeds_save.json": embeds_save,
    "ipadapter_embeds_load.json": embeds_load,
    "ipadapter_instantstyle_sdxl.json": instantstyle_sdxl,
}


def write_graphs() -> None:
    import ipgraph.nodes  # noqa: F401

    for name, build in GRAPHS_TO_WRITE.items():
        g = build()
        g.ui = {"positions": _positions(g)}
        (GRAPHS / name).write_text(g.to_json())


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    write_pngs()
    write_embeds()
    write_graphs()
    print("wrote IP-Adapter assets and", ", ".join(GRAPHS_TO_WRITE))

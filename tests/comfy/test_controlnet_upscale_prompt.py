"""ControlNetApply (ComfyUI's legacy signature) vs ControlNetApplyAdvanced, old ipgraph documents, the ESRGAN
upscaler through spandrel, and a ComfyUI API prompt made of core nodes run end to end."""

from __future__ import annotations

import pytest
import torch

from ipgraph.engine import Graph
from ipgraph.engine.comfy import from_comfy_api
from tests.nodes.test_controlnet import CN15

pytestmark = pytest.mark.slow
STEPS = 3


def cn_graph(legacy: bool):
    g = Graph()
    ck = g.add("CheckpointLoaderSimple", id="ckpt", ckpt_name="tiny-sd15.safetensors")
    pos = g.add("CLIPTextEncode", id="pos", text="a house", clip=ck.CLIP).CONDITIONING
    neg = g.add("CLIPTextEncode", id="neg", text="blurry", clip=ck.CLIP).CONDITIONING
    img = g.add("LoadImage", id="img", image="scene.png").IMAGE
    hint = g.add("Canny", id="canny", image=g.add("ImageScale", id="s", image=img, upscale_method="bilinear",
                                                width=64, height=64, crop="center").IMAGE).IMAGE
    net = g.add("ControlNetLoader", id="cn", control_net_name=CN15).CONTROL_NET
    if legacy:
        pos = g.add("ControlNetApply", id="apply", conditioning=pos, control_net=net, image=hint,
                    strength=0.8).CONDITIONING
    else:
        apply = g.add("ControlNetApplyAdvanced", id="apply", positive=pos, negative=neg, control_net=net, image=hint,
                      strength=0.8, start_percent=0.0, end_percent=1.0)
        pos, neg = apply.positive, apply.negative
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64).LATENT
    g.add("KSampler", id="ks", model=ck.MODEL, positive=pos, negative=neg, latent_image=lat, seed=3, steps=STEPS,
          cfg=7.0, sampler_name="euler", scheduler="normal")
    return g


def test_legacy_controlnet_apply_equals_advanced_on_both_sides(engine):
    legacy = engine.run(cn_graph(True), outputs=["ks"]).outputs["ks"].LATENT.samples
    advanced = engine.run(cn_graph(False), outputs=["ks"]).outputs["ks"].LATENT.samples
    g = cn_graph(False)
    del g.nodes["apply"]
    g.set("ks", "positive", g.ref("pos").CONDITIONING)
    g.set("ks", "negative", g.ref("neg").CONDITIONING)
    plain = engine.run(g, outputs=["ks"]).outputs["ks"].LATENT.samples
    assert torch.equal(legacy, advanced)
    assert (legacy - plain).abs().max() > 1e-3  # the ControlNet acts


def test_old_ipgraph_documents_still_load():
    """ipgraph/1 names: ControlNetApply with positive/negative is today's ControlNetApplyAdvanced; lower-case
    outputs and the old loader input names are renamed."""
    doc = {"format": "ipgraph/1", "nodes": {
        "ck": {"type": "LoadCheckpoint", "inputs": {"name": "tiny-sd15.safetensors"}},
        "pos": {"type": "CLIPTextEncode", "inputs": {"clip": {"node": "ck", "output": "clip"}, "text": "a"}},
        "cn": {"type": "ControlNetLoader", "inputs": {"name": CN15}},
        "img": {"type": "LoadImage", "inputs": {"image": "scene.png"}},
        "apply": {"type": "ControlNetApply", "inputs": {
            "positive": {"node": "pos", "output": "conditioning"}, "negative": {"node": "pos", "output": "conditioning"},
            "control_net": {"node": "cn", "output": "control_net"}, "image": {"node": "img", "output": "image"}}},
        "ks": {"type": "KSampler", "inputs": {"positive": {"node": "apply", "output": "positive"}}}}}
    g = Graph.from_dict(doc)
    assert g.nodes["apply"].type == "ControlNetApplyAdvanced"
    assert g.nodes["apply"].inputs["positive"].output == "CONDITIONING"
    assert g.nodes["apply"].inputs["image"].output == "IMAGE"
    assert g.nodes["cn"].inputs == {"control_net_name": CN15}
    # the Python builder takes the same old spellings
    b = Graph()
    ck = b.add("LoadCheckpoint", id="ck", name="tiny-sd15.safetensors")
    pos = b.add("CLIPTextEncode", id="p", clip=ck.clip, text="a").conditioning
    net = b.add("ControlNetLoader", id="cn", name=CN15).control_net
    img = b.add("LoadImage", id="i", image="scene.png").image
    apply = b.add("ControlNetApply", id="a", positive=pos, negative=pos, control_net=net, image=img)
    assert b.nodes["a"].type == "ControlNetApplyAdvanced" and apply.negative.output == "negative"


def test_esrgan_upscale_through_spandrel(engine, models_dir):
    from ipgraph.nodes.comfy.upscale import load_upscale_model
    from ipgraph.nodes.tiny.upscale import TINY_ESRGAN

    g = Graph()
    model = g.add("UpscaleModelLoader", id="m", model_name=TINY_ESRGAN).UPSCALE_MODEL
    img = g.add("ImageScale", id="s", image=g.add("LoadImage", id="i", image="scene.png").IMAGE,
                upscale_method="area", width=24, height=16, crop="disabled").IMAGE
    g.add("ImageUpscaleWithModel", id="up", upscale_model=model, image=img)
    result = engine.run(g, outputs=["up", "s", "m"])
    out, small = result.outputs["up"].IMAGE, result.outputs["s"].IMAGE
    assert out.shape == (1, 64, 96, 3) and result.outputs["m"].UPSCALE_MODEL.scale == 4
    # the same as calling spandrel's model directly on the file
    descriptor = load_upscale_model(models_dir / "upscale_models" / TINY_ESRGAN).descriptor
    assert descriptor.architecture.name == "ESRGAN"
    with torch.no_grad():
        direct = descriptor(small.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out, direct, atol=1e-6)


def test_comfy_api_prompt_of_core_nodes_runs(engine, models_dir):
    """A ComfyUI API prompt using ComfyUI's class and input names (outputs by slot), run as sent."""
    (models_dir / "embeddings").mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, models_dir / "embeddings" / "tinyemb.pt")
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "10": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bear, embedding:tinyemb", "clip": ["10", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "11": {"class_type": "LatentFromBatch", "inputs": {"samples": ["5", 0], "batch_index": 1, "length": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 2, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
                                                   "negative": ["7", 0], "latent_image": ["11", 0], "denoise": 1.0}},
        "12": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": 1.5}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
        "13": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["8", 0], "left": 8, "top": 0, "right": 0,
                                                               "bottom": 0, "feathering": 4}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "ComfyUI"}},
    }
    result = engine.run(from_comfy_api(prompt))
    saved = result.ui["9"]["images"]
    assert len(saved) == 1 and saved[0]["filename"] == "ComfyUI_00001_.png"
    assert result.outputs["13"].IMAGE.shape == (1, 96, 104, 3)

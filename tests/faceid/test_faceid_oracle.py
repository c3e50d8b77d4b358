"""FaceID graphs vs diffusers' load_ip_adapter with ip_adapter_image_embeds on the same h94-layout files.

diffusers loads the LoRA a FaceID file carries (as peft adapter ``faceid_0``) and ipgraph applies it as a weight
patch; both are fused here (ipgraph always fuses; see tests/lora for why unfused peft differs by rounding).
FaceID-plus-v2 gets the same CLIP penultimate states on both sides (``clip_embeds``) and the shortcut.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from ipgraph.engine import Graph
from ipgraph.nodes.ipadapter import encode

pytest.importorskip("peft")
pytestmark = pytest.mark.slow
TOL = 1e-4
PROMPT, NEGATIVE, STEPS, CFG, SEED = "a portrait", "blurry", 4, 6.0, 3
CKPT = {"sd15": "tiny-sd15.safetensors", "sdxl": "tiny-sdxl.safetensors"}


@pytest.fixture(scope="module")
def face_file(models_dir):
    """A face embedding as the reference code saves it: np.save of normed_embedding ([512])."""
    rng = np.random.default_rng(0)
    e = rng.standard_normal(512).astype(np.float32)
    path = models_dir / "embeds" / "test-face.npy"
    path.parent.mkdir(exist_ok=True)
    np.save(path, e / np.linalg.norm(e))
    return path


def faceid_graph(arch, adapter, *, weight=1.0, v2=1.0, lora=1.0, plus=False):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=CKPT[arch])
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    ipa = g.add("LoadFaceIDAdapter", id="ipa", name=adapter)
    face = g.add("LoadFaceEmbeds", id="face", name="test-face.npy")
    links = {}
    if plus:
        cv = g.add("CLIPVisionLoader", id="cv", name="tiny-clip-vision.safetensors")
        img = g.add("LoadImage", id="img", image="bear.png")
        links = dict(clip_vision=cv.out("clip_vision"),
                     clip_vision_output=g.add("CLIPVisionEncode", id="enc", clip_vision=cv.out("clip_vision"),
                                              image=img.out("image")).out("clip_vision_output"))
    app = g.add("FaceIDApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, face_embeds=face.face_embeds,
                weight=weight, weight_faceidv2=v2, lora_strength=lora, **links)
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    g.add("KSampler", id="ks", model=app.model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal")
    return g


def samples(result):
    return next(iter(dict(result.outputs["ks"]).values())).samples


def pipeline(result, arch):
    ck = result.outputs["ckpt"]
    unet, encs, toks = copy.deepcopy(ck.model.unet), [copy.deepcopy(e) for e in ck.clip.text_encoders], ck.clip.tokenizers
    sched = EulerDiscreteScheduler.from_config(ck.model.scheduler_config)
    if arch == "sdxl":
        return StableDiffusionXLPipeline(vae=ck.vae.vae, text_encoder=encs[0], text_encoder_2=encs[1],
                                         tokenizer=toks[0], tokenizer_2=toks[1], unet=unet, scheduler=sched)
    return StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=encs[0], tokenizer=toks[0], unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def run_oracle(pipe, models_dir, adapter, face, weight, clip_embeds=None, v2=None):
    pipe.load_ip_adapter(str(models_dir / "ipadapter"), subfolder="", weight_name=adapter, image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    pipe.fuse_lora(adapter_names=["faceid_0"])
    pipe.set_ip_adapter_scale(weight)
    if clip_embeds is not None:
        proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        proj.clip_embeds, proj.shortcut, proj.shortcut_scale = clip_embeds, True, v2
    id_embeds = torch.cat([torch.zeros_like(face), face])[:, None]  # [2, 1, 512]: negative, positive
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=STEPS, guidance_scale=CFG,
                ip_adapter_image_embeds=[id_embeds], generator=torch.Generator("cpu").manual_seed(SEED),
                output_type="latent").images


@pytest.mark.parametrize("arch,adapter", [("sd15", "tiny-ip-adapter-faceid_sd15.bin"),
                                          ("sdxl", "tiny-ip-adapter-faceid_sdxl.bin")])
def test_faceid_matches_diffusers(engine, models_dir, face_file, arch, adapter):
    result = engine.run(faceid_graph(arch, adapter, weight=0.8), outputs=["ks"])
    face = torch.from_numpy(np.load(face_file))[None]
    expected = run_oracle(pipeline(result, arch), models_dir, adapter, face, 0.8)
    assert (samples(result) - expected).abs().max().item() <= TOL
    base = samples(engine.run(faceid_graph(arch, adapter, weight=0.0, lora=0.0), outputs=["ks"]))
    assert (base - samples(result)).abs().max().item() > 1e-2  # FaceID (tokens + LoRA) does change the image


def test_faceid_plusv2_matches_diffusers(engine, models_dir, face_file):
    adapter = "tiny-ip-adapter-faceid-plusv2_sd15.bin"
    result = engine.run(faceid_graph("sd15", adapter, v2=1.5, plus=True), outputs=["ks", "enc"])
    out = next(iter(dict(result.outputs["enc"]).values()))
    cv = out.encoder.model
    uncond = encode(cv, torch.zeros(1, 3, 224, 224))[1]
    clip_embeds = torch.cat([uncond, out.penultimate])[:, None]  # [2, 1, T, W]
    face = torch.from_numpy(np.load(face_file))[None]
    expected = run_oracle(pipeline(result, "sd15"), models_dir, adapter, face, 1.0, clip_embeds, 1.5)
    got = samples(result)
    assert (got - expected).abs().max().item() <= TOL
    plain = samples(engine.run(faceid_graph("sd15", adapter, v2=0.0, plus=True), outputs=["ks"]))
    assert (plain - got).abs().max().item() > 1e-3  # weight_faceidv2 (the shortcut) does act

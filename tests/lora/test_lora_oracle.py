"""LoRA graphs vs diffusers' load_lora_weights + set_adapters + fuse_lora on the same files (tiny, CPU, fp32).

diffusers injects peft layers into the modules it is given, so the oracle pipeline gets deep copies of the
modules ipgraph loaded; ipgraph's own modules must come out of the run untouched (checked too).
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from ipgraph.engine import Graph

pytest.importorskip("peft")

TOL = 1e-4
PROMPT, NEGATIVE = "a polar bear in the snow", "blurry"
pytestmark = pytest.mark.slow


def lora_graph(ckpt: str, loras: list[tuple[str, float]], steps=4, width=64, height=64):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    model, clip = ck.model, ck.clip
    for i, (name, strength) in enumerate(loras):
        lo = g.add("LoraLoader", id=f"lora{i}", model=model, clip=clip, lora_name=name, strength_model=strength,
                   strength_clip=strength)
        model, clip = lo.MODEL, lo.CLIP
    pos = g.add("CLIPTextEncode", id="pos", clip=clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=clip, text=NEGATIVE)
    lat = g.add("EmptyLatentImage", id="lat", width=width, height=height, batch_size=1)
    g.add("KSampler", id="ks", model=model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=5, steps=steps, cfg=6.0, sampler_name="euler", scheduler="normal")
    return g


def samples(result):
    return next(iter(dict(result.outputs["ks"]).values())).samples


def oracle(result, arch, loras, models_dir, steps=4):
    ck = result.outputs["ckpt"]
    unet, encs, toks = copy.deepcopy(ck.model.unet), [copy.deepcopy(e) for e in ck.clip.text_encoders], ck.clip.tokenizers
    sched = EulerDiscreteScheduler.from_config(ck.model.scheduler_config)
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=ck.vae.vae, text_encoder=encs[0], text_encoder_2=encs[1],
                                         tokenizer=toks[0], tokenizer_2=toks[1], unet=unet, scheduler=sched)
    else:
        pipe = StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=encs[0], tokenizer=toks[0], unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    names = []
    for i, (name, _) in enumerate(loras):
        pipe.load_lora_weights(str(models_dir / "loras" / name), adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    pipe.fuse_lora(adapter_names=names)  # ipgraph fuses too; diffusers' own unfused run differs from its fused
    # one by ~6e-4 on these tiny random models (float rounding amplified by sampling), more than TOL
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=steps, guidance_scale=6.0,
                generator=torch.Generator("cpu").manual_seed(5), output_type="latent").images


CASES = [  # together: kohya and peft files, SD1.5 and SDXL, strengths 0.5 and 1.0, two LoRAs stacked
    ("tiny-sd15.safetensors", "sd15", [("tiny-sd15-lora-kohya.safetensors", 1.0)]),
    ("tiny-sd15.safetensors", "sd15", [("tiny-sd15-lora-kohya.safetensors", 0.5),
                                       ("tiny-sd15-lora-peft.safetensors", 1.0)]),
    ("tiny-sdxl.safetensors", "sdxl", [("tiny-sdxl-lora-peft.safetensors", 1.0),
                                       ("tiny-sdxl-lora-kohya.safetensors", 0.5)]),
]


@pytest.mark.parametrize("ckpt,arch,loras", CASES, ids=["sd15-kohya-1.0", "sd15-kohya-0.5+peft-1.0",
                                                          "sdxl-peft-1.0+kohya-0.5"])
def test_lora_matches_diffusers(engine, models_dir, ckpt, arch, loras):
    result = engine.run(lora_graph(ckpt, loras), outputs=["ks"])
    unet = result.outputs["ckpt"].model.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    expected = oracle(result, arch, loras, models_dir)
    got = samples(result)
    base = samples(engine.run(lora_graph(ckpt, []), outputs=["ks"]))
    assert (got - base).abs().max().item() > 1e-2  # the LoRA does change the image
    assert (got - expected).abs().max().item() <= TOL
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ipgraph's shared UNet is untouched

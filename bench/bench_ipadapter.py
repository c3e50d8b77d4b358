"""IP-Adapter overhead: a 20-step ipgraph graph with an IP-Adapter vs the same graph without it, and vs diffusers'
``load_ip_adapter`` pipeline on the same weights, measured in one process (tiny models, CPU, fp32).

    python bench/bench_ipadapter.py [--models-dir DIR] [--repeats N] [--threads N]

For each adapter (base, plus) it prints best-of-N seconds and the ratios:
  ip/plain       ipgraph with the adapter / ipgraph without (the adapter's cost inside sampling)
  cold/diffusers ipgraph with an empty output cache (encodes + projects the reference) / diffusers with
                 ``ip_adapter_image`` (encodes every call); target <= 1.0
  warm/diffusers ipgraph after a seed change (reference encoding and projection cached) / diffusers with
                 precomputed ``ip_adapter_image_embeds`` (its fastest path); target <= 1.0
Image K/V are computed once per KSampler run in nodes/ipadapter/patch.py; diffusers recomputes them at every
step and layer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS, SIZE, WEIGHT = 20, 64, 0.6
REFERENCE = "ipa_bear_ref.png"


def graph(seed: int, adapter: str | None):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a polar bear in the snow")
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="blurry")
    model = ck.model
    if adapter:
        cv = g.add("CLIPVisionLoader", id="cv", name="tiny-clip-vision.safetensors")
        ipa = g.add("IPAdapterModelLoader", id="ipa", ipadapter_file=adapter)
        ref = g.add("LoadImage", id="ref", image=REFERENCE)
        model = g.add("IPAdapterApply", id="apply", model=ck.model, ipadapter=ipa.ipadapter, image=ref.image,
                      clip_vision=cv.clip_vision, weight=WEIGHT).model
    lat = g.add("EmptyLatentImage", id="lat", width=SIZE, height=SIZE)
    g.add("KSampler", id="ks", model=model, positive=pos.conditioning, negative=neg.conditioning,
          latent_image=lat.latent, seed=seed, steps=STEPS, cfg=7.0, sampler_name="euler")
    return g


def diffusers_pipeline(models_dir: Path, adapter: str):
    """Fresh modules (load_ip_adapter rewrites the UNet it gets), diffusers' own IP-Adapter loading."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from ipgraph.nodes.ipadapter import load_clip_vision
    from ipgraph.nodes.models.single_file import load_checkpoint

    ck = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors")
    pipe = StableDiffusionPipeline(
        vae=ck.vae, text_encoder=ck.text_encoders[0], tokenizer=ck.tokenizers[0], unet=ck.unet,
        scheduler=EulerDiscreteScheduler.from_config(ck.scheduler_config), safety_checker=None,
        feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
        image_encoder=load_clip_vision(models_dir / "clip_vision" / "tiny-clip-vision.safetensors"),
        requires_safety_checker=False)
    pipe.load_ip_adapter(str(models_dir / "ipadapter"), subfolder="", weight_name=adapter, image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(WEIGHT)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, seed: int, **ip):
    import torch

    return pipe("a polar bear in the snow", negative_prompt="blurry", height=SIZE, width=SIZE,
                num_inference_steps=STEPS, guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="latent", **ip).images


def best(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    models_dir = Path(args.models_dir).resolve()

    import torch
    from PIL import Image

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import ASSETS_DIR, Runtime
    from ipgraph.nodes.tiny import write_all

    torch.set_num_threads(args.threads)
    if not (models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors").exists():
        write_all(models_dir)
    runtime = Runtime.create(models_dir=models_dir, output_dir=models_dir.parent / "bench-output", device="cpu",
                             dtype="float32")
    engine = Engine(REGISTRY, runtime)
    image = Image.open(ASSETS_DIR / REFERENCE).convert("RGB")
    engine.run(graph(0, None), outputs=["ks"])  # loads; warm-up
    print(f"tiny SD1.5, {SIZE}px, {STEPS} steps, cfg 7, best of {args.repeats} (interleaved), {args.threads} thread(s)")
    for variant, adapter in (("base", "tiny-ip-adapter_sd15.safetensors"),
                             ("plus", "tiny-ip-adapter-plus_sd15.safetensors")):
        engine.run(graph(0, adapter), outputs=["ks"])  # load the encoder and the adapter once
        pipe = diffusers_pipeline(models_dir, adapter)
        with torch.no_grad():
            embeds = pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
        call(pipe, 0, ip_adapter_image=image)  # warm-up

        def cold(i, adapter=adapter):
            engine.cache.clear()
            engine.run(graph(200 + i, adapter), outputs=["ks"])

        # one round = every variant once, so a change in machine load hits all of them alike
        cases = {"plain": lambda i: engine.run(graph(100 + i, None), outputs=["ks"]),
                 "cold": cold,
                 "warm": lambda i, adapter=adapter: engine.run(graph(300 + i, adapter), outputs=["ks"]),
                 "d_img": lambda i, pipe=pipe: call(pipe, 400 + i, ip_adapter_image=image),
                 "d_emb": lambda i, pipe=pipe, embeds=embeds: call(pipe, 500 + i, ip_adapter_image_embeds=embeds)}
        t = {k: float("inf") for k in cases}
        for i in range(args.repeats):
            for k, fn in cases.items():
                t[k] = min(t[k], best(lambda _, fn=fn, i=i: fn(i), 1))
        print(f"  [{variant}] ipgraph: no adapter {t['plain']:.3f} s, cold {t['cold']:.3f} s, warm (new seed) "
              f"{t['warm']:.3f} s | diffusers: image {t['d_img']:.3f} s, precomputed embeds {t['d_emb']:.3f} s")
        print(f"  [{variant}] ratios: ip/plain {t['warm'] / t['plain']:.3f} | cold/diffusers {t['cold'] / t['d_img']:.3f}"
              f" | warm/diffusers-embeds {t['warm'] / t['d_emb']:.3f} (targets <= 1.0)")


if __name__ == "__main__":
    main()

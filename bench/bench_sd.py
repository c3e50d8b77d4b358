"""ipgraph txt2img vs the plain diffusers pipeline on the same weights, 20 steps, in one process.

    python bench/bench_sd.py [--models-dir DIR] [--model tiny|mid|both] [--repeats N]

Prints, per model:
  cold   : ipgraph run with an empty output cache (models already loaded) / diffusers pipeline call
  warm   : ipgraph re-run with only the seed changed (text encodings cached) / diffusers pipeline call
  load   : ipgraph first run including loading the checkpoint file
and the peak RSS of a process doing only ipgraph runs vs only diffusers calls (separate child processes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS, SIZE = 20, 64
FILES = {"tiny": "tiny-sd15.safetensors", "mid": "mid-sd15.safetensors"}


def graph(ckpt: str, seed: int, size: int):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a polar bear in the snow")
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="blurry")
    lat = g.add("EmptyLatentImage", id="lat", width=size, height=size)
    ks = g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=seed, steps=STEPS, cfg=7.0, sampler_name="euler")
    g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae)
    return g


def setup(models_dir: Path):
    import torch

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    torch.set_num_threads(2)
    runtime = Runtime.create(models_dir=models_dir, output_dir=models_dir.parent / "bench-output", device="cpu",
                             dtype="float32")
    return Engine(REGISTRY, runtime), runtime


def pipeline_for(result):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    ck = result.outputs["ckpt"]
    pipe = StableDiffusionPipeline(
        vae=ck.vae.vae, text_encoder=ck.clip.text_encoders[0], tokenizer=ck.clip.tokenizers[0], unet=ck.model.unet,
        scheduler=EulerDiscreteScheduler.from_config(ck.model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_pipeline(pipe, seed: int, size: int):
    import torch

    return pipe("a polar bear in the snow", negative_prompt="blurry", height=size, width=size,
                num_inference_steps=STEPS, guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pt").images


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(models_dir: Path, kind: str, repeats: int) -> dict:
    engine, runtime = setup(models_dir)
    size = SIZE if kind == "tiny" else 256
    ckpt = FILES[kind]
    load = timed(lambda: engine.run(graph(ckpt, 0, size), outputs=["dec"]))
    pipe = pipeline_for(engine.run(graph(ckpt, 0, size), outputs=["dec"]))
    call_pipeline(pipe, 0, size)  # warm-up of both paths
    cold, warm, ref = [], [], []
    for i in range(repeats):
        engine.cache.clear()
        cold.append(timed(lambda i=i: engine.run(graph(ckpt, 100 + i, size), outputs=["dec"])))
        warm.append(timed(lambda i=i: engine.run(graph(ckpt, 200 + i, size), outputs=["dec"])))
        ref.append(timed(lambda i=i: call_pipeline(pipe, 300 + i, size)))
    best = {"cold": min(cold), "warm": min(warm), "diffusers": min(ref), "load": load}
    print(f"[{kind}] {size}px {STEPS} steps, best of {repeats}: diffusers {best['diffusers']:.3f} s | "
          f"ipgraph cold {best['cold']:.3f} s (ratio {best['cold'] / best['diffusers']:.3f}, target <= 1.05) | "
          f"warm new seed {best['warm']:.3f} s (ratio {best['warm'] / best['diffusers']:.3f}, target <= 0.8) | "
          f"first run incl. loading {load:.3f} s")
    return best


def rss_child(models_dir: Path, kind: str, which: str) -> None:
    """Child process: do only one side's work and print its peak RSS (MiB)."""
    engine, _ = setup(models_dir)
    size = SIZE if kind == "tiny" else 256
    result = engine.run(graph(FILES[kind], 0, size), outputs=["ckpt"] if which == "diffusers" else ["dec"])
    if which == "diffusers":
        pipe = pipeline_for(result)
        for i in range(3):
            call_pipeline(pipe, i, size)
    else:
        for i in range(3):
            engine.run(graph(FILES[kind], i, size), outputs=["dec"])
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(models_dir: Path, kind: str, which: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--models-dir", str(models_dir), "--rss-child", kind, which],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", choices=["tiny", "mid", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-child", nargs=2, metavar=("KIND", "WHICH"))
    args = parser.parse_args()
    models_dir = Path(args.models_dir).resolve()
    if args.rss_child:
        rss_child(models_dir, *args.rss_child)
        return
    from ipgraph.nodes.tiny.sd import ensure_tiny_models

    ensure_tiny_models(models_dir, include_mid=args.model != "tiny")
    for kind in (["tiny", "mid"] if args.model == "both" else [args.model]):
        compare(models_dir, kind, args.repeats)
        print(f"[{kind}] peak RSS: ipgraph {peak_rss(models_dir, kind, 'ipgraph'):.0f} MiB, "
              f"diffusers {peak_rss(models_dir, kind, 'diffusers'):.0f} MiB (the child loads via ipgraph's loader)")


if __name__ == "__main__":
    main()

"""LoRA as a weight patch: cost of sampling with a LoRA, of switching LoRAs, vs diffusers, in one process.

    python bench/bench_lora.py [--models-dir DIR] [--model tiny|mid] [--steps N] [--repeats N] [--switches N]

Prints:
  sample    : KSampler with one LoRA / without: with the fused copy cached (ipgraph's choice) and fused anew on
              every call (the alternative)
  fuse      : one fuse of the UNet's patched weights (what a switch costs)
  switch    : A→B→A... on one warm checkpoint: seconds per run after a switch, RSS before/after N switches
  diffusers : load_lora_weights + fuse_lora time, fused and unfused sampling / no-LoRA sampling,
              and one switch (unfuse + unload + load + fuse), on the same files and modules
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILES = {"tiny": ("tiny-sd15.safetensors", "sd15"), "mid": ("mid-sd15.safetensors", "sd15-mid")}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def graph(ckpt, lora, seed, steps):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    model, clip = ck.model, ck.clip
    if lora:
        lo = g.add("LoraLoader", id="lora", model=model, clip=clip, lora_name=lora, strength_model=0.8,
                   strength_clip=0.8)
        model, clip = lo.MODEL, lo.CLIP
    pos = g.add("CLIPTextEncode", id="pos", clip=clip, text="a polar bear in the snow")
    neg = g.add("CLIPTextEncode", id="neg", clip=clip, text="blurry")
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    g.add("KSampler", id="ks", model=model, positive=pos.out("conditioning"), negative=neg.out("conditioning"),
          latent_image=lat.out("latent"), seed=seed, steps=steps, cfg=7.0, sampler_name="euler")
    return g


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models-bench")
    parser.add_argument("--model", choices=list(FILES), default="mid")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.lora.patch import _FUSED, weights_installed
    from ipgraph.nodes.tiny.lora import kohya_lora
    from ipgraph.nodes.tiny.sd import build_tiny, ensure_tiny_models

    ckpt, kind = FILES[args.model]
    ensure_tiny_models(args.models_dir, include_mid=args.model == "mid")
    parts = build_tiny(kind)
    from safetensors.torch import save_file

    (args.models_dir / "loras").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(2):
        name = f"bench-{args.model}-{'ab'[i]}.safetensors"
        save_file(kohya_lora(parts["unet"], (parts["text_encoder"],), 900 + i, rank=16),
                  str(args.models_dir / "loras" / name))
        names.append(name)
    runtime = Runtime.create(models_dir=args.models_dir, output_dir=args.models_dir / "out", device="cpu",
                             dtype="float32")
    engine = Engine(REGISTRY, runtime)
    seed = iter(range(10**6))

    def run(lora):
        return engine.run(graph(ckpt, lora, next(seed), args.steps), outputs=["ks"])

    run(None), run(names[0])  # warm: checkpoint and LoRA files loaded, text encodings cached per LoRA
    base, one, cold = [], [], []
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all three alike
        base.append(timed(lambda: run(None)))
        one.append(timed(lambda: run(names[0])))  # the fused copy is cached: a new seed costs no fuse

        def uncached():
            _FUSED.clear()  # what "fuse on every KSampler call" would cost
            run(names[0])

        cold.append(timed(uncached))
    base, one, cold = (statistics.median(x) for x in (base, one, cold))
    model = dict(engine.run(graph(ckpt, names[0], 0, 1), outputs=["lora"]).outputs["lora"])["MODEL"]

    def fuse():
        _FUSED.clear()
        with weights_installed(model.unet, model.patches):
            pass

    fuse_s = statistics.median(timed(fuse) for _ in range(args.repeats))
    print(f"machine: {torch.get_num_threads()} torch threads, CPU; model {args.model} ({ckpt}), {args.steps} steps, "
          "64 px, LoRA rank 16 on attention/ff + text encoder")
    print(f"sample    : no LoRA {base:.3f}s; one LoRA, fused copy cached {one:.3f}s (ratio {one / base:.3f}), "
          f"fused on every call {cold:.3f}s (ratio {cold / base:.3f})")
    print(f"fuse      : one fuse of the UNet {fuse_s * 1000:.1f} ms ({fuse_s / base * 100:.1f}% of a no-LoRA run)")

    rss0 = rss_mb()
    times = []
    for i in range(args.switches):
        engine.cache.clear()  # every run re-encodes and re-samples: a real switch
        times.append(timed(lambda i=i: run(names[i % 2])))
    rss1 = rss_mb()
    print(f"switch    : {args.switches} alternations A/B: median {statistics.median(times):.3f}s per run "
          f"(no-LoRA run {base:.3f}s), RSS {rss0:.0f} MB -> {rss1:.0f} MB ({rss1 - rss0:+.0f} MB)")

    # diffusers on the same modules (copies) and files
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    ck = engine.run(graph(ckpt, None, 0, 1), outputs=["ckpt"]).outputs["ckpt"]
    pipe = StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=copy.deepcopy(ck.clip.text_encoders[0]),
                                   tokenizer=ck.clip.tokenizers[0], unet=copy.deepcopy(ck.model.unet),
                                   scheduler=EulerDiscreteScheduler.from_config(ck.model.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def call():
        pipe("a polar bear in the snow", negative_prompt="blurry", height=64, width=64,
             num_inference_steps=args.steps, guidance_scale=7.0, output_type="latent")

    call()
    d_base = statistics.median(timed(call) for _ in range(args.repeats))
    path = [str(args.models_dir / "loras" / n) for n in names]
    load = timed(lambda: pipe.load_lora_weights(path[0], adapter_name="a"))
    pipe.set_adapters(["a"], adapter_weights=[0.8])
    d_unfused = statistics.median(timed(call) for _ in range(args.repeats))
    fuse_d = timed(lambda: pipe.fuse_lora(adapter_names=["a"]))
    d_fused = statistics.median(timed(call) for _ in range(args.repeats))

    def switch():
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        pipe.load_lora_weights(path[1], adapter_name="b")
        pipe.set_adapters(["b"], adapter_weights=[0.8])
        pipe.fuse_lora(adapter_names=["b"])

    d_switch = timed(switch)
    print(f"diffusers : load_lora_weights {load:.3f}s + fuse_lora {fuse_d:.3f}s; sampling fused/none "
          f"{d_fused / d_base:.3f}, unfused/none {d_unfused / d_base:.3f}; one switch {d_switch:.3f}s "
          f"(ipgraph: {fuse_s:.3f}s per call, file parsed once)")


if __name__ == "__main__":
    main()

"""GPU benchmark: ipgraph vs the plain diffusers pipeline on real-size SD1.5 (512 px) and SDXL (1024 px), fp16.

    python bench/gpu.py                 # on a CUDA machine: the whole benchmark, under 5 minutes
    python bench/gpu.py --dry-run       # anywhere: the same code path on the tiny models, CPU fp32, 2 steps
    python bench/gpu.py --only sd15     # one model

Without CUDA (and without --dry-run) it prints why and exits 0. For each model:

1. real-size random weights built from the real configs directly on the GPU (no download; a seeded init), written
   once as a single-file checkpoint in the original SD layout (cached in ``--models-dir``), then loaded by
   ipgraph's own LoadCheckpoint (fp16 on CUDA);
2. the diffusers pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) built on ipgraph's loaded
   modules, so both run the same weights;
3. alternating warm runs with new seeds, 20 steps euler, cfg 7: ipgraph's KSampler it/s (from the node's time)
   and whole run (sampling + VAE decode) vs the pipeline's (it/s from its step callbacks), peak VRAM of each;
4. model offload under a 4 GB device budget (``--budget-gb``): ipgraph's model manager with that budget (it moves
   the least recently used models to the CPU) vs diffusers' ``enable_model_cpu_offload``: time and peak VRAM.

``--dry-run`` exercises everything but CUDA (tiny models from ``nodes/tiny``, written and loaded the same way;
no VRAM figures, no diffusers offload).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT, NEGATIVE = "a polar bear in the snow, photo", "blurry, lowres"


# ------------------------------------------------------------------------------------------------ models
def real_parts(arch: str, device) -> dict:
    """Real-size random-weight parts (SD1.5: UNet 860M, CLIP-L; SDXL: UNet 2.6B, CLIP-L + OpenCLIP bigG)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ipgraph.nodes.models.configs import SD15_VAE_SCALING, SDXL_VAE_SCALING, scheduler_config
    from ipgraph.nodes.models.tokenizer import clip_tokenizer
    from ipgraph.nodes.tiny.sd import clip_text_config, sd15_unet_config, sdxl_unet_config, vae_config

    torch.manual_seed(0)
    vae_cfg = vae_config(widths=(128, 256, 512, 512), layers=2,
                         scaling_factor=SDXL_VAE_SCALING if arch == "sdxl" else SD15_VAE_SCALING)
    vae_cfg["sample_size"] = 1024 if arch == "sdxl" else 512
    with torch.device(device):
        if arch == "sdxl":
            te1 = clip_text_config(768, 12, 12, "quick_gelu", 768)
            te2 = clip_text_config(1280, 32, 20, "gelu", 1280)
            cfg = sdxl_unet_config(widths=(320, 640, 1280), cross_dim=2048, pooled_dim=1280, time_dim=256,
                                   sample_size=128)
            cfg["attention_head_dim"] = (5, 10, 20)
            parts = dict(unet=UNet2DConditionModel(**cfg), vae=AutoencoderKL(**vae_cfg),
                         text_encoder=CLIPTextModel(te1), text_encoder_2=CLIPTextModelWithProjection(te2),
                         tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"),
                         scheduler_config=scheduler_config("sdxl"))
        else:
            te = clip_text_config(768, 12, 12, "quick_gelu", 768)
            cfg = sd15_unet_config(widths=(320, 640, 1280, 1280), cross_dim=768, heads=8, sample_size=64)
            parts = dict(unet=UNet2DConditionModel(**cfg), vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(te),
                         tokenizer=clip_tokenizer(), scheduler_config=scheduler_config("sd15"))
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if key in parts:  # small init: random real-size weights otherwise overflow fp16 in deep stacks
            with torch.no_grad():
                for p in parts[key].parameters():
                    if p.ndim > 1:
                        p.mul_(0.5)
            parts[key] = parts[key].half()
    return parts


def checkpoint(arch: str, models_dir: Path, dry_run: bool, device) -> str:
    """The checkpoint file name in ``models_dir/checkpoints`` (written once)."""
    from ipgraph.nodes.models.single_file import save_checkpoint

    name = f"{'tiny' if dry_run else 'gpu-bench'}-{arch}.safetensors"
    path = models_dir / "checkpoints" / name
    if path.exists():
        return name
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if dry_run:
        from ipgraph.nodes.tiny.sd import build_tiny

        parts = build_tiny(arch)
    else:
        parts = real_parts(arch, device)
        for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if key in parts:
                parts[key] = parts[key].to("cpu")
    encoders = (parts["text_encoder"],) + ((parts["text_encoder_2"],) if "text_encoder_2" in parts else ())
    tmp = path.with_suffix(".tmp")
    save_checkpoint(tmp, unet=parts["unet"], vae=parts["vae"], text_encoders=encoders)
    tmp.replace(path)
    print(f"  wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s",
          flush=True)
    return name


# ------------------------------------------------------------------------------------------------ runs
def graph(ckpt: str, seed: int, size: int, steps: int):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    lat = g.add("EmptyLatentImage", id="lat", width=size, height=size)
    ks = g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=seed, steps=steps, cfg=7.0, sampler_name="euler", scheduler="normal")
    g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae)
    return g


def pipeline_for(arch: str, result):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    ck = result.outputs["ckpt"]
    encoders, tokenizers = ck.clip.text_encoders, ck.clip.tokenizers
    scheduler = EulerDiscreteScheduler.from_config(ck.model.scheduler_config)
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=ck.vae.vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=ck.model.unet,
                                         scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=encoders[0], tokenizer=tokenizers[0],
                                       unet=ck.model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Meter:
    """Wall time (synchronised), peak VRAM on CUDA."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gb = torch.cuda.max_memory_allocated() / 1024**3
        else:
            self.peak_gb = float("nan")
        self.seconds = time.perf_counter() - self.started
        return False


def run_ipgraph(engine, ckpt, seed, size, steps, device) -> dict:
    ks = {}

    def on_event(e):
        if e.kind == "NodeFinished" and e.node_id == "ks":
            ks["s"] = e.seconds

    with Meter(device) as m:
        engine.run(graph(ckpt, seed, size, steps), outputs=["dec"], on_event=on_event)
    return {"s": m.seconds, "its": steps / ks["s"], "vram": m.peak_gb}


def run_diffusers(pipe, seed, size, steps, device) -> dict:
    import torch

    stamps = []

    def on_step(p, i, t, kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return kwargs

    with Meter(device) as m:
        started = time.perf_counter()
        pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps, guidance_scale=7.0,
             generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", callback_on_step_end=on_step)
    # steps/s over the sampling loop: from the end of text encoding (first step's start ~ started + encode)
    its = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else steps / (stamps[-1] - started)
    return {"s": m.seconds, "its": its, "vram": m.peak_gb}


def bench_arch(arch: str, args, device, dtype, deadline: float) -> None:
    import torch

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    size = 64 if args.dry_run else (1024 if arch == "sdxl" else 512)
    steps = args.steps
    models_dir = Path(args.models_dir).resolve()
    print(f"[{arch}] {size} px, {steps} steps, {str(dtype).replace('torch.', '')} on {device}", flush=True)
    ckpt = checkpoint(arch, models_dir, args.dry_run, device)
    runtime = Runtime.create(models_dir=models_dir, output_dir=models_dir.parent / "gpu-bench-output",
                             device=str(device), dtype=str(dtype).replace("torch.", ""))
    engine = Engine(REGISTRY, runtime)
    with Meter(device) as load:
        first = engine.run(graph(ckpt, 0, size, steps), outputs=["dec"])
    print(f"  ipgraph load + first run: {load.seconds:.1f} s", flush=True)
    pipe = pipeline_for(arch, first)
    run_diffusers(pipe, 0, size, steps, device)  # warm-up (kernels, allocator)
    ours, theirs = [], []
    for i in range(args.repeats):
        if time.perf_counter() > deadline:
            print("  (time budget reached: fewer repeats)")
            break
        pair = [lambda i=i: ours.append(run_ipgraph(engine, ckpt, 100 + i, size, steps, device)),
                lambda i=i: theirs.append(run_diffusers(pipe, 100 + i, size, steps, device))]
        for fn in (pair if i % 2 == 0 else pair[::-1]):
            fn()

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"  warm new seed: ipgraph {med(ours, 's'):.2f} s ({med(ours, 'its'):.2f} it/s, peak VRAM "
          f"{med(ours, 'vram'):.2f} GB) | diffusers {med(theirs, 's'):.2f} s ({med(theirs, 'its'):.2f} it/s, peak "
          f"VRAM {med(theirs, 'vram'):.2f} GB) | time ratio ipgraph/diffusers {med(ours, 's') / med(theirs, 's'):.2f}"
          f", it/s ratio {med(ours, 'its') / med(theirs, 'its'):.2f}", flush=True)

    # offload under a device budget
    budget = int(args.budget_gb * 1024**3) if not args.dry_run else 8 * 1024**2
    runtime.models.budget_bytes = budget
    with Meter(device) as off:
        engine.run(graph(ckpt, 500, size, steps), outputs=["dec"])
    stats = runtime.models.stats()
    line = (f"  offload, budget {budget / 1024**3:.3g} GB: ipgraph {off.seconds:.2f} s, peak VRAM {off.peak_gb:.2f} GB"
            f" (manager: {json.dumps(stats, default=str)[:160]})")
    if device.type == "cuda" and time.perf_counter() < deadline:
        try:
            pipe.enable_model_cpu_offload()  # moves every module to the CPU between uses (accelerate hooks)
            torch.cuda.empty_cache()
            r = run_diffusers(pipe, 500, size, steps, device)
            line += f" | diffusers enable_model_cpu_offload {r['s']:.2f} s, peak VRAM {r['vram']:.2f} GB"
        except Exception as exc:  # accelerate missing, ...
            line += f" | diffusers offload not measured ({type(exc).__name__}: {exc})"
    else:
        line += " | diffusers offload: CUDA only"
    print(line, flush=True)
    runtime.models.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU in fp32 (no GPU needed)")
    parser.add_argument("--only", choices=["sd15", "sdxl"], default=None)
    parser.add_argument("--steps", type=int, default=None, help="default 20 (dry run: 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-gb", type=float, default=4.0)
    parser.add_argument("--time-budget-s", type=float, default=270.0, help="stop adding repeats after this")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 20)
    import torch

    if args.dry_run:
        torch.set_num_threads(1)
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA GPU on this machine; skipped (use --dry-run to check the code path on CPU)")
            return 0
        device, dtype = torch.device("cuda"), torch.float16
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    deadline = time.perf_counter() + args.time_budget_s
    if args.dry_run:  # the real-size configs, built on the meta device (no memory): sizes as the real models'
        for arch in [args.only] if args.only else ["sd15", "sdxl"]:
            parts = real_parts(arch, "meta")
            counts = {k: f"{sum(p.numel() for p in v.parameters()) / 1e6:.0f}M" for k, v in parts.items()
                      if hasattr(v, "parameters")}
            print(f"[{arch}] real-size configs (meta device): {counts}", flush=True)
    for arch in [args.only] if args.only else ["sd15", "sdxl"]:
        bench_arch(arch, args, device, dtype, deadline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""AnimateDiff: ipgraph vs diffusers' AnimateDiffPipeline on the same weights, chunked VAE decode memory, and
the encode time of each video format, all on the tiny models (CPU, fp32).

    python bench/bench_animatediff.py [--models-dir DIR] [--steps N] [--repeats N]

Prints:
  sample : ipgraph 16-frame AnimateDiff graph (ApplyAnimateDiff + KSampler ddim, latents only, models loaded,
           output cache cleared) / AnimateDiffPipeline(output_type="latent") with the same weights, noise, steps
  decode : peak RSS (fresh child process each) of decoding 16 and 64 frames at 256 px through vae_decode
           (chunks of VAE_DECODE_CHUNK) vs one VAE call for the whole batch; chunked must grow sublinearly
  encode : seconds to write 16 frames of 256 px as gif / webp / png / mp4 / webm-vp9 / webm-av1, and file sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAMES = 16


def bench_sampling(models_dir: Path, steps: int, repeats: int) -> None:
    import torch

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from tests.animatediff.conftest import (
        CFG,
        NEGATIVE,
        PROMPT,
        SEED,
        animatediff_graph,
        animatediff_pipeline,
        ksampler_noise,
    )

    torch.set_num_threads(2)
    engine = Engine(REGISTRY, Runtime.create(models_dir=models_dir, output_dir=models_dir.parent / "bench-out",
                                             device="cpu", dtype="float32"))
    graph = animatediff_graph(FRAMES, steps, reference=None)
    engine.run(graph, outputs=["ks"])  # loads the models
    pipe = animatediff_pipeline(models_dir, models_dir / "animatediff_models" / "tiny-mm-sd15-v2.ckpt",
                                ip_adapter=False)

    def ours():
        engine.cache.clear()
        return engine.run(graph, outputs=["ks"]).outputs["ks"].LATENT.samples

    def theirs():
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=64, width=64,
                    num_inference_steps=steps, guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED),
                    latents=ksampler_noise(FRAMES, 64), output_type="latent").frames

    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs()
        t_theirs.append(time.perf_counter() - t)
    a, b = min(t_ours), min(t_theirs)
    print(f"sample : {FRAMES} frames, {steps} ddim steps, 64 px: ipgraph {a:.2f} s, diffusers {b:.2f} s, "
          f"ratio {a / b:.2f}")


def decode_child(models_dir: str, frames: int, chunked: bool) -> None:
    """Runs in a fresh process: decode ``frames`` latents of 256 px, print the peak RSS growth in MiB."""
    import resource

    import torch

    from ipgraph.nodes.core.types import VaeHandle
    from ipgraph.nodes.diffusion import latent
    from ipgraph.nodes.models.single_file import load_checkpoint

    torch.set_num_threads(2)
    vae = VaeHandle(load_checkpoint(Path(models_dir) / "checkpoints" / "tiny-sd15.safetensors").vae, "sd15", "")
    samples = torch.randn(frames, 4, 32, 32)
    latent.vae_decode(vae, samples[:1], torch.device("cpu"))  # warm up allocator and kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not chunked:
        latent.VAE_DECODE_CHUNK = 10**9
    latent.vae_decode(vae, samples, torch.device("cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mib": (peak - before) / 1024}))


def bench_decode(models_dir: Path) -> None:
    rows = {}
    for chunked in (True, False):
        for frames in (16, 64):
            out = subprocess.run([sys.executable, __file__, "--decode-child", str(models_dir), str(frames),
                                  "1" if chunked else "0"], capture_output=True, text=True, check=True)
            rows[(chunked, frames)] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]
    for chunked in (True, False):
        a, b = rows[(chunked, 16)], rows[(chunked, 64)]
        label = "chunked  " if chunked else "one call "
        print(f"decode : {label} 256 px: peak RSS growth 16 frames {a:.0f} MiB, 64 frames {b:.0f} MiB "
              f"(x{b / max(a, 1e-6):.2f} for 4x the frames; output tensor alone 64 frames = "
              f"{64 * 256 * 256 * 3 * 4 / 2**20:.0f} MiB)")


def bench_encode() -> None:
    import torch

    from ipgraph.nodes.video.save import encode_bytes

    t = torch.linspace(0, 1, FRAMES)[:, None, None, None]
    y = torch.linspace(0, 1, 256)[None, :, None, None]
    x = torch.linspace(0, 1, 256)[None, None, :, None]
    shape = (FRAMES, 256, 256, 1)
    images = torch.cat([((t + x) % 1).expand(shape), ((t + y) % 1).expand(shape), ((x * y + t) % 1).expand(shape)], -1)
    for fmt in ("gif", "webp", "png", "mp4", "webm-vp9", "webm-av1"):
        start = time.perf_counter()
        data = encode_bytes(images, fmt, 8.0)
        print(f"encode : {fmt:9s} {FRAMES} frames 256 px: {time.perf_counter() - start:.3f} s, {len(data) / 1024:.0f} KiB")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--decode-child":
        decode_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from ipgraph.nodes.tiny import write_all

    write_all(args.models_dir)
    bench_sampling(args.models_dir, args.steps, args.repeats)
    bench_decode(args.models_dir)
    bench_encode()


if __name__ == "__main__":
    main()

"""AnimateDiff: ipgraph vs diffusers' AnimateDiffPipeline on the same weights, chunked VAE decode memory, and
the encode time of each video format, all on the tiny models (CPU, fp32, one torch thread).

    python bench/bench_animatediff.py [--models-dir DIR] [--steps N] [--rounds N] [--profile] [--only PART]

Prints:
  sample : the 16-frame AnimateDiff graph (ApplyAnimateDiff + KSampler ddim, latents only, models loaded, output
           cache cleared so every node runs), without and with IP-Adapter, against AnimateDiffPipeline
           (output_type="latent", load_ip_adapter) with the same weights, noise and steps; both in this process,
           alternating (ABBA), best of N; CPU-time and wall-time ratios (CPU time is the one to quote on a shared
           machine); --profile splits each side into motion modules / rest of the UNet / outside the UNet
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
ENCODE_SETTINGS = {"gif": "256-colour fast-octree palette per frame", "webp": "lossless, method 4 (ComfyUI's default)",
                   "png": "APNG, compress_level 4", "mp4": "H.264 crf 23, yuv420p", "webm-vp9": "VP9 crf 23",
                   "webm-av1": "SVT-AV1 crf 23"}


class _Clock:
    """CPU seconds spent inside modules of some kinds (forward pre/post hooks; nested calls counted once)."""

    def __init__(self, modules) -> None:
        self.seconds, self._depth, self._t0 = 0.0, 0, 0.0
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, *_):
        if self._depth == 0:
            self._t0 = time.process_time()
        self._depth += 1

    def _leave(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.process_time() - self._t0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def bench_sampling(models_dir: Path, steps: int, rounds: int, reference: str | None) -> None:
    """ipgraph graph vs AnimateDiffPipeline in this one process: alternating (ABBA order), best of ``rounds``.

    Wall time on a shared machine swings with other processes; CPU time of this process (one torch thread) does
    not, so both are printed and the CPU ratio is the figure to quote. ``--profile`` splits each side's CPU time
    into the motion modules, the rest of the UNet, and everything outside the UNet (text encoding, scheduler,
    IP-Adapter image encoding, graph engine)."""
    import statistics

    import torch
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
    from PIL import Image

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import ASSETS_DIR, Runtime
    from tests.animatediff.conftest import (
        CFG,
        MM,
        NEGATIVE,
        PROMPT,
        SEED,
        animatediff_graph,
        animatediff_pipeline,
        ksampler_noise,
    )

    runtime = Runtime.create(models_dir=models_dir, output_dir=models_dir.parent / "bench-out", device="cpu",
                             dtype="float32")
    engine = Engine(REGISTRY, runtime)
    graph = animatediff_graph(FRAMES, steps, reference=reference)
    first = engine.run(graph, outputs=["ks", "ckpt", "mm"])  # loads the models (kept by the model manager)
    pipe = animatediff_pipeline(models_dir, models_dir / "animatediff_models" / MM, ip_adapter=reference is not None)
    extra = {}
    if reference is not None:
        pipe.set_ip_adapter_scale(0.6)
        extra["ip_adapter_image"] = Image.open(ASSETS_DIR / reference).convert("RGB")

    def ours():
        engine.cache.clear()  # every node runs again; the model files stay loaded, as diffusers' modules do
        return engine.run(graph, outputs=["ks"]).outputs["ks"].LATENT.samples

    def theirs():
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=64, width=64,
                   num_inference_steps=steps, guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED),
                   latents=ksampler_noise(FRAMES, 64), output_type="latent", **extra).frames
        return out[0].permute(1, 0, 2, 3)

    a, b = ours(), theirs()  # warm-up, and the two sides agree
    agree = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    wall = {"ours": [], "theirs": []}
    cpu = {"ours": [], "theirs": []}
    for i in range(rounds):
        order = (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours))
        for name, fn in order:
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    label = "motion + IP-Adapter" if reference else "motion only"
    print(f"sample : {FRAMES} frames, {steps} ddim steps, 64 px, {label} (latents agree to {agree:.1e} rel.), "
          f"best of {rounds}, alternating:")
    for kind, t in (("cpu ", cpu), ("wall", wall)):
        print(f"sample :   {kind} ipgraph {min(t['ours']):.3f} s, diffusers {min(t['theirs']):.3f} s, ratio "
              f"{min(t['ours']) / min(t['theirs']):.2f} (medians {statistics.median(t['ours']):.3f} / "
              f"{statistics.median(t['theirs']):.3f} s, ratio "
              f"{statistics.median(t['ours']) / statistics.median(t['theirs']):.2f})")
    if PROFILE:
        shared_unet = first.outputs["ckpt"].model.unet  # the one UNet every branch of the graph uses
        adapter = first.outputs["mm"].motion_model.adapter
        for name, fn, unet, motion_root in (("ipgraph", ours, shared_unet, adapter),
                                            ("diffusers", theirs, pipe.unet, pipe.unet)):
            motion = [m for m in motion_root.modules() if isinstance(m, AnimateDiffTransformer3D)]
            clocks = _Clock([unet]), _Clock(motion)
            best = None
            for _ in range(3):
                for c in clocks:
                    c.seconds = 0.0
                t = time.process_time()
                fn()
                row = (time.process_time() - t, clocks[0].seconds, clocks[1].seconds)
                best = row if best is None or row[0] < best[0] else best
            for c in clocks:
                c.remove()
            total, in_unet, in_motion = best
            print(f"profile: {name:9s} cpu {total:.3f} s = motion modules {in_motion:.3f} + rest of UNet "
                  f"{in_unet - in_motion:.3f} + outside the UNet {total - in_unet:.3f}")


PROFILE = False


def decode_child(models_dir: str, frames: int, chunked: bool) -> None:
    """Runs in a fresh process: decode ``frames`` latents of 256 px, print the peak RSS growth in MiB."""
    import resource

    import torch

    from ipgraph.nodes.core.types import VaeHandle
    from ipgraph.nodes.diffusion import latent
    from ipgraph.nodes.models.single_file import load_checkpoint

    torch.set_num_threads(1)
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
        print(f"encode : {fmt:9s} {FRAMES} frames 256 px: {time.perf_counter() - start:.3f} s, {len(data) / 1024:.0f} KiB"
              f" ({ENCODE_SETTINGS[fmt]})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--decode-child":
        decode_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7, help="alternating runs of each side (best of N)")
    parser.add_argument("--profile", action="store_true", help="split each side's CPU time (motion/UNet/rest)")
    parser.add_argument("--only", choices=["sample", "decode", "encode"], help="run one part")
    args = parser.parse_args()
    import torch

    from ipgraph.nodes.tiny import write_all

    global PROFILE
    PROFILE = args.profile
    torch.set_num_threads(1)
    write_all(args.models_dir)
    if args.only in (None, "sample"):
        bench_sampling(args.models_dir, args.steps, args.rounds, None)
        bench_sampling(args.models_dir, args.steps, args.rounds, "ipa_bear_ref.png")
    if args.only in (None, "decode"):
        bench_decode(args.models_dir)
    if args.only in (None, "encode"):
        bench_encode()


if __name__ == "__main__":
    main()

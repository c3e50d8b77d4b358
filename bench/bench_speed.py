"""Step-speed options on CPU, measured: channels-last, tiled/sliced VAE decode, bf16 autocast, torch.compile.

    python bench/bench_speed.py [--threads 1,2] [--steps 10] [--repeats 3] [--compile]

On the ~100M-parameter "mid" SD1.5 (256 px; the VAE also at 512 px), in one process, alternating the two sides
of every comparison, for each torch thread count:

1. baseline: ipgraph txt2img warm run (new seed) vs the plain diffusers pipeline on the same modules;
2. channels-last: one CFG UNet step (batch 2) and the VAE decode with the modules and inputs in
   ``torch.channels_last`` vs contiguous, and the max |diff| of a whole sampling run's latents (oracle
   tolerance 1e-4);
3. VAE decode of a 512 px image: plain vs diffusers' ``enable_tiling`` (256 px tiles, blended overlaps) vs
   ``enable_slicing`` on a batch of 4: time, peak RSS increase during the call, max |diff| of the pixels;
4. bf16: one UNet step under ``torch.autocast("cpu", torch.bfloat16)`` and with the UNet cast to bfloat16,
   vs fp32 (only meaningful on CPUs with native bf16: lscpu flags ``avx512_bf16`` / ``amx_bf16``), with the max
   |diff| of the step's output;
5. ``--compile``: ``torch.compile(unet)``: compile time (first call) and the step time after (first thread
   count only: compiling takes minutes on a small CPU).

Ratios are option/baseline time (below 1 = faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SIZE = 256


class PeakRSS:
    """Peak resident memory increase (MB) while the block runs (sampled every 2 ms from /proc)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mb = (self.peak - self.base) / 1e6
        return False


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, called in alternating order."""
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            times[k].append(timed(fns[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args()

    import bench_sd
    import torch
    from bench_sd import call_pipeline, graph, pipeline_for

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.diffusion import sampling
    from ipgraph.nodes.tiny.sd import ensure_tiny_models

    bench_sd.STEPS = args.steps
    models = Path(args.models_dir).resolve()
    ensure_tiny_models(models, include_mid=True)
    flags = open("/proc/cpuinfo").read()
    native_bf16 = " avx512_bf16" in flags or " amx_bf16" in flags
    print(f"CPU: {os.cpu_count()} cores, native bf16: {native_bf16}; mid SD1.5 {SIZE}px, {args.steps} steps",
          flush=True)
    runtime = Runtime.create(models_dir=models, output_dir=models.parent / "bench-output", device="cpu",
                             dtype="float32")
    engine = Engine(REGISTRY, runtime)
    first = engine.run(graph("mid-sd15.safetensors", 0, SIZE), outputs=["dec"])
    pipe = pipeline_for(first)
    unet, vae = pipe.unet, pipe.vae
    ck = first.outputs["ckpt"]
    emb = torch.cat([first.outputs["neg"].CONDITIONING.entries[0].embeds,
                     first.outputs["pos"].CONDITIONING.entries[0].embeds])
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    z512 = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(500)

    @torch.no_grad()
    def step(inp=None):
        return unet(x if inp is None else inp, t, encoder_hidden_states=emb).sample

    @torch.no_grad()
    def decode(z):
        return vae.decode(z / vae.config.scaling_factor).sample

    def set_layout(fmt):
        unet.to(memory_format=fmt)
        vae.to(memory_format=fmt)

    def sample_latents() -> torch.Tensor:
        return sampling.sample(ck.model, first.outputs["pos"].CONDITIONING, first.outputs["neg"].CONDITIONING,
                               first.outputs["lat"].LATENT, seed=5, steps=args.steps, cfg=7.0, sampler="euler",
                               schedule="normal", denoise=1.0, device="cpu", dtype=torch.float32)

    seed = [100]

    def ours():
        seed[0] += 1
        engine.run(graph("mid-sd15.safetensors", seed[0], SIZE), outputs=["dec"])

    compiled_done = False
    for threads in [int(n) for n in args.threads.split(",")]:
        torch.set_num_threads(threads)
        print(f"--- {threads} thread(s)", flush=True)
        base = alternate({"ipgraph": ours, "diffusers": lambda: call_pipeline(pipe, 7, SIZE)}, args.repeats)
        print(f"baseline warm run: ipgraph {base['ipgraph']:.2f} s | diffusers {base['diffusers']:.2f} s | ratio "
              f"{base['ipgraph'] / base['diffusers']:.2f}", flush=True)

        # channels-last
        ref_step, ref_dec = step(), decode(z512)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        cl_z = z512.contiguous(memory_format=torch.channels_last)
        res = {}
        for r in range(args.repeats):
            for name in (("plain", "cl") if r % 2 == 0 else ("cl", "plain")):
                set_layout(torch.channels_last if name == "cl" else torch.contiguous_format)
                res.setdefault(name + "_step", []).append(timed(lambda n=name, a=cl_x: step(a if n == "cl" else x)))
                res.setdefault(name + "_dec", []).append(timed(lambda n=name, a=cl_z: decode(a if n == "cl" else z512)))
        set_layout(torch.channels_last)
        d_step = (step(cl_x) - ref_step).abs().max().item()
        d_dec = (decode(cl_z) - ref_dec).abs().max().item()
        lat_cl = sample_latents()
        set_layout(torch.contiguous_format)
        lat_plain = sample_latents()
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"channels-last: UNet step {med['cl_step']:.3f} s vs {med['plain_step']:.3f} s (ratio "
              f"{med['cl_step'] / med['plain_step']:.2f}), max|diff| {d_step:.1e} | VAE decode 512px "
              f"{med['cl_dec']:.2f} s vs {med['plain_dec']:.2f} s (ratio {med['cl_dec'] / med['plain_dec']:.2f}), "
              f"max|diff| {d_dec:.1e} | {args.steps}-step latents max|diff| "
              f"{(lat_cl - lat_plain).abs().max().item():.1e}", flush=True)

        # VAE tiling / slicing
        vae.tile_sample_min_size = 256
        vae.tile_latent_min_size = 32
        z4 = z512.repeat(4, 1, 1, 1)
        out = {}
        for name in ("plain", "tiled", "plain4", "sliced4"):
            vae.disable_tiling()
            vae.disable_slicing()
            if name == "tiled":
                vae.enable_tiling()
            if name == "sliced4":
                vae.enable_slicing()
            z = z4 if name.endswith("4") else z512
            decode(z)  # warm
            with PeakRSS() as mem:
                started = time.perf_counter()
                img = decode(z)
                seconds = time.perf_counter() - started
            out[name] = (seconds, mem.mb, img)
        vae.disable_tiling()
        vae.disable_slicing()
        d_tile = (out["tiled"][2] - out["plain"][2]).abs().max().item() / 2  # pixels in 0..1
        d_slice = (out["sliced4"][2] - out["plain4"][2]).abs().max().item() / 2
        print(f"VAE 512px decode: plain {out['plain'][0]:.2f} s (+{out['plain'][1]:.0f} MB) | tiled 256px "
              f"{out['tiled'][0]:.2f} s (+{out['tiled'][1]:.0f} MB; ratio {out['tiled'][0] / out['plain'][0]:.2f}; "
              f"pixels max|diff| {d_tile:.3f}) | batch 4: plain {out['plain4'][0]:.2f} s (+{out['plain4'][1]:.0f} MB) "
              f"sliced {out['sliced4'][0]:.2f} s (+{out['sliced4'][1]:.0f} MB), max|diff| {d_slice:.1e}", flush=True)

        # bf16
        def autocast_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return step()

        bf = alternate({"fp32": step, "autocast": autocast_step}, args.repeats)
        d_auto = (autocast_step().float() - ref_step).abs().max().item()
        unet.to(torch.bfloat16)
        try:
            with torch.no_grad():
                cast = lambda: unet(x.bfloat16(), t, encoder_hidden_states=emb.bfloat16()).sample  # noqa: E731
                bf["cast"] = alternate({"cast": cast}, args.repeats)["cast"]
                d_cast = (cast().float() - ref_step).abs().max().item()
        finally:
            unet.to(torch.float32)
        scale = ref_step.abs().max().item()
        print(f"bf16: UNet step autocast {bf['autocast']:.3f} s (ratio {bf['autocast'] / bf['fp32']:.2f}, "
              f"max|diff| {d_auto:.1e}) | UNet in bf16 {bf['cast']:.3f} s (ratio {bf['cast'] / bf['fp32']:.2f}, "
              f"max|diff| {d_cast:.1e}) | fp32 {bf['fp32']:.3f} s; output scale {scale:.2f}", flush=True)

        if args.compile and not compiled_done:
            compiled_done = True
            fast = torch.compile(unet)
            with torch.no_grad():
                compile_s = timed(lambda f=fast: f(x, t, encoder_hidden_states=emb))
                cmp = alternate({"eager": step, "compiled": lambda f=fast: f(x, t, encoder_hidden_states=emb)},
                                args.repeats)
                d_c = (fast(x, t, encoder_hidden_states=emb).sample - ref_step).abs().max().item()
            print(f"torch.compile: compile (first call) {compile_s:.1f} s | step {cmp['compiled']:.3f} s vs eager "
                  f"{cmp['eager']:.3f} s (ratio {cmp['compiled'] / cmp['eager']:.2f}), max|diff| {d_c:.1e}; "
                  f"pays after {compile_s / max(1e-9, cmp['eager'] - cmp['compiled']):.0f} steps"
                  if cmp['eager'] > cmp['compiled'] else
                  f"torch.compile: compile {compile_s:.1f} s, step {cmp['compiled']:.3f} s vs eager "
                  f"{cmp['eager']:.3f} s: no gain", flush=True)


if __name__ == "__main__":
    main()

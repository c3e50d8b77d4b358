"""ControlNet graph vs diffusers' StableDiffusionControlNetPipeline on the same weights, in the same process.

    /work/venv/bin/python bench/bench_controlnet.py [--config tiny|mid] [--steps 20] [--repeats 5]

Both sides use the modules ipgraph loaded (checkpoint + ControlNet files), the same scheduler, prompt, hint,
size and seed. The ipgraph number is a whole graph run in which only KSampler re-executes (the seed changes
between repeats; loaders, text encoding and the hint are cached, as in an interactive session); the diffusers
number is one pipeline call (it re-encodes the prompt each time, which is small next to sampling). Medians
are compared; the target is ipgraph / diffusers <= 1.05. "mid" is the ~100M-parameter SD1.5 (written on
first use, ~400 MB) with a ControlNet made from its UNet, at 512 px.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

PROMPT, NEGATIVE = "a cozy cottage by a tree, photo", "blurry"


def prepare(models_dir: Path, config: str) -> tuple[str, str, int]:
    """Write the models the config needs; returns (checkpoint name, ControlNet name, image size)."""
    from ipgraph.nodes.controlnet.model import save_controlnet
    from ipgraph.nodes.tiny import write_all
    from ipgraph.nodes.tiny.common import atomic_write
    from ipgraph.nodes.tiny.sd import build_tiny, write_tiny_models

    if config == "tiny":
        write_all(models_dir)
        return "tiny-sd15.safetensors", "tiny-controlnet-sd15.safetensors", 64
    write_tiny_models(models_dir, include_mid=True)
    target = models_dir / "controlnet" / "mid-controlnet-sd15.safetensors"
    if not target.exists():
        from diffusers import ControlNetModel

        target.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = ControlNetModel.from_unet(build_tiny("sd15-mid")["unet"])
        atomic_write(target, lambda tmp: save_controlnet(tmp, net))
    return "mid-sd15.safetensors", target.name, 512


def graph(ckpt: str, cn: str, size: int, steps: int, seed: int):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    img = g.add("LoadImage", id="img", image="scene.png")
    scaled = g.add("ImageScale", id="scale", image=img.image, width=size, height=size, crop="center")
    edges = g.add("CannyEdge", id="canny", image=scaled.image)
    net = g.add("ControlNetLoader", id="cn", name=cn)
    apply = g.add("ControlNetApply", id="apply", positive=pos.conditioning, negative=neg.conditioning,
                  control_net=net.control_net, image=edges.image, strength=1.0)
    lat = g.add("EmptyLatentImage", id="lat", width=size, height=size)
    g.add("KSampler", id="ks", model=ck.model, positive=apply.positive, negative=apply.negative,
          latent_image=lat.latent, seed=seed, steps=steps, cfg=7.0, sampler_name="euler", scheduler="normal")
    return g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="ipgraph-bench-"))
    ckpt, cn, size = prepare(models_dir, args.config)
    runtime = Runtime.create(models_dir=models_dir, output_dir=models_dir / "out", input_dir=models_dir / "in",
                             device=args.device)
    engine = Engine(REGISTRY, runtime)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)

    first = engine.run(graph(ckpt, cn, size, args.steps, 0), outputs=["ks"])  # loads and caches everything
    out = first.outputs
    model, clip, vae = out["ckpt"].model, out["ckpt"].clip, out["ckpt"].vae
    pipe = StableDiffusionControlNetPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        controlnet=out["cn"].control_net.net, scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    hint = out["canny"].image.permute(0, 3, 1, 2).contiguous()

    def run_diffusers(seed: int):
        return pipe(PROMPT, image=hint, negative_prompt=NEGATIVE, height=size, width=size,
                    num_inference_steps=args.steps, guidance_scale=7.0, output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(seed)).images

    ours, theirs = [], []
    for i in range(args.repeats + 1):  # the first pair warms up
        seed = i + 1
        sync()
        t0 = time.perf_counter()
        got = engine.run(graph(ckpt, cn, size, args.steps, seed), outputs=["ks"]).outputs["ks"].latent.samples
        sync()
        t1 = time.perf_counter()
        expected = run_diffusers(seed)
        sync()
        t2 = time.perf_counter()
        if i:
            ours.append(t1 - t0)
            theirs.append(t2 - t1)
    diff = (got.float().cpu() - expected.float().cpu()).abs().max().item()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"config={args.config} size={size} steps={args.steps} device={runtime.device} dtype={runtime.dtype} "
          f"threads={args.threads}")
    print(f"ipgraph  median {a * 1000:8.1f} ms   ({', '.join(f'{t * 1000:.0f}' for t in ours)})")
    print(f"diffusers median {b * 1000:8.1f} ms   ({', '.join(f'{t * 1000:.0f}' for t in theirs)})")
    print(f"ratio ipgraph/diffusers = {a / b:.3f} (target <= 1.05); max |latent diff| = {diff:.2e}")


if __name__ == "__main__":
    main()

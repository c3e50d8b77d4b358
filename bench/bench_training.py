"""IP-Adapter training: ipgraph's loop vs the reference recipe's loop on the same data, models and settings.

    python bench/bench_training.py [--models-dir DIR] [--model tiny|mid|both] [--steps N]

Per model (tiny SD1.5 at 64 px, batch 8; the ~100M-parameter "mid" SD1.5 at 128 px, batch 2; both with the
tiny CLIP vision encoder, base variant, CPU, fp32, one thread), measured in one process:
  ref        : the tutorial_train.py loop body written out literally (tests/training/reference_recipe.py):
               reference preprocessing, VAE, text and image encoders every step, AdamW
  ipgraph    : Trainer with cached image embeddings (the default) -> time ratio ipgraph / ref
  no-cache   : Trainer encoding the images every step, as the reference does -> the cache's gain
and the peak RSS of a child process doing only one of the loops (ratio ipgraph / ref).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"tiny": dict(ckpt="tiny-sd15.safetensors", size=64, batch=8, images=8),
            "mid": dict(ckpt="mid-sd15.safetensors", size=128, batch=2, images=8)}


def setup(models_dir: Path, kind: str):
    import torch

    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.tiny import write_all
    from ipgraph.nodes.tiny.sd import write_tiny_models
    from ipgraph.nodes.training import load_base, load_encoder, make_tiny_dataset, read_records

    torch.set_num_threads(1)
    if not (models_dir / "clip_vision" / "tiny-clip-vision.safetensors").exists():
        write_all(models_dir)
    if kind == "mid":
        write_tiny_models(models_dir, include_mid=True)
    s = SETTINGS[kind]
    runtime = Runtime.create(models_dir=models_dir, device="cpu", dtype="float32")
    data, images = make_tiny_dataset(models_dir.parent / f"bench-train-data-{kind}", n=s["images"], size=s["size"])
    base, _ = load_base(runtime, s["ckpt"])
    encoder, enc_path = load_encoder(runtime, "tiny-clip-vision.safetensors")
    return runtime, base, encoder, enc_path, read_records(data, images), s


def ipgraph_loop(models_dir, kind, steps, cache=True):
    from ipgraph.nodes.training import TrainConfig, Trainer

    runtime, base, enc, enc_path, records, s = setup(models_dir, kind)
    config = TrainConfig(steps=steps + 1, batch_size=s["batch"], resolution=s["size"], cache_embeds=cache)
    trainer = Trainer(base, enc, records, config, encoder_source=enc_path,
                      cache_dir=runtime.models_dir / ".cache" / "train-embeds")
    marks = []
    trainer.train(on_step=lambda t, loss: marks.append(time.perf_counter()))
    return steps / (marks[-1] - marks[0])  # the first step (warm-up, text cache filling) is not timed


def reference_loop(models_dir, kind, steps):
    import torch
    from diffusers import DDPMScheduler

    from tests.training.reference_recipe import (
        ImageProjModel,
        build_reference,
        reference_batch,
        reference_loss,
    )

    runtime, base, enc, _, records, s = setup(models_dir, kind)
    unet = base.unet  # this process only runs the reference: its set-up may rewrite the processors
    torch.manual_seed(0)
    proj = ImageProjModel(int(unet.config.cross_attention_dim), int(enc.config.projection_dim), 4)
    ip_adapter = build_reference(unet, proj, 4)
    params = [*ip_adapter.image_proj_model.parameters(), *ip_adapter.adapter_modules.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(base.scheduler_config)
    rng = random.Random(0)
    marks = []
    order = []
    for _step in range(steps + 1):
        if not order:
            order = rng.sample(range(len(records)), len(records))
        idx, order = order[: s["batch"]], order[s["batch"]:]
        r = [rng.random() for _ in idx]
        drop_image = [x < 0.05 or 0.10 <= x < 0.15 for x in r]
        blank = [0.05 <= x < 0.15 for x in r]
        batch = reference_batch([records[i] for i in idx], base.tokenizers[0], s["size"], 224, drop_image, blank)
        shape = (len(idx), 4, s["size"] // 8, s["size"] // 8)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),)).long()
        loss, _ = reference_loss(ip_adapter, base.vae, base.text_encoders[0], enc, scheduler, batch, "base",
                                 torch.randn(shape), torch.randn(shape), t)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
    return steps / (marks[-1] - marks[0])


LOOPS = {"ipgraph": lambda d, k, n: ipgraph_loop(d, k, n), "no-cache": lambda d, k, n: ipgraph_loop(d, k, n, False),
         "ref": reference_loop}


def child(models_dir, kind, which, steps) -> None:
    rate = LOOPS[which](models_dir, kind, steps)
    print(json.dumps({"rate": rate, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def in_child(models_dir, kind, which, steps) -> dict:
    out = subprocess.run([sys.executable, __file__, "--models-dir", str(models_dir), "--child", kind, which,
                          "--steps", str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", choices=["tiny", "mid", "both"], default="both")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 10 tiny, 4 mid)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir = Path(args.models_dir).resolve()
    if args.child:
        child(models_dir, args.child[0], args.child[1], args.steps)
        return
    for kind in (["tiny", "mid"] if args.model == "both" else [args.model]):
        steps = args.steps or (10 if kind == "tiny" else 4)
        ipgraph_loop(models_dir, kind, 1)  # writes the embedding cache once, as a user's first run does
        rates = {which: LOOPS[which](models_dir, kind, steps) for which in ("ref", "ipgraph", "no-cache")}
        rss = {which: in_child(models_dir, kind, which, steps)["rss_mb"] for which in ("ref", "ipgraph")}
        s = SETTINGS[kind]
        print(f"{kind} ({s['ckpt']}, {s['size']} px, batch {s['batch']}, {steps} timed steps, CPU, 1 thread)")
        print(f"  steps/s   ref {rates['ref']:.3f}   ipgraph {rates['ipgraph']:.3f}   "
              f"no-cache {rates['no-cache']:.3f}")
        print(f"  time ratio ipgraph/ref {rates['ref'] / rates['ipgraph']:.2f}   "
              f"cache gain (no-cache time / cached time) {rates['ipgraph'] / rates['no-cache']:.2f}x")
        print(f"  peak RSS  ref {rss['ref']:.0f} MB   ipgraph {rss['ipgraph']:.0f} MB   "
              f"ratio {rss['ipgraph'] / rss['ref']:.2f}")


if __name__ == "__main__":
    main()

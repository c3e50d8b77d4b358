"""ComfyUI_IPAdapter_plus nodes on the tiny models: what the per-frame, tiled and unified-loader paths cost.

    python bench/bench_ipadapter_plus.py

1. IPAdapterBatch with 16 reference frames (ImageBatch ×4) over 16 latents vs IPAdapterAdvanced with one image
   broadcast to the 16 latents: the apply node alone (encode + project) and the whole run, time ratios.
2. IPAdapterTiled: encode cost per tile, against one whole-image IPAdapterAdvanced encode.
3. IPAdapterUnifiedLoader resolution with 50 adapter files (+ 3 encoders) in the models folder: headers only,
   cold (nothing cached) and warm (descriptions cached by file stat), against loading ONE adapter's tensors.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

import ipgraph.nodes  # noqa: E402,F401
from ipgraph.engine import REGISTRY, Engine  # noqa: E402
from ipgraph.engine.comfy import from_comfy_api  # noqa: E402
from ipgraph.nodes.core.runtime import Runtime  # noqa: E402
from ipgraph.nodes.ipadapter import describe_unet, load_ipadapter, presets  # noqa: E402
from ipgraph.nodes.tiny import write_all  # noqa: E402
from ipgraph.nodes.tiny.sd import build_tiny  # noqa: E402


def best(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def prompt(apply_type, image, batch, extra, steps=2, doublings=0):
    """txt2img with one apply node; ``doublings`` ImageBatch nodes make 2**doublings reference frames."""
    p = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
         "ipa": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "tiny-ip-adapter_sd15.safetensors"}},
         "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny-clip-vision.safetensors"}},
         "img": {"class_type": "LoadImage", "inputs": {"image": image}},
         "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": "a bear"}},
         "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ck", 1], "text": "blurry"}},
         "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
         "ks": {"class_type": "KSampler", "inputs": {"model": ["apply", 0], "positive": ["pos", 0],
                                                     "negative": ["neg", 0], "latent_image": ["lat", 0], "seed": 1,
                                                     "steps": steps, "cfg": 6.0, "sampler_name": "euler",
                                                     "scheduler": "normal", "denoise": 1.0}},
         "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ck", 2]}},
         "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}}
    ref = "img"
    for i in range(doublings):
        p[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": [ref, 0], "image2": [ref, 0]}}
        ref = f"b{i}"
    p["apply"] = {"class_type": apply_type, "inputs": {"model": ["ck", 0], "ipadapter": ["ipa", 0],
                                                       "image": [ref, 0], "clip_vision": ["cv", 0], **extra}}
    return from_comfy_api(p)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ipplus-bench-"))
    models = work / "models"
    write_all(models)
    rt = Runtime.create(models_dir=models, output_dir=work / "out", input_dir=work / "input", device="cpu",
                        dtype="float32")
    eng = Engine(REGISTRY, rt)
    common = {"weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
    adv = {**common, "combine_embeds": "concat"}
    bat = {**common, "encode_batch_size": 0}
    counter = iter(range(10**6))

    def apply_time(apply_type, image, extra, doublings=0):
        """The apply node alone (upstream cached; a new weight each call makes only it re-run)."""
        g = prompt(apply_type, image, 16, {**extra, "weight": 0.8 + next(counter) * 1e-6}, doublings=doublings)
        eng.run(g, outputs=[n for n in g.nodes if n not in ("apply", "ks", "dec", "out")])
        t = time.perf_counter()
        eng.run(g, outputs=["apply"])
        return time.perf_counter() - t

    def run_time(apply_type, extra, doublings=0):
        g = prompt(apply_type, "ipa_pet.png", 16, {**extra, "weight": 0.8 + next(counter) * 1e-6},
                   doublings=doublings)
        eng.run(g, outputs=[n for n in g.nodes if n not in ("apply", "ks", "dec", "out")])
        t = time.perf_counter()
        eng.run(g)
        return time.perf_counter() - t

    # 1. per-latent embeddings vs one broadcast encoding ------------------------------------------------------
    apply_time("IPAdapterBatch", "ipa_pet.png", bat, 4)  # warm-up
    t16 = min(apply_time("IPAdapterBatch", "ipa_pet.png", bat, 4) for _ in range(3))
    t1 = min(apply_time("IPAdapterAdvanced", "ipa_pet.png", adv) for _ in range(3))
    print(f"1. apply node: IPAdapterBatch, 16 frames -> 16 latents {t16 * 1e3:.1f} ms vs IPAdapterAdvanced, one "
          f"encoding broadcast {t1 * 1e3:.1f} ms -> ratio {t16 / t1:.2f}")
    r16 = min(run_time("IPAdapterBatch", bat, 4) for _ in range(2))
    r1 = min(run_time("IPAdapterAdvanced", adv) for _ in range(2))
    print(f"   whole run (apply + KSampler 2 steps on 16 latents + decode): {r16:.2f} s vs {r1:.2f} s "
          f"-> ratio {r16 / r1:.2f}")

    # 2. tiled encode cost per tile ---------------------------------------------------------------------------
    from ipgraph.nodes.ipadapter.imageprep import reference_tiles

    tall = torch.zeros(1, 128, 64, 3)
    n_tiles = len(reference_tiles(tall, None)[0])
    tiled = {**adv, "sharpening": 0.0}
    apply_time("IPAdapterTiled", "ipa_tall.png", tiled)
    tt = min(apply_time("IPAdapterTiled", "ipa_tall.png", tiled) for _ in range(3))
    print(f"2. IPAdapterTiled on the 64x128 reference: {n_tiles} tiles in {tt * 1e3:.1f} ms = "
          f"{tt / n_tiles * 1e3:.1f} ms per tile vs {t1 * 1e3:.1f} ms for one whole-image IPAdapterAdvanced "
          f"-> {tt / n_tiles / t1:.2f}x per tile")

    # 3. unified loader resolution over 50 files ----------------------------------------------------------------
    big = work / "models50"
    (big / "ipadapter").mkdir(parents=True)
    shutil.copytree(models / "clip_vision", big / "clip_vision")
    sources = sorted((models / "ipadapter").glob("*.safetensors"))
    for i in range(50):
        shutil.copy(sources[i % len(sources)], big / "ipadapter" / f"{i:02d}-{sources[i % len(sources)].name}")
    rt50 = Runtime.create(models_dir=big, device="cpu", dtype="float32")
    unet = describe_unet(build_tiny("sd15")["unet"])

    def resolve(cold):
        if cold:
            presets._cache.clear()
        presets.resolve("PLUS (high strength)", unet, presets.scan(rt50, "ipadapter"),
                        presets.scan(rt50, "clip_vision"))

    cold, warm = best(lambda: resolve(True)), best(lambda: resolve(False))
    one = best(lambda: load_ipadapter(big / "ipadapter" / f"00-{sources[0].name}"))
    print(f"3. UnifiedLoader resolution, 50 adapter files + {len(rt50.list_models('clip_vision'))} encoders, headers "
          f"only: cold {cold * 1e3:.1f} ms ({cold / 50 * 1e3:.2f} ms per file), warm {warm * 1e3:.1f} ms; loading "
          f"one adapter's tensors {one * 1e3:.1f} ms -> cold resolution = {cold / one:.1f}x one load")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""ComfyUI core nodes against their peers, measured in one process on the tiny models:

- ImageUpscaleWithModel (engine, model manager, tiling) vs calling spandrel's model directly;
- CLIPTextEncode with an ``embedding:`` textual inversion vs the same prompt without it.

    python bench/bench_comfy.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ipgraph.nodes  # noqa: E402,F401
from ipgraph.engine import REGISTRY, Engine, Graph  # noqa: E402
from ipgraph.nodes.comfy.upscale import load_upscale_model  # noqa: E402
from ipgraph.nodes.core.runtime import Runtime  # noqa: E402
from ipgraph.nodes.tiny import write_all  # noqa: E402
from ipgraph.nodes.tiny.upscale import TINY_ESRGAN  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="image side for the upscaler")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    write_all(root / "models")
    runtime = Runtime.create(models_dir=root / "models", output_dir=root / "out", input_dir=root / "in",
                             device="cpu", dtype="float32")
    engine = Engine(REGISTRY, runtime)
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    model = engine.run(_loader_graph(), outputs=["m"]).outputs["m"].UPSCALE_MODEL
    node = REGISTRY["ImageUpscaleWithModel"]

    class Ctx:
        resources = runtime

        def check_cancelled(self):
            pass

    via_node = best(lambda: node.fn(node.inputs_model(upscale_model=model, image=image), Ctx()), args.repeat)
    descriptor = load_upscale_model(runtime.model_path("upscale_models", TINY_ESRGAN)).descriptor
    with torch.no_grad():
        direct = best(lambda: descriptor(image.movedim(-1, 1)), args.repeat)
    print(f"ImageUpscaleWithModel {args.size}px x4: node {via_node * 1e3:.1f} ms, spandrel direct "
          f"{direct * 1e3:.1f} ms, ratio {via_node / direct:.2f}")

    (runtime.models_dir / "embeddings").mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(4, 32)}}, runtime.models_dir / "embeddings" / "b.pt")
    enc = REGISTRY["CLIPTextEncode"]
    clip = engine.run(_ckpt_graph(), outputs=["c"]).outputs["c"].CLIP
    plain = best(lambda: enc.fn(enc.inputs_model(text="a polar bear in the snow", clip=clip), Ctx()), args.repeat)
    emb = best(lambda: enc.fn(enc.inputs_model(text="a polar embedding:b bear in the snow", clip=clip), Ctx()),
               args.repeat)
    print(f"CLIPTextEncode tiny SD1.5: plain {plain * 1e3:.2f} ms, with a 4-vector embedding {emb * 1e3:.2f} ms, "
          f"ratio {emb / plain:.2f}")


def _loader_graph() -> Graph:
    g = Graph()
    g.add("UpscaleModelLoader", id="m", model_name=TINY_ESRGAN)
    return g


def _ckpt_graph() -> Graph:
    g = Graph()
    g.add("CheckpointLoaderSimple", id="c", ckpt_name="tiny-sd15.safetensors")
    return g


if __name__ == "__main__":
    main()

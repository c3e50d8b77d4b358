"""The workloads of the worker tests: the bundled tiny txt2img / IP-Adapter graphs with seeds, steps and
checkpoints varied, and a reference run of each on a plain in-process engine."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ipgraph.graphs import GRAPHS_DIR

SECOND_CKPT = "tiny-sd15-b.safetensors"  # a second checkpoint file: a copy of tiny-sd15 under another name


def add_second_checkpoint(models_dir: Path) -> None:
    target = Path(models_dir) / "checkpoints" / SECOND_CKPT
    if not target.exists():
        shutil.copyfile(Path(models_dir) / "checkpoints" / "tiny-sd15.safetensors", target)


def copy_reference_image(input_dir: Path) -> None:
    Path(input_dir).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GRAPHS_DIR / "assets" / "ipa_bear_ref.png", Path(input_dir) / "ipa_bear_ref.png")


def graph(seed: int, steps: int = 4, ipadapter: bool = False, ckpt: str = "tiny-sd15.safetensors",
          prefix: str = "w") -> dict:
    name = "ipadapter_txt2img.json" if ipadapter else "txt2img.json"
    doc = copy.deepcopy(json.loads((GRAPHS_DIR / name).read_text()))
    nodes = doc["nodes"]
    nodes["sampler"]["inputs"].update(seed=seed, steps=steps)
    nodes["ckpt"]["inputs"]["name"] = ckpt
    for entry in nodes.values():
        if entry["type"] == "SaveImage":
            entry["inputs"]["filename_prefix"] = prefix
    return doc


def mixed_workload(n: int) -> list[dict]:
    """Two checkpoints x IP-Adapter on/off, seeds varying, in an interleaved order."""
    out = []
    for i in range(n):
        ckpt = "tiny-sd15.safetensors" if i % 2 == 0 else SECOND_CKPT
        out.append(graph(seed=100 + i, steps=2, ipadapter=(i // 2) % 2 == 1, ckpt=ckpt, prefix=f"mix{i}"))
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))

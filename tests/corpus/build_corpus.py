"""How tests/corpus/workflows/ was made (run by hand; the tests only read its output).

    python tests/corpus/build_corpus.py EXAMPLES_DIR COMFYUI_WORKFLOWS_DIR

EXAMPLES_DIR is a checkout of comfyanonymous/ComfyUI_examples: every PNG there carries the editor's graph
(``workflow``, UI format) and the prompt that ran (``prompt``, API format), both written by ComfyUI itself.
COMFYUI_WORKFLOWS_DIR holds API-format graphs from comfyanonymous/ComfyUI's tests (default-0.json,
sd-1.5-lora-0.json, default_graph_sdxl1_0.json). Only SD1.x/SD2.x/SDXL image workflows are kept. The one
change made to the files is the model names, mapped to the tiny models (``MODEL_MAP``); the workflow
structure, widget values, seeds and prompts are ComfyUI's. ``manifest.json`` records each file's source and
the node types it needs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "workflows"
EXAMPLES_COMMIT = "f9431bb"  # comfyanonymous/ComfyUI_examples HEAD used
KEEP_DIRS = ("2_pass_txt2img", "area_composition", "controlnet", "gligen", "hypernetworks", "img2img", "inpaint",
             "lcm", "lora", "model_merging", "noisy_latent_composition", "sdturbo", "sdxl",
             "textual_inversion_embeddings", "upscale_models")
SKIP_FILES = ("hypernetwork_example_output.png",)  # the same graph as hypernetwork_example.png

SDXL = re.compile(r"(sd_xl|sdxl|XL_|cosxl)", re.I)
INPAINT = re.compile(r"inpaint", re.I)
MODEL_INPUTS = {"ckpt_name": "checkpoints", "vae_name": "vae", "control_net_name": "controlnet",
                "clip_name": "clip_vision", "lora_name": "loras", "model_name": "upscale_models"}


def map_model(kind: str, name: str) -> str:
    """A real model file name → the tiny model of the same family (what the tests have)."""
    if kind == "checkpoints":
        if SDXL.search(name):
            return "tiny-sdxl.safetensors"
        return "tiny-sd15-inpaint.safetensors" if INPAINT.search(name) else "tiny-sd15.safetensors"
    if kind == "vae":
        return "tiny-sd15-vae.safetensors"
    if kind == "controlnet":
        return "tiny-controlnet-sdxl.safetensors" if SDXL.search(name) else "tiny-controlnet-sd15.safetensors"
    if kind == "clip_vision":
        return "tiny-clip-vision.safetensors"
    if kind == "loras":
        return "tiny-sdxl-lora-kohya.safetensors" if SDXL.search(name) else "tiny-sd15-lora-kohya.safetensors"
    if kind == "upscale_models":
        return "tiny-RealESRGAN_x4.pth"  # the one tiny upscaler (x2 models too: the graphs rescale after it)
    return name


def map_value(input_name: str, value):
    kind = MODEL_INPUTS.get(input_name)
    return map_model(kind, value) if kind and isinstance(value, str) else value


def map_api(prompt: dict) -> dict:
    for entry in prompt.values():
        inputs = entry.get("inputs") or {}
        for k, v in list(inputs.items()):
            inputs[k] = map_value(k, v)
    return prompt


def map_ui(workflow: dict, api: dict | None) -> dict:
    """Model names in widgets_values: replaced where the API prompt of the same PNG names the same value."""
    originals = set()
    for entry in (api or {}).values():
        for k, v in (entry.get("inputs") or {}).items():
            if k in MODEL_INPUTS and isinstance(v, str):
                originals.add((k, v))
    by_value = {v: map_value(k, v) for k, v in originals}
    for node in workflow.get("nodes", []):
        values = node.get("widgets_values")
        if isinstance(values, list):
            node["widgets_values"] = [by_value.get(v, v) if isinstance(v, str) else v for v in values]
    return workflow


def api_types(prompt: dict) -> list[str]:
    return sorted({e["class_type"] for e in prompt.values()})


def main(examples: Path, comfy_workflows: Path) -> None:
    OUT.mkdir(exist_ok=True)
    manifest = []
    for folder in KEEP_DIRS:
        for png in sorted((examples / folder).glob("*.png")):
            if png.name in SKIP_FILES:
                continue
            info = Image.open(png).info
            if "prompt" not in info or "workflow" not in info:
                continue
            stem = f"{folder}__{png.stem}"
            api = map_api(json.loads(info["prompt"]))
            ui = map_ui(json.loads(info["workflow"]), json.loads(info["prompt"]))
            source = f"comfyanonymous/ComfyUI_examples@{EXAMPLES_COMMIT}:{folder}/{png.name}"
            (OUT / f"{stem}.api.json").write_text(json.dumps(api, indent=1) + "\n")
            (OUT / f"{stem}.ui.json").write_text(json.dumps(ui, indent=1) + "\n")
            manifest.append({"file": f"{stem}.api.json", "format": "api", "source": source + " (prompt chunk)",
                             "pair": f"{stem}.ui.json", "needs": api_types(api)})
            manifest.append({"file": f"{stem}.ui.json", "format": "ui", "source": source + " (workflow chunk)",
                             "pair": f"{stem}.api.json", "needs": api_types(api)})
    for name in ("default-0.json", "sd-1.5-lora-0.json", "default_graph_sdxl1_0.json"):
        path = comfy_workflows / name
        api = map_api(json.loads(path.read_text()))
        folder = "tests/inference/graphs" if name.startswith("default_graph") else "tests/inference/workflows"
        out = f"comfyui__{Path(name).stem}.api.json"
        (OUT / out).write_text(json.dumps(api, indent=1) + "\n")
        manifest.append({"file": out, "format": "api", "source": f"comfyanonymous/ComfyUI:{folder}/{name}",
                         "needs": api_types(api)})
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest)} workflows in {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

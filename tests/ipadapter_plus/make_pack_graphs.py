"""Turn ComfyUI_IPAdapter_plus's example workflows (UI format) into bundled API-format graphs on the tiny models.

    python tests/ipadapter_plus/make_pack_graphs.py --from-pack EXAMPLES_DIR   # copy + map names into the corpus
    python tests/ipadapter_plus/make_pack_graphs.py                             # corpus -> graphs/ipadapter_plus_*.json

Step 1 keeps each original UI file whole under tests/corpus/ipadapter_plus/, changing only the model and image
names (real checkpoints -> tiny ones, the example pictures -> bundled assets). Step 2 converts them:

* node widgets_values are mapped to ComfyUI's widget names in INPUT_TYPES order (a "control_after_generate"
  value follows every seed; LoadImage carries an extra "upload" value); values a file lacks (examples saved
  by older versions of the pack, before embeds_scaling / encode_batch_size / weight_type existed) keep their
  defaults, which is what ComfyUI does when it loads them;
* links become ``[node_id, slot]``; a widget converted to an input and fed by a PrimitiveNode takes the
  primitive's value; Note / PrimitiveNode / Reroute nodes disappear, as in ComfyUI's own API export;
* for the tiny models only: 64×64 latents, 2 steps, and samplers ipgraph has (ddpm -> euler,
  dpmpp_2m_sde_gpu -> dpmpp_2m_sde, schedules other than karras -> normal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "ipadapter_plus"
GRAPHS = ROOT / "graphs"

# The pack's examples that need only ComfyUI core nodes, the pack's nodes and SD1.5/SDXL.
EXAMPLES = ("simple", "advanced", "combine_embeds", "negative_image", "noise_injection", "precise_composition",
            "precise_weight_type", "style_composition", "tiled", "weight_types", "weighted_embeds", "weights")

IMAGES = {"warrior_woman.png": "ipa_face_a.png", "anime_illustration.png": "ipa_style.png",
          "trees.jpg": "ipa_pet.png", "castle.jpg": "ipa_clothing.png", "girl_sitting.png": "ipa_tall.png",
          "coloring_landscape.png": "ipa_style.png", "black_car.jpg": "ipa_bear_ref.png",
          "bw_texture_waves.jpg": "ipa_style.png"}

# ComfyUI core widget names in INPUT_TYPES order ("*" = a frontend-only value to skip).
CORE_WIDGETS = {
    "CheckpointLoaderSimple": ["ckpt_name"],
    "CLIPVisionLoader": ["clip_name"],
    "CLIPTextEncode": ["text"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "KSampler": ["seed", "*", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "LoadImage": ["image", "*"],
    "SaveImage": ["filename_prefix"],
    "PreviewImage": [],
    "VAEDecode": [],
    "ImageBatch": [],
}
UI_ONLY = {"Note", "PrimitiveNode", "Reroute", "MarkdownNote"}
SAMPLERS = {"ddpm": "euler", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde"}


def map_names(doc: dict) -> dict:
    """The UI file with model and image names mapped to the tiny models and bundled assets."""
    for n in doc["nodes"]:
        vals = n.get("widgets_values")
        if not isinstance(vals, list) or not vals:
            continue
        if n["type"] == "CheckpointLoaderSimple":
            vals[0] = "tiny-sdxl.safetensors" if "xl" in vals[0].lower() or "proteus" in vals[0].lower() \
                else "tiny-sd15.safetensors"
        elif n["type"] == "IPAdapterModelLoader":
            vals[0] = "tiny-" + vals[0]
        elif n["type"] == "CLIPVisionLoader":
            vals[0] = "tiny-clip-vision-wide.safetensors" if "bigG" in vals[0] else "tiny-clip-vision.safetensors"
        elif n["type"] == "LoadImage":
            vals[0] = IMAGES.get(vals[0], "ipa_pet.png")
    return doc


def widget_names(class_type: str) -> list[str]:
    if class_type in CORE_WIDGETS:
        return CORE_WIDGETS[class_type]
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY

    nt = REGISTRY[class_type]
    return [n for n, s in nt.inputs.items() if s.socket is None]


def to_api(doc: dict) -> dict:
    nodes = {n["id"]: n for n in doc["nodes"]}
    links = {link[0]: link for link in doc["links"]}
    api = {}
    for n in doc["nodes"]:
        if n["type"] in UI_ONLY or n.get("mode", 0) in (2, 4):  # muted / bypassed nodes are not exported
            continue
        inputs: dict = {}
        names = widget_names(n["type"])
        values = list(n.get("widgets_values") or [])
        for name, value in zip(names, values, strict=False):
            if name != "*":
                inputs[name] = value
        for inp in n.get("inputs", []):
            link = links.get(inp.get("link"))
            if link is None:
                continue
            src = nodes[link[1]]
            if src["type"] == "PrimitiveNode":
                inputs[inp["name"]] = src["widgets_values"][0]
            else:
                inputs[inp["name"]] = [str(link[1]), link[2]]
        tiny(n["type"], inputs)
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return api


def tiny(class_type: str, inputs: dict) -> None:
    if class_type == "EmptyLatentImage":
        inputs.update(width=64, height=64)
    elif class_type == "KSampler":
        inputs["steps"] = 2
        inputs["sampler_name"] = SAMPLERS.get(inputs["sampler_name"], inputs["sampler_name"])
        if inputs.get("scheduler") != "karras":
            inputs["scheduler"] = "normal"


def make_assets() -> None:
    """ipa_tall.png: a non-square reference (64×128) for the tiled example: two assets stacked."""
    from PIL import Image

    assets = GRAPHS / "assets"
    a, b = Image.open(assets / "ipa_face_a.png").convert("RGB"), Image.open(assets / "ipa_pet.png").convert("RGB")
    tall = Image.new("RGB", (64, 128))
    tall.paste(a, (0, 0))
    tall.paste(b, (0, 64))
    tall.save(assets / "ipa_tall.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-pack", type=Path, help="the pack's examples/ folder: refresh the corpus from it")
    args = ap.parse_args()
    if args.from_pack:
        CORPUS.mkdir(parents=True, exist_ok=True)
        for name in EXAMPLES:
            doc = json.loads((args.from_pack / f"ipadapter_{name}.json").read_text())
            (CORPUS / f"ipadapter_{name}.json").write_text(json.dumps(map_names(doc), indent=1) + "\n")
        make_assets()
    for name in EXAMPLES:
        doc = json.loads((CORPUS / f"ipadapter_{name}.json").read_text())
        (GRAPHS / f"ipadapter_plus_{name}.json").write_text(json.dumps(to_api(doc), indent=1) + "\n")


if __name__ == "__main__":
    main()

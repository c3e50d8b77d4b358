"""A tiny ComfyUI API-format prompt builder for tests (links are ``[node_id, slot]``, as ComfyUI sends them).

API format with ComfyUI's class and input names is used on purpose: it resolves the same before and after the
ComfyUI core nodes (CheckpointLoaderSimple, CLIPVisionLoader, ...) become native, so these tests keep meaning
the same thing once the lead merges the other helpers' work.
"""

from __future__ import annotations

from ipgraph.engine import REGISTRY
from ipgraph.engine.comfy import from_comfy_api


class Prompt:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, id: str | None = None, **inputs) -> str:
        node_id = id or str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def graph(self):
        return from_comfy_api(self.nodes)


def out(node_id: str, slot: int = 0) -> list:
    return [node_id, slot]


def missing_nodes(prompt: dict) -> list[str]:
    """ComfyUI classes (or their inputs) the registry does not have yet: 'X' or 'X.input'."""
    missing = []
    for entry in prompt.values():
        found = REGISTRY.comfy_class(entry["class_type"])
        if found is None:
            missing.append(entry["class_type"])
            continue
        nt, renames = found
        for name in entry.get("inputs", {}):
            if renames.get(name, name) not in nt.inputs and name not in nt.renamed_inputs:
                missing.append(f"{entry['class_type']}.{name}")
    return sorted(set(missing))


def txt2img(p: Prompt, model_link, ckpt: str, *, batch: int = 1, seed: int = 3, steps: int = 3, cfg: float = 6.0,
            prompt: str = "a polar bear", negative: str = "blurry") -> str:
    """CLIPTextEncode ×2 + EmptyLatentImage + KSampler (+ VAEDecode/PreviewImage); returns the KSampler id."""
    pos = p.add("CLIPTextEncode", id="pos", clip=out(ckpt, 1), text=prompt)
    neg = p.add("CLIPTextEncode", id="neg", clip=out(ckpt, 1), text=negative)
    lat = p.add("EmptyLatentImage", id="lat", width=64, height=64, batch_size=batch)
    ks = p.add("KSampler", id="ks", model=model_link, positive=out(pos), negative=out(neg), latent_image=out(lat),
               seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal", denoise=1.0)
    dec = p.add("VAEDecode", id="dec", samples=out(ks), vae=out(ckpt, 2))
    p.add("PreviewImage", id="out", images=out(dec))
    return ks


def latent(result, ks: str = "ks"):
    value = result.outputs[ks]
    return (getattr(value, "LATENT", None) or value.latent).samples  # ComfyUI's output name, or ipgraph's older

"""IPAdapterUnifiedLoaderFaceID picks its files by reading them (the resolver of IPAdapterUnifiedLoader), for all
five FaceID presets, with the adapter's LoRA from models/loras or from inside the adapter file; bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ipgraph.engine import REGISTRY, Engine, Graph
from ipgraph.engine.executor import NodeFailed, ValidationFailed
from ipgraph.nodes.lora.patch import WeightPatch

pytest.importorskip("insightface")
pytestmark = pytest.mark.slow
CV = "tiny-clip-vision.safetensors|tiny-clip-vision-image_encoder"


def unified(engine, ckpt: str, preset: str, lora_strength=0.6):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    g.add("IPAdapterUnifiedLoaderFaceID", id="ul", model=ck.model, preset=preset, lora_strength=lora_strength)
    out = engine.run(g, outputs=["ul"]).outputs["ul"]
    return out.MODEL, out.ipadapter


def failure(engine, ckpt: str, preset: str, lora_strength=0.6) -> str:
    with pytest.raises((NodeFailed, ValidationFailed)) as info:
        unified(engine, ckpt, preset, lora_strength)
    text = str(info.value)
    assert "Traceback" not in text and "input preset" in text
    return text


def lora_sources(model) -> list[str]:
    return [Path(p.source).name for p in model.patches if isinstance(p, WeightPatch)]


def link(src, dest):
    """Hard link (the model folders refuse symlinks that lead outside them), a copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def folder(tmp_path: Path, models_dir: Path, files: dict[str, list[tuple[str, str]]]) -> Engine:
    """A models folder holding the checkpoints, InsightFace and only ``files`` (kind -> [(source, name)])."""
    from ipgraph.nodes.core.runtime import Runtime

    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(models_dir / "insightface", root / "insightface", copy_function=link)
    files = {"checkpoints": [("tiny-sd15.safetensors",) * 2, ("tiny-sdxl.safetensors",) * 2], **files}
    for kind, pairs in files.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for src, name in pairs:
            link(models_dir / kind / src, root / kind / name)
    rt = Runtime.create(models_dir=root, output_dir=tmp_path / "out", input_dir=tmp_path / "in", device="cpu",
                        dtype="float32")
    return Engine(REGISTRY, rt)


@pytest.mark.parametrize("ckpt,preset,adapter,encoder,lora", [
    ("tiny-sd15.safetensors", "FACEID", "tiny-ip-adapter-faceid_sd15.bin", CV,
     "tiny-ip-adapter-faceid_sd15_lora.safetensors"),
    ("tiny-sdxl.safetensors", "FACEID", "tiny-ip-adapter-faceid_sdxl.bin", CV,
     "tiny-ip-adapter-faceid_sdxl_lora.safetensors"),
    ("tiny-sd15.safetensors", "FACEID PLUS V2", "tiny-ip-adapter-faceid-plusv2_sd15.bin",
     CV, "tiny-ip-adapter-faceid-plusv2_sd15_lora.safetensors"),
    ("tiny-sd15.safetensors", "FACEID PORTRAIT (style transfer)",
     "tiny-ip-adapter-faceid-portrait-v11_sd15.safetensors", CV, None),
    ("tiny-sdxl.safetensors", "FACEID PORTRAIT (style transfer)", "tiny-ip-adapter-faceid-portrait_sdxl.safetensors",
     CV, None),
])
def test_presets_pick_their_files(engine, ckpt, preset, adapter, encoder, lora):
    model, pipe = unified(engine, ckpt, preset)
    assert Path(pipe.adapter.weights.info.path).name == adapter
    # the ViT-H-width encoder (its .safetensors or diffusers-folder form), never the wide ViT-bigG stand-in
    assert Path(pipe.clip_vision.source).name in encoder.split("|")
    assert lora_sources(model) == ([lora] if lora else [])
    assert pipe.insightface is not None
    model0, _ = unified(engine, ckpt, preset, lora_strength=0.0)
    assert lora_sources(model0) == []


def test_renamed_files_are_found_by_their_weights_and_the_embedded_lora_applies(tmp_path, models_dir):
    engine = folder(tmp_path, models_dir, {"ipadapter": [("tiny-ip-adapter-faceid_sd15.bin", "my-face-adapter.bin"),
                                                         ("tiny-ip-adapter_sd15.safetensors", "standard.safetensors")]})
    model, pipe = unified(engine, "tiny-sd15.safetensors", "FACEID")
    assert Path(pipe.adapter.weights.info.path).name == "my-face-adapter.bin"
    assert pipe.clip_vision is None  # FaceID (not plus) needs no CLIP vision encoder, and there is none
    assert lora_sources(model) == ["my-face-adapter.bin (its LoRA)"]


def test_faceid_preset_without_faceid_files_lists_every_file(tmp_path, models_dir):
    engine = folder(tmp_path, models_dir, {"ipadapter": [("tiny-ip-adapter_sd15.safetensors", "a.safetensors"),
                                                         ("tiny-ip-adapter-plus_sd15.safetensors", "b.safetensors")],
                                           "clip_vision": [("tiny-clip-vision.safetensors", "cv.safetensors")]})
    text = failure(engine, "tiny-sd15.safetensors", "FACEID PLUS V2")
    assert "needs a FaceID IP-Adapter" in text and "Found:" in text
    assert "a.safetensors: base adapter for SD1.5" in text and "b.safetensors: plus adapter for SD1.5" in text


def test_base_model_only_presets_and_missing_lora_are_sentences(engine, tmp_path, models_dir):
    assert "SD1.5 only" in failure(engine, "tiny-sdxl.safetensors", "FACEID PLUS - SD1.5 only")
    assert "SDXL only" in failure(engine, "tiny-sd15.safetensors", "FACEID PORTRAIT UNNORM - SDXL only (strong)")
    text = failure(engine, "tiny-sdxl.safetensors", "FACEID PORTRAIT UNNORM - SDXL only (strong)")
    assert "faceid-portrait_sdxl.safetensors: faceid-portrait adapter for SDXL" in text  # the inventory
    # a plus v2 adapter whose file carries no LoRA, and no *_lora.safetensors: say what is missing
    state = torch.load(models_dir / "ipadapter" / "tiny-ip-adapter-faceid-plusv2_sd15.bin", weights_only=True)
    state["ip_adapter"] = {k: v for k, v in state["ip_adapter"].items() if "_lora." not in k}
    (tmp_path / "src").mkdir()
    torch.save(state, tmp_path / "src" / "x-faceid-plusv2_sd15.bin")
    engine = folder(tmp_path, models_dir, {})
    root = tmp_path / "models"
    (root / "ipadapter").mkdir()
    link(tmp_path / "src" / "x-faceid-plusv2_sd15.bin", root / "ipadapter" / "x-faceid-plusv2_sd15.bin")
    (root / "clip_vision").mkdir()
    link(models_dir / "clip_vision" / "tiny-clip-vision.safetensors", root / "clip_vision" / "cv.safetensors")
    text = failure(engine, "tiny-sd15.safetensors", "FACEID PLUS V2")
    assert "needs the LoRA" in text and "x-faceid-plusv2_sd15_lora.safetensors" in text
    model, pipe = unified(engine, "tiny-sd15.safetensors", "FACEID PLUS V2", lora_strength=0.0)
    assert lora_sources(model) == [] and pipe.adapter.variant == "faceid-plusv2"

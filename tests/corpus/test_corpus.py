"""ComfyUI's own SD1.x/SDXL workflows (tests/corpus/workflows, see build_corpus.py and manifest.json), each
loaded, converted (UI format → API format → graph) and run on the tiny models.

A workflow needs node types other parts of ipgraph may not have yet: each one is skipped with the reason
"needs node X" exactly when X is not registered (or is registered without ComfyUI's inputs), so the skips
disappear as nodes land. Widget order is checked per node against /object_info: a PNG saved by ComfyUI holds
both the editor's graph and the prompt ComfyUI's own frontend made of it, so converting the first must give
the second.

To keep the suite fast on CPU, ``shrink`` runs each graph at 1/8 of its pixel sizes and at most 2 steps;
nothing else of ComfyUI's graph is changed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ipgraph.engine.comfy import EDITOR_ONLY_INPUTS, from_comfy_api
from ipgraph.engine.comfy_ui import VIRTUAL_TYPES, ui_to_api

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parents[1] / "graphs" / "assets"
MANIFEST = json.loads((HERE / "manifest.json").read_text())
MODEL_INPUTS = {"ckpt_name": "checkpoints", "vae_name": "vae", "control_net_name": "controlnet",
                "clip_name": "clip_vision", "lora_name": "loras", "model_name": "upscale_models"}
CHOICE_INPUTS = ("sampler_name", "scheduler")  # names other parts of ipgraph are adding
SIZE_INPUTS = ("width", "height", "x", "y", "left", "top", "right", "bottom")
MAX_STEPS = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_runtime(models_dir, tmp_path_factory):
    """One runtime for the whole corpus (models load once), with every image the workflows name."""
    from ipgraph.nodes.core.runtime import Runtime

    root = tmp_path_factory.mktemp("corpus")
    runtime = Runtime.create(models_dir=models_dir, output_dir=root / "output", input_dir=root / "input",
                             device="cpu", dtype="float32")
    runtime.input_dir.mkdir(parents=True, exist_ok=True)
    for entry in MANIFEST:
        if entry["format"] != "api":
            continue
        for node in json.loads((HERE / "workflows" / entry["file"]).read_text()).values():
            name = (node.get("inputs") or {}).get("image")
            if node["class_type"] in ("LoadImage", "LoadImageMask") and isinstance(name, str):
                asset = "inpaint_scene.png" if "inpaint" in name or "outpaint" in name else "scene.png"
                shutil.copy(ASSETS / asset, runtime.input_dir / name)
    _write_named_embeddings(runtime.models_dir / "embeddings", runtime.models_dir / "checkpoints")
    return runtime


def _write_named_embeddings(folder: Path, checkpoints: Path) -> None:
    """The textual inversions the workflows name (``embedding:SDA768.pt``), as A1111 ``.pt`` files of random
    vectors as wide as the tiny SD1.5 text encoder (what a user has downloaded into models/embeddings)."""
    import torch
    from safetensors import safe_open

    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    with safe_open(str(checkpoints / "tiny-sd15.safetensors"), "pt") as f:
        width = f.get_slice(key).get_shape()[-1]
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((HERE / "workflows").glob("*.json")):
        for name in re.findall(r"embedding:([\w.\-]+)", path.read_text()):
            target = folder / (name if name.endswith((".pt", ".safetensors", ".bin")) else f"{name}.pt")
            if not target.exists():
                vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(len(name)))
                torch.save({"string_to_param": {"*": vectors}, "name": target.stem}, target)


@pytest.fixture(scope="module")
def corpus_engine(corpus_runtime):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine

    return Engine(REGISTRY, corpus_runtime)


@pytest.fixture(scope="module")
def object_info(corpus_engine, corpus_runtime):
    from ipgraph.server.comfy_api import object_info

    return object_info(corpus_engine.registry, corpus_runtime)


def _ui_types(workflow: dict) -> set[str]:
    subgraphs = {d["id"] for d in ((workflow.get("definitions") or {}).get("subgraphs") or [])}
    out = set()
    for scope in [workflow, *((workflow.get("definitions") or {}).get("subgraphs") or [])]:
        for n in scope.get("nodes") or []:
            if n.get("mode", 0) not in (2, 4) and n["type"] not in VIRTUAL_TYPES and n["type"] not in subgraphs:
                out.add(n["type"])
    return out


def _needs(prompt: dict, registry, runtime) -> list[str]:
    """Why this prompt cannot run yet: node types, ComfyUI inputs or model files ipgraph does not have."""
    missing = []
    for entry in prompt.values():
        found = registry.comfy_class(entry["class_type"])
        if found is None:
            missing.append(f"needs node {entry['class_type']}")
            continue
        nt, renames = found
        absent = [k for k in entry["inputs"] if k not in EDITOR_ONLY_INPUTS and renames.get(k, k) not in nt.inputs
                  and nt.renamed_inputs.get(k, k) not in nt.inputs]
        if absent:
            missing.append(f"needs node {entry['class_type']} with ComfyUI's inputs (the registered one has no "
                           f"{', '.join(absent)})")
        for name, value in entry["inputs"].items():
            spec = nt.inputs.get(nt.renamed_inputs.get(name, name))
            if (spec is not None and spec.choices and name not in MODEL_INPUTS and isinstance(value, str)
                    and value not in spec.choices):
                missing.append(f"needs {entry['class_type']}.{name} {value!r}")
            kind = MODEL_INPUTS.get(name)
            if kind and isinstance(value, str) and not (runtime.models_dir / kind / value).exists():
                missing.append(f"needs model file {kind}/{value}")
            if isinstance(value, str):
                for emb in re.findall(r"embedding:([\w.\-]+)", value):
                    if not list((runtime.models_dir / "embeddings").glob(f"{emb}*")):
                        missing.append(f"needs embedding {emb}")
    return sorted(set(missing))


def shrink(prompt: dict) -> dict:
    """The same graph at 1/8 of its pixel sizes (multiples of 8, at least 64 wide/high) and at most 2 steps."""
    out = json.loads(json.dumps(prompt))
    for entry in out.values():
        inputs = entry["inputs"]
        for name in SIZE_INPUTS:
            value = inputs.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                value = max(8, (value // 8) // 8 * 8)
                inputs[name] = max(64, value) if name in ("width", "height") else value
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > MAX_STEPS:
            inputs["steps"] = MAX_STEPS
            for name in ("start_at_step", "end_at_step"):
                value = inputs.get(name)
                if isinstance(value, int) and value < 10000:
                    inputs[name] = min(MAX_STEPS, round(value * MAX_STEPS / steps))
        if isinstance(inputs.get("batch_size"), int):
            inputs["batch_size"] = min(inputs["batch_size"], 2)
        if isinstance(inputs.get("amount"), int):  # RepeatLatentBatch
            inputs["amount"] = min(inputs["amount"], 2)
    return out


def _load_prompt(entry: dict, object_info: dict) -> tuple[dict, list[str]]:
    doc = json.loads((HERE / "workflows" / entry["file"]).read_text())
    if entry["format"] == "api":
        return doc, []
    missing = sorted(t for t in _ui_types(doc) if t not in object_info)
    if missing:
        pytest.skip("; ".join(f"needs node {t}" for t in missing))
    return ui_to_api(doc, object_info)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_workflow_runs(entry, corpus_engine, corpus_runtime, object_info):
    prompt, warnings = _load_prompt(entry, object_info)
    needs = _needs(prompt, corpus_engine.registry, corpus_runtime)
    if needs:
        pytest.skip("; ".join(needs))
    assert not warnings, warnings
    found: list[str] = []
    graph = from_comfy_api(shrink(prompt), corpus_engine.registry, found)
    assert not found, found
    problems = corpus_engine.validate(graph)
    choice = [p for p in problems if p.type == "not_in_choices" and p.input in CHOICE_INPUTS]
    if choice and len(choice) == len(problems):
        pytest.skip("; ".join(sorted({f"needs {p.input} {graph.nodes[p.node_id].inputs[p.input]!r}"
                                       for p in choice})))
    assert not problems, [str(p) for p in problems]
    result = corpus_engine.run(graph)
    images = [img for ui in result.ui.values() for img in ui.get("images", [])]
    assert images, f"{entry['file']}: no output image"
    for img in images:
        base = {"output": corpus_runtime.output_dir}.get(img.get("type", "output"), corpus_runtime.output_dir)
        assert (Path(base) / img.get("subfolder", "") / img["filename"]).is_file() or img.get("type") == "temp"


PAIRS = [e for e in MANIFEST if e["format"] == "ui"]


@pytest.mark.parametrize("entry", PAIRS, ids=[e["file"] for e in PAIRS])
def test_ui_conversion_matches_comfyui_prompt(entry, object_info):
    """Per node: the widget order of /object_info turns the editor's widgets_values into exactly the inputs
    ComfyUI's frontend sent (the PNG's prompt). Nodes ipgraph does not describe with ComfyUI's inputs yet
    are left out of the comparison (and counted)."""
    workflow = json.loads((HERE / "workflows" / entry["file"]).read_text())
    truth = json.loads((HERE / "workflows" / entry["pair"]).read_text())
    compared, left_out = 0, set()
    converted, _ = ui_to_api(workflow, object_info)
    assert sorted(converted) == sorted(truth), "the nodes sent differ (reroutes, primitives, muted/bypassed)"
    for node_id, want in truth.items():
        want = {**want, "inputs": {k: v for k, v in want["inputs"].items() if k not in EDITOR_ONLY_INPUTS}}
        info = object_info.get(want["class_type"])
        names = set((info or {}).get("input", {}).get("required", {})) | set(
            (info or {}).get("input", {}).get("optional", {}))
        if info is None or not set(want["inputs"]) <= names:
            left_out.add(want["class_type"])
            continue
        got = converted.get(node_id)
        assert got is not None, f"node {node_id} ({want['class_type']}) missing from the conversion"
        assert got["class_type"] == want["class_type"]
        assert got["inputs"] == want["inputs"], f"node {node_id} ({want['class_type']})"
        compared += 1
    if not compared:
        pytest.skip("needs node " + ", ".join(sorted(left_out)) + " (no node of this workflow is described "
                    "with ComfyUI's inputs yet)")

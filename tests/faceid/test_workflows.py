"""The pack's FaceID example workflows (graphs/faceid/, API format, tiny models) run end to end.

They also use nodes other parts of ipgraph provide (IPAdapterUnifiedLoader, IPAdapter, ImageBatch, ComfyUI's
sampler names); a workflow whose nodes are not all registered yet is skipped saying which it needs, and one
whose only problem is the ddpm/karras sampler runs with euler/normal until ComfyUI's sampler names exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ipgraph.engine.comfy import from_comfy_api
from ipgraph.graphs import GRAPHS_DIR

pytest.importorskip("insightface")
pytestmark = pytest.mark.slow
FILES = sorted((Path(GRAPHS_DIR) / "faceid").glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_faceid_workflow_runs(engine, path):
    doc = json.loads(path.read_text())
    missing = sorted({e["class_type"] for e in doc.values() if engine.registry.comfy_class(e["class_type"]) is None})
    if missing:
        pytest.skip(f"needs node {', '.join(missing)}")
    graph = from_comfy_api(doc, engine.registry)
    problems = engine.validate(graph)
    names = [p for p in problems if p.input in ("sampler_name", "scheduler")]
    if names and len(names) == len(problems):  # ddpm/karras arrive with ComfyUI's sampler names; until then
        for entry in doc.values():               # run the workflow with euler/normal instead of skipping it
            if entry["class_type"] == "KSampler":
                entry["inputs"].update(sampler_name="euler", scheduler="normal")
        graph = from_comfy_api(doc, engine.registry)
    result = engine.run(graph)
    images = [v for out in result.outputs.values() for v in dict(out).values()
              if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] == 3]
    assert images and all(torch.isfinite(i).all() for i in images)
    face = dict(result.outputs["18"])["face_image"]
    assert face.shape[1:] == ((256, 256, 3) if "portrait" in path.stem else (224, 224, 3))

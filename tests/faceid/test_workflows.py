"""The pack's FaceID example workflows (graphs/faceid/, API format, tiny models) run end to end.

They also use nodes other parts of ipgraph provide (IPAdapterUnifiedLoader taking the FaceID loader's IPADAPTER,
IPAdapter taking IPAdapterFaceID's face_image, ImageBatch) and the pack's ddpm/karras sampler, all run as written.
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
    graph = from_comfy_api(doc, engine.registry)
    assert engine.validate(graph) == []
    result = engine.run(graph)
    images = [v for out in result.outputs.values() for v in dict(out).values()
              if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] == 3]
    assert images and all(torch.isfinite(i).all() for i in images)
    face = dict(result.outputs["18"])["face_image"]
    assert face.shape[1:] == ((256, 256, 3) if "portrait" in path.stem else (224, 224, 3))

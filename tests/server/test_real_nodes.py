"""The real diffusion nodes (tiny random-weight SD1.5) through the ComfyUI API: /prompt, /ws, /view."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.server.conftest import WsClient

pytestmark = pytest.mark.slow
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def test_txt2img_through_prompt_and_view(real_server):
    from ipgraph.engine import Graph
    from ipgraph.engine.comfy import to_comfy_api

    c = real_server.client()
    info = c.get("/api/object_info").json()
    assert "tiny-sd15.safetensors" in info["LoadCheckpoint"]["input"]["required"]["name"][0]
    graph = Graph.from_json((GRAPHS / "txt2img.json").read_text(), real_server.state.registry)
    prompt = to_comfy_api(graph)
    sampler = next(n for n, e in prompt.items() if e["class_type"] == "KSampler")
    prompt[sampler]["inputs"]["steps"] = 4
    ws = WsClient(real_server, "real", features={"supports_preview_metadata": True})
    r = c.post("/api/prompt", json={"prompt": prompt, "client_id": ws.sid,
                                    "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}})
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    events = ws.until_done(pid, timeout=240)
    assert events[-1][0] == "execution_success", events[-1]
    progress = [d for t, d in events if t == "progress" and d["node"] == sampler]
    assert [p["value"] for p in progress][-1] == 4 and progress[-1]["max"] == 4
    executed = [d for t, d in events if t == "executed"]
    image = executed[-1]["output"]["images"][0]
    view = c.get("/api/view", params=image)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(view.content))
    assert png.size == (64, 64)
    assert json.loads(png.info["prompt"])[sampler]["inputs"]["steps"] == 4  # the graph travels in the PNG
    # re-run: everything cached, the image is reported again
    pid2 = c.post("/api/prompt", json={"prompt": prompt, "client_id": ws.sid}).json()["prompt_id"]
    events = ws.until_done(pid2, timeout=60)
    cached = [d for t, d in events if t == "execution_cached"][0]["nodes"]
    assert set(cached) == set(prompt)


def test_bundled_workflow_conversion_matches_object_info(real_server):
    c = real_server.client()
    listing = c.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"}).json()
    assert "txt2img.json" in [e["path"] for e in listing]
    wf = c.get("/api/userdata/workflows%2Ftxt2img.json").json()
    info = c.get("/api/object_info").json()
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    order = [n for n in info["KSampler"]["input_order"]["required"] + info["KSampler"]["input_order"]["optional"]
             if not isinstance(info["KSampler"]["input"]["required"].get(n, info["KSampler"]["input"]["optional"].get(n))[0], str)
             or info["KSampler"]["input"]["required"].get(n, info["KSampler"]["input"]["optional"].get(n))[0] in
             ("INT", "FLOAT", "STRING", "BOOLEAN")]
    values = [v for v in ks["widgets_values"] if v != "fixed"]
    doc = json.loads((GRAPHS / "txt2img.json").read_text())["nodes"]["sampler"]["inputs"]
    assert values == [doc[n] for n in order]
    assert ks["pos"] == [850.0, 150.0]

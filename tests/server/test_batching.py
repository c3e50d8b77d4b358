"""The server runs queued seed variants of one workflow as one sampling batch (``--batch``); every job still
gets its own websocket events, history entry and image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server.conftest import LiveServer, WsClient

pytestmark = pytest.mark.slow
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


def test_seed_variants_share_one_sampling_call(tmp_path, models_dir, monkeypatch):
    from ipgraph.engine import Graph
    from ipgraph.engine.comfy import to_comfy_api
    from ipgraph.nodes.diffusion import batch

    srv = LiveServer(tmp_path / "data", models_dir=models_dir, batch=4).start()
    calls = []
    original = batch.run_sampling

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "run_sampling", counting)
    try:
        prompt = to_comfy_api(Graph.from_json((GRAPHS / "txt2img.json").read_text(), srv.state.registry))
        sampler = next(n for n, e in prompt.items() if e["class_type"] == "KSampler")
        c = srv.client()
        ws = WsClient(srv, "batch")
        srv.state.worker.pause()  # queue all three before the worker looks
        ids = []
        for seed in (5, 6, 7):
            p = json.loads(json.dumps(prompt))
            p[sampler]["inputs"].update(seed=seed, steps=3)
            ids.append(c.post("/api/prompt", json={"prompt": p, "client_id": ws.sid}).json()["prompt_id"])
        srv.state.worker.resume()
        images = set()
        events = []
        for _ in ids:  # the three run at once: events of the later ones arrive before the first is done
            events += ws.until(lambda t, d: t in ("execution_success", "execution_error")
                               and d.get("prompt_id") in ids, timeout=120)
        done = [d["prompt_id"] for t, d in events if t == "execution_success"]
        assert sorted(done) == sorted(ids), events[-1]
        for pid in ids:
            steps = [d["value"] for t, d in events if t == "progress" and d.get("prompt_id") == pid]
            assert steps == [1, 2, 3]
            entry = c.get(f"/api/history/{pid}").json()[pid]
            assert entry["status"]["status_str"] == "success"
            (out,) = [o for o in entry["outputs"].values() if "images" in o]
            images.add(out["images"][0]["filename"])
        assert len(images) == 3
        assert calls == [[5, 6, 7]]
    finally:
        srv.stop()

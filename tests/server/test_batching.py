"""The server runs queued seed variants of one workflow as one sampling batch (``--batch``); every job still
gets its own websocket events, history entry and image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.server.conftest import LiveServer, WsClient

pytestmark = pytest.mark.slow
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


@pytest.fixture
def sampling_calls(monkeypatch) -> list:
    """The seeds of every batched sampling call (one list per call)."""
    from ipgraph.nodes.diffusion import batch

    calls = []
    original = batch.run_sampling

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, "run_sampling", counting)
    return calls


def test_seed_variants_share_one_sampling_call(tmp_path, models_dir, sampling_calls):
    from ipgraph.engine import Graph
    from ipgraph.engine.comfy import to_comfy_api

    srv = LiveServer(tmp_path / "data", models_dir=models_dir, batch=4).start()
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
        assert sampling_calls == [[5, 6, 7]]
    finally:
        srv.stop()


def test_a_remote_worker_leases_seed_variants_together_and_samples_them_as_one_batch(tmp_path, models_dir,
                                                                                      sampling_calls):
    """``ipgraph worker --batch N`` (also what ``--workers local:N`` runs): the lease brings the queued seed
    variants along as mates; the worker samples them in one call, and each job keeps its own lease, history
    entry and uploaded image."""
    import threading

    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.engine.comfy import to_comfy_api
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.server.workers.remote import RemoteWorker
    from ipgraph.server.workers.runner import JobRunner
    from tests.server.test_protocol import wait_status

    srv = LiveServer(tmp_path / "data", models_dir=models_dir, workers="none").start()
    worker = None
    try:
        prompt = to_comfy_api(Graph.from_json((GRAPHS / "txt2img.json").read_text(), srv.state.registry))
        sampler = next(n for n, e in prompt.items() if e["class_type"] == "KSampler")
        c = srv.client()
        ids = []
        for seed in (5, 6, 7):  # queued before any worker exists
            p = json.loads(json.dumps(prompt))
            p[sampler]["inputs"].update(seed=seed, steps=3)
            ids.append(c.post("/api/prompt", json={"prompt": p}).json()["prompt_id"])
        work = tmp_path / "worker"
        runtime = Runtime.create(models_dir=models_dir, output_dir=work / "output", input_dir=work / "input",
                                 temp_dir=work / "temp", device="cpu", allow_absolute_paths=False)
        worker = RemoteWorker(srv.url, None, "w1", JobRunner(Engine(REGISTRY, runtime), upload=True),
                              default_registry=False, batch=4)
        thread = threading.Thread(target=worker.serve, daemon=True)
        thread.start()
        images = set()
        for pid in ids:
            job = wait_status(c, pid, timeout=120)
            assert job["status"] == "completed" and job["worker"] == "remote-w1", job
            (out,) = [o for o in c.get(f"/api/history/{pid}").json()[pid]["outputs"].values() if "images" in o]
            got = c.get("/api/view", params=out["images"][0])  # uploaded by the worker
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            images.add(got.content)
        assert len(images) == 3  # three seeds, three different pictures
        assert sampling_calls == [[5, 6, 7]]
        assert worker.jobs_done == 3
    finally:
        if worker is not None:
            worker.stop()
        srv.stop()

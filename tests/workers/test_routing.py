"""Cache-affinity routing against random routing on a mixed workload (two checkpoints, IP-Adapter on/off, seeds
varying), on the real tiny models: two workers speaking the HTTP lease protocol, each with its own engine,
output cache and model manager.

The two workers are threads of the test process that take turns (one lock around their runs): diffusers builds
models under process-wide patches, so engines must not load concurrently in one process (real deployments use
processes: ``local:N``, Ray, remote). Routing only depends on who holds what and who is idle, not on overlap."""

from __future__ import annotations

import threading
import time

import pytest

from tests.server.conftest import LiveServer

from .jobs import add_second_checkpoint, copy_reference_image, mixed_workload

pytestmark = pytest.mark.slow


class _TakingTurns:
    def __init__(self, runner, lock: threading.Lock) -> None:
        self.inner, self.lock = runner, lock
        self.engine, self.runtime, self.held = runner.engine, runner.runtime, runner.held

    def run(self, job, emit, cancel):
        with self.lock:
            return self.inner.run(job, emit, cancel)


def run_workload(root, models_dir, policy: str, n: int = 16) -> dict:
    """Queue the whole workload at once, let two workers drain it; returns hit rates and model loads."""
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.server.workers.remote import RemoteWorker
    from ipgraph.server.workers.runner import JobRunner

    srv = LiveServer(root / policy, models_dir=models_dir, workers="none", routing=policy, lease_s=10.0)
    copy_reference_image(srv.config.input_dir)
    pool = srv.state.worker
    pool.router._rng.seed(0)
    pool.pause()  # queue everything first: both policies see the same queue
    srv.start()
    lock = threading.Lock()
    remotes = []
    for name in ("a", "b"):
        rt = Runtime.create(models_dir=models_dir, output_dir=root / policy / name / "output",
                            input_dir=srv.config.input_dir, temp_dir=root / policy / name / "temp", device="cpu",
                            dtype="float32")
        runner = _TakingTurns(JobRunner(Engine(REGISTRY, rt), upload=True), lock)
        w = RemoteWorker(srv.url, None, name, runner, default_registry=False)
        remotes.append((w, threading.Thread(target=w.serve, daemon=True)))
    try:
        c = srv.client()
        ids = []
        for doc in mixed_workload(n):
            r = c.post("/ipgraph/jobs", json={"graph": doc})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for _, t in remotes:
            t.start()
        deadline = time.time() + 30
        while len([w for w in pool.workers.values() if w.state == "idle"]) < 2 and time.time() < deadline:
            time.sleep(0.05)
        pool.resume()
        deadline = time.time() + 120
        jobs = []
        while time.time() < deadline:
            jobs = [c.get(f"/ipgraph/jobs/{i}").json() for i in ids]
            if all(j["status"] in ("completed", "failed") for j in jobs):
                break
            time.sleep(0.2)
        assert all(j["status"] == "completed" for j in jobs), [j["error"] for j in jobs]
        cached = sum(len(j["cached"]) for j in jobs)
        total = sum(len(j["cached"]) + len(j["executed"]) for j in jobs)
        workers = c.get("/ipgraph/workers").json()["workers"]
        return {"policy": policy, "node_hit_rate": round(cached / total, 3),
                "model_loads": sum(w["model_loads"] for w in workers),
                "jobs": {w["id"]: w["jobs_done"] for w in workers}}
    finally:
        for w, _ in remotes:
            w.stop()
        for _, t in remotes:
            t.join(15)
        srv.stop()


def test_affinity_beats_random_on_the_mixed_workload(tmp_path, models_dir):
    add_second_checkpoint(models_dir)
    affinity = run_workload(tmp_path, models_dir, "affinity")
    rnd = run_workload(tmp_path, models_dir, "random")
    print(f"\nrouting: {affinity}\nrouting: {rnd}")
    assert affinity["node_hit_rate"] > rnd["node_hit_rate"]
    assert affinity["model_loads"] <= rnd["model_loads"]
    assert all(n > 0 for n in affinity["jobs"].values())  # both workers were used

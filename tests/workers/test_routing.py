"""Cache-affinity routing against random routing, on two in-process workers (``local:2``, each with its own
output cache and model manager) and a mixed workload: two checkpoints, IP-Adapter on/off, seeds varying."""

from __future__ import annotations

import time

import pytest

from tests.server.conftest import LiveServer

from .jobs import add_second_checkpoint, copy_reference_image, mixed_workload

pytestmark = pytest.mark.slow


def run_workload(root, models_dir, policy: str, n: int = 16) -> dict:
    """Queue the whole workload at once, let two workers drain it; returns hit rates and model loads."""
    srv = LiveServer(root / policy, models_dir=models_dir, workers="local:2", routing=policy)
    copy_reference_image(srv.config.input_dir)
    pool = srv.state.worker
    pool.router._rng.seed(0)
    ids = []
    srv.start()
    try:
        c = srv.client()
        pool.pause()  # queue everything first: both policies see the same queue
        for doc in mixed_workload(n):
            r = c.post("/ipgraph/jobs", json={"graph": doc})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
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
        loads = sum(s.runner.runtime.models.loads for s in pool.slots)
        per_worker = {s.id: sum(j["worker"] == s.id for j in jobs) for s in pool.slots}
        return {"policy": policy, "node_hit_rate": cached / total, "model_loads": loads, "jobs": per_worker}
    finally:
        srv.stop()


def test_affinity_beats_random_on_the_mixed_workload(tmp_path, models_dir):
    add_second_checkpoint(models_dir)
    affinity = run_workload(tmp_path, models_dir, "affinity")
    rnd = run_workload(tmp_path, models_dir, "random")
    print(f"\nrouting: {affinity}\nrouting: {rnd}")
    assert affinity["node_hit_rate"] > rnd["node_hit_rate"]
    assert affinity["model_loads"] <= rnd["model_loads"]
    assert all(n > 0 for n in affinity["jobs"].values())  # both workers were used

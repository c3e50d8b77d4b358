"""Workers on Ray: one local cluster for the module (about 10 s and 1 GiB here), two actors behind one server."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.server.conftest import LiveServer, WsClient
from tests.server.test_protocol import wait_status

from .jobs import copy_reference_image, graph

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, models_dir):
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = tmp_path_factory.mktemp("ray")
    copy_reference_image(root / "data" / "input")
    # respawn_delay_s: a killed actor is not replaced during the test, so the other one must finish its job
    srv = LiveServer(root / "data", models_dir=models_dir, workers="ray:2", lease_s=5.0,
                     respawn_delay_s=120.0).start()
    pool = srv.state.worker
    for slot in pool.slots:
        assert slot.ready.wait(180), f"Ray worker {slot.id} did not start"
    yield srv
    srv.stop()
    if started:
        ray.shutdown()


def _submit(c, doc, client_id):
    r = c.post("/ipgraph/jobs", json={"graph": doc, "client_id": client_id})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_two_actors_run_ten_jobs_and_a_killed_actor_requeues_its_job(ray_server):
    c = ray_server.client()
    pool = ray_server.state.worker
    a = WsClient(ray_server, "ray-client-a")
    b = WsClient(ray_server, "ray-client-b")
    try:
        victim_job = _submit(c, graph(seed=7, steps=60, prefix="long"), "ray-client-a")
        ids = [victim_job] + [_submit(c, graph(seed=s, steps=3, ipadapter=s % 2 == 0, prefix=f"r{s}"),
                                      "ray-client-a") for s in range(9)]
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the long job is sampling on an actor
            run = pool.run_of(victim_job)
            if run is not None and run.node == "sampler":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the long job never reached the sampler")
        victim = next(s for s in pool.slots if s.id == run.worker)
        os.kill(victim.pid, signal.SIGKILL)  # the actor's process dies mid-job, as with OOM
        for pid in ids:
            job = wait_status(c, pid, ("completed", "failed"), timeout=120)
            assert job["status"] == "completed", job
        native = c.get(f"/ipgraph/jobs/{victim_job}").json()
        assert native["attempts"] == 2 and native["worker"] != run.worker, native
        assert native["worker"].startswith("ray-")
        # every job's events reached its client, and nobody else
        seen = set()
        deadline = time.time() + 20
        while seen != set(ids) and time.time() < deadline:
            t, d = a.next_event(timeout=20)
            if t == "execution_success":
                seen.add(d["prompt_id"])
        seen |= {d["prompt_id"] for t, d in a.events if t == "execution_success"}
        assert seen == set(ids)
        assert any(t == "progress" for t, _ in a.events) and a.binary  # progress and previews relayed
        with pytest.raises(TimeoutError):
            b.until(lambda t, d: d.get("prompt_id") in ids, timeout=0.5)
        workers = {w["id"]: w for w in c.get("/api/system_stats").json()["workers"]}
        assert len(workers) == 2 and all(w["kind"] == "ray" for w in workers.values())
        img = c.get(f"/ipgraph/jobs/{victim_job}").json()["images"][0]
        assert c.get(img["url"]).status_code == 200
    finally:
        a.close()
        b.close()


def test_cancel_reaches_the_actor_running_the_job(ray_server):
    c = ray_server.client()
    pool = ray_server.state.worker
    live = [s for s in pool.slots if s.actor is not None]
    assert live
    pid = _submit(c, graph(seed=3, steps=200, prefix="cancel"), None)
    deadline = time.time() + 60
    while time.time() < deadline:
        run = pool.run_of(pid)
        if run is not None and run.node == "sampler":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the job never reached the sampler")
    assert c.post(f"/api/jobs/{pid}/cancel").json()["cancelled"] is True
    assert wait_status(c, pid, ("cancelled", "completed"), timeout=30)["status"] == "cancelled"

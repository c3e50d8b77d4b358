"""``--workers local:N``: ``ipgraph worker`` child processes of the server; one killed mid-job has its job
requeued at once and is started again (fake nodes: the cost is the child's start-up)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.server.conftest import LiveServer, api_chain
from tests.server.fake_nodes import REGISTRY, FakeRuntime
from tests.server.test_protocol import wait_status

pytestmark = pytest.mark.slow


def test_local_worker_process_killed_mid_job_is_replaced_and_the_job_reruns(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    srv = LiveServer(tmp_path / "data", registry=REGISTRY, runtime=FakeRuntime(tmp_path / "data", models),
                     graphs_dir=tmp_path, workers="local:1", registry_spec="tests.server.fake_nodes:REGISTRY",
                     respawn_delay_s=0.2, lease_s=30.0).start()
    try:
        c = srv.client()
        slot = srv.state.worker.slots[0]
        first = c.post("/prompt", json={"prompt": api_chain(value=2)}).json()["prompt_id"]
        assert wait_status(c, first, timeout=240)["status"] == "completed"
        assert c.get(f"/ipgraph/jobs/{first}").json()["worker"] == "local-0"
        slow = c.post("/prompt", json={"prompt": api_chain(value=3, steps=40, delay=0.05)}).json()["prompt_id"]
        wait_status(c, slow, ("in_progress",), timeout=30)
        time.sleep(0.3)
        os.kill(slot.pid, signal.SIGKILL)
        t = time.time()
        deadline = t + 10
        while c.get(f"/ipgraph/jobs/{slow}").json()["status"] == "running" and time.time() < deadline:
            time.sleep(0.05)
        # requeued at once (the server saw its child die), not after the 30 s lease
        assert time.time() - t < 10
        job = wait_status(c, slow, timeout=240)
        native = c.get(f"/ipgraph/jobs/{slow}").json()
        assert job["status"] == "completed" and native["attempts"] == 2 and slot.starts == 2
        stats = c.get("/api/system_stats").json()["workers"]
        assert [(w["id"], w["kind"]) for w in stats] == [("local-0", "local")]
    finally:
        srv.stop()

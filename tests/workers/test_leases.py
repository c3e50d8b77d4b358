"""The lease protocol: the store's transactions, and remote workers over HTTP (fake nodes: fast)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from ipgraph.server.store import COMPLETED, FAILED, PENDING, RUNNING, Job, JobStore
from tests.server.conftest import LiveServer, WsClient, api_chain
from tests.server.fake_nodes import REGISTRY, FakeRuntime
from tests.server.test_protocol import wait_status


def _job(store: JobStore, n: int) -> Job:
    job = Job(id=f"job-{n}", number=float(store.next_number()), status=PENDING, graph={"nodes": {}},
              client_id="c", created=time.time())
    store.add(job)
    return job


def test_store_leases_tokens_expiry_and_attempt_limit(tmp_path):
    store = JobStore(tmp_path / "q.sqlite", max_attempts=2)
    _job(store, 1)
    _job(store, 2)
    job, token = store.lease("local-0", 0.2)
    assert job.id == "job-1" and job.status == RUNNING and job.attempts == 1 and job.worker == "local-0"
    assert not store.renew("job-1", "not-the-token", 5)
    assert store.renew("job-1", token, 0.2)
    time.sleep(0.3)
    assert store.expire(2) == (["job-1"], [])  # the worker went silent: back in the queue, in its place
    again, token2 = store.lease("local-1", 0.2)
    assert again.id == "job-1" and again.attempts == 2
    assert not store.complete("job-1", token, COMPLETED)  # the first worker woke up too late
    assert not store.renew("job-1", token, 5)
    time.sleep(0.3)
    assert store.expire(2) == ([], ["job-1"])
    failed = store.get("job-1")
    assert failed.status == FAILED and failed.error["exception_type"] == "WorkerLost"
    assert "2 attempts" in failed.error["message"]
    event, data = failed.messages[0]
    assert event == "execution_error" and data["exception_message"] == failed.error["message"]
    assert not store.complete("job-1", token2, COMPLETED)  # a failed job stays failed
    # a graceful stop gives the job back without counting the attempt
    job2, t = store.lease("inprocess", 30)
    assert store.release(job2.id, t) and store.get(job2.id).attempts == 0
    store.close()


def test_restart_requeues_own_workers_but_keeps_remote_leases(tmp_path):
    store = JobStore(tmp_path / "q.sqlite")
    for n in range(3):
        _job(store, n)
    store.lease("inprocess", 60)
    store.lease("ray-1", 60)
    _, remote_token = store.lease("remote-gpu-box", 60)
    store.close()
    store = JobStore(tmp_path / "q.sqlite")  # the server came back after a kill -9
    assert store.recover() == []
    assert sorted(store.requeued_at_start) == ["job-0", "job-1"]
    assert store.get("job-2").status == RUNNING  # its worker lives on another machine and renews when back
    assert store.renew("job-2", remote_token, 60)
    store.close()


@pytest.fixture
def remote_server(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    srv = LiveServer(tmp_path / "data", registry=REGISTRY, runtime=FakeRuntime(tmp_path / "data", models),
                     graphs_dir=tmp_path, workers="none", lease_s=1.0).start()
    yield srv
    srv.stop()


class _Remote:
    """``ipgraph worker``'s loop in a thread of the test (its own engine, runtime and output folder)."""

    def __init__(self, server: LiveServer, root: Path, name: str) -> None:
        from ipgraph.engine import Engine
        from ipgraph.server.workers.remote import RemoteWorker
        from ipgraph.server.workers.runner import JobRunner

        runtime = FakeRuntime(root / name, root / "models")
        self.worker = RemoteWorker(server.url, None, name, JobRunner(Engine(REGISTRY, runtime), upload=True),
                                   default_registry=False)
        self.thread = threading.Thread(target=self.worker.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(15)


def test_remote_worker_runs_jobs_and_events_reach_only_their_client(remote_server, tmp_path):
    c = remote_server.client()
    a = WsClient(remote_server, "client-a")
    b = WsClient(remote_server, "client-b")
    remote = _Remote(remote_server, tmp_path, "w1")
    try:
        ids = [c.post("/prompt", json={"prompt": api_chain(value=v), "client_id": "client-a"}).json()["prompt_id"]
               for v in (3, 4, 5)]
        for pid in ids:
            a.until_done(pid)
            job = wait_status(c, pid)
            assert job["status"] == "completed" and job["worker"] == "remote-w1"
        hist = c.get("/api/history").json()
        for pid, value in zip(ids, (3, 4, 5), strict=True):
            img = hist[pid]["outputs"]["3"]["images"][0]
            got = c.get("/api/view", params=img)  # uploaded by the worker into the server's output folder
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            from io import BytesIO

            from PIL import Image

            assert Image.open(BytesIO(got.content)).getpixel((0, 0))[0] == value + 0  # seed 0
        kinds = [t for t, d in a.events if d.get("prompt_id") in ids]
        assert "execution_start" in kinds and "progress" in kinds and "executed" in kinds
        time.sleep(0.3)
        with pytest.raises(TimeoutError):
            b.until(lambda t, d: d.get("prompt_id") in ids, timeout=0.5)
        workers = c.get("/ipgraph/workers").json()["workers"]
        assert [w["id"] for w in workers] == ["remote-w1"] and workers[0]["jobs_done"] == 3
    finally:
        remote.stop()
        a.close()
        b.close()


def test_remote_cancel_and_queue_shows_the_worker(remote_server, tmp_path):
    c = remote_server.client()
    remote = _Remote(remote_server, tmp_path, "w2")
    try:
        slow = api_chain(value=1, steps=50, delay=0.05)
        pid = c.post("/prompt", json={"prompt": slow}).json()["prompt_id"]
        wait_status(c, pid, ("in_progress",))
        deadline = time.time() + 10
        while time.time() < deadline:
            running = c.get("/api/queue").json()["queue_running"]
            if running and running[0][3].get("ipgraph_worker") == "remote-w2":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the running job does not name its worker in /queue")
        stats = c.get("/api/system_stats").json()
        assert [(w["id"], w["job"]) for w in stats["workers"]] == [("remote-w2", pid)]
        assert c.post(f"/api/jobs/{pid}/cancel").json()["cancelled"] is True
        assert wait_status(c, pid, ("cancelled",), timeout=10)["status"] == "cancelled"
    finally:
        remote.stop()


def test_silent_worker_loses_the_job_then_attempt_limit_fails_it(remote_server, tmp_path):
    c = remote_server.client()
    ws = WsClient(remote_server, "client-x")
    pid = c.post("/prompt", json={"prompt": api_chain(value=9), "client_id": "client-x"}).json()["prompt_id"]

    def lease(name):  # a worker that leases, then dies without a word
        r = c.post("/ipgraph/worker/lease", json={"worker": name, "wait": 5})
        assert r.status_code == 200
        return r.json()

    first = lease("dead-1")
    assert first["job"]["id"] == pid and first["job"]["attempt"] == 1
    second = lease("dead-2")  # the lease ran out (1 s): the job came back with its attempt count raised
    assert second["job"]["id"] == pid and second["job"]["attempt"] == 2
    late = c.post(f"/ipgraph/worker/jobs/{pid}/complete",
                  json={"worker": "dead-1", "token": first["token"], "result": {"status": "completed"}})
    assert late.status_code == 409  # a stale worker can never record a result
    job = wait_status(c, pid, ("failed",), timeout=10)
    assert job["execution_error"]["exception_type"] == "WorkerLost"
    msgs = c.get(f"/api/history/{pid}").json()[pid]["status"]["messages"]
    assert msgs[0][0] == "execution_error" and "2 attempts" in msgs[0][1]["exception_message"]
    native = c.get(f"/ipgraph/jobs/{pid}").json()
    assert native["status"] == "failed" and "not retried again" in native["error"]["message"]
    err = ws.until(lambda t, d: t == "execution_error" and d.get("prompt_id") == pid, timeout=10)[-1][1]
    assert err["exception_type"] == "WorkerLost"
    ws.close()
    # the protocol refuses a result for a lease that is gone, and a malformed worker name
    assert c.post("/ipgraph/worker/lease", json={"worker": "../x"}).status_code == 400
    assert httpx.post(f"{remote_server.url}/ipgraph/worker/jobs/{pid}/heartbeat",
                      json={"worker": "dead-2", "token": second["token"]}).status_code == 409

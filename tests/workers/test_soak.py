"""Crash soak: 20 jobs on the tiny models, a server process (with its in-process worker) and a remote
``ipgraph worker`` process, random ``kill -9`` of both, restarts. Every job must be finished exactly once (one
history entry whose image matches a crash-free run) or failed with the attempt message; none lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.server.conftest import free_port

from .jobs import copy_reference_image, graph, pixels

pytestmark = pytest.mark.slow

N_JOBS = 20


def _workload() -> list[dict]:
    return [graph(seed=500 + i, steps=3, ipadapter=i % 4 == 3, prefix=f"soak{i:02d}") for i in range(N_JOBS)]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", IPGRAPH_TORCH_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("IPGRAPH_TOKEN", None)
    return env


class Proc:
    def __init__(self, args: list[str], log_path) -> None:
        self.args, self.log_path, self.p = args, log_path, None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        self.p = subprocess.Popen([sys.executable, "-m", "ipgraph", *self.args], env=_env(), stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    def kill9(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def _wait_up(url: str, timeout: float = 240) -> None:  # imports torch & co: slow on a busy machine
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/api/system_stats", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not come up")


def _reference(models_dir, input_dir, out_dir) -> list[np.ndarray]:
    """The crash-free run: the same graphs on one plain engine in this process."""
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.nodes.core.runtime import Runtime

    rt = Runtime.create(models_dir=models_dir, output_dir=out_dir, input_dir=input_dir, device="cpu",
                        dtype="float32")
    engine = Engine(REGISTRY, rt)
    out = []
    for doc in _workload():
        result = engine.run(Graph.from_dict(doc, REGISTRY))
        img = next(iter(result.ui.values()))["images"][0]
        out.append(pixels(out_dir / img["subfolder"] / img["filename"]))
    return out


def test_kill9_server_and_workers_loses_nothing(tmp_path, models_dir):
    data = tmp_path / "data"
    copy_reference_image(data / "input")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Proc(["serve", "--port", str(port), "--data-dir", str(data), "--models-dir", str(models_dir),
                   "--no-frontend", "--lease-s", "3", "--log-level", "warning"], tmp_path / "server.log")
    worker = Proc(["worker", "--server", url, "--name", "soak", "--models-dir", str(models_dir),
                   "--input-dir", str(data / "input"), "--work-dir", str(tmp_path / "w"), "--log-level", "warning"],
                  tmp_path / "worker.log")
    rng = random.Random(16)
    started = time.time()
    try:
        server.start()
        worker.start()
        _wait_up(url)
        c = httpx.Client(base_url=url, timeout=30)
        ids = []
        for doc in _workload():
            r = c.post("/ipgraph/jobs", json={"graph": doc})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        kills = ["worker", "server"]  # each restart imports torch & co again: keep them few
        for target in kills:
            deadline = time.time() + 30
            while time.time() < deadline:  # strike while something runs
                try:
                    if c.get("/api/queue").json()["queue_running"]:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.8))
            proc = server if target == "server" else worker
            proc.kill9()
            proc.start()
            if target == "server":
                _wait_up(url)
        deadline = time.time() + 150
        while time.time() < deadline:
            jobs = [c.get(f"/ipgraph/jobs/{i}").json() for i in ids]
            if all(j["status"] in ("completed", "failed", "cancelled") for j in jobs):
                break
            time.sleep(0.25)
        chaos_s = time.time() - started
        history_ids = set(c.get("/api/history").json())  # the history of every run survived every crash
        jobs = [c.get(f"/ipgraph/jobs/{i}").json() for i in ids]
    finally:
        worker.stop()
        server.stop()
    ref = _reference(models_dir, data / "input", tmp_path / "ref")
    outcomes = {"completed": 0, "failed": 0}
    for i, job in enumerate(jobs):
        assert job["status"] in ("completed", "failed"), job  # none lost or stuck
        assert job["id"] in history_ids
        assert 1 <= job["attempts"] <= 2
        outcomes[job["status"]] += 1
        if job["status"] == "failed":
            assert job["error"]["exception_type"] == "WorkerLost" and "2 attempts" in job["error"]["message"], job
            continue
        (img,) = job["images"]  # exactly one result recorded
        got = pixels(data / "output" / img["subfolder"] / img["filename"])
        diff = np.abs(got.astype(int) - ref[i].astype(int)).max()
        assert diff <= 1, f"job {i} differs from the crash-free run by {diff}"
        files = list((data / "output").glob(f"soak{i:02d}_*.png"))
        assert 1 <= len(files) <= job["attempts"]  # an attempt cut short may leave its file behind
    print(f"\nsoak: {outcomes}, attempts {sorted(j['attempts'] for j in jobs)}, workers "
          f"{sorted({j['worker'] for j in jobs})}, {chaos_s:.0f} s")
    assert outcomes["completed"] >= N_JOBS - 4

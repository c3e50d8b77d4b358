"""Workers benchmark: the same server in-process vs on Ray (1 and 2 actors), on the tiny SD1.5 txt2img graph.

    python bench/bench_workers.py [--jobs 12] [--steps 8] [--repeats 20]

In one process (one local Ray cluster, ``ray.init(num_cpus=2, include_dashboard=False)``), for each of
``--workers inprocess``, ``ray:1`` and ``ray:2`` it starts the real server (uvicorn on a loopback port, the ASGI
app of ``ipgraph.server``) and measures as a websocket client sees it:

1. server overhead per job: a graph whose every node is cached (the engine does ~nothing), submitted ``--repeats``
   times one after another; the median time from ``POST /ipgraph/jobs`` to ``execution_success`` is what the
   queue, lease protocol, event relay and store cost per job;
2. throughput: ``--jobs`` different seeds queued at once (KSampler and what follows really run), jobs/minute.

Ratios are printed against the in-process server.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graph(seed: int, steps: int) -> dict:
    doc = json.loads((ROOT / "graphs" / "txt2img.json").read_text())
    doc["nodes"]["sampler"]["inputs"].update(seed=seed, steps=steps)
    return doc


class Server:
    def __init__(self, root: Path, models: Path, workers: str) -> None:
        import uvicorn

        from ipgraph.server.app import ServerConfig, create_app

        self.port = free_port()
        self.config = ServerConfig(data_dir=root / workers.replace(":", "-"), models_dir=models,
                                   port=self.port, serve_frontend=False, workers=workers, lease_s=10.0)
        self.app = create_app(self.config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        pool = self.app.state.ipgraph.worker
        for slot in pool.slots:
            if hasattr(slot, "ready"):
                slot.ready.wait(600)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def measure(srv: Server, jobs: int, steps: int, repeats: int) -> dict:
    import httpx
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{srv.port}"
    c = httpx.Client(base_url=url, timeout=60)
    ws = connect(f"ws://127.0.0.1:{srv.port}/ws?clientId=bench", open_timeout=30, max_size=2**22)

    def until_done(ids: set[str]) -> None:
        left = set(ids)
        while left:
            msg = ws.recv(timeout=600)
            if isinstance(msg, bytes):
                continue
            data = json.loads(msg)
            if data["type"] in ("execution_success", "execution_error"):
                left.discard(data["data"].get("prompt_id"))

    def submit(doc: dict) -> str:
        return c.post("/ipgraph/jobs", json={"graph": doc, "client_id": "bench"}).json()["id"]

    cached = graph(seed=1, steps=steps)
    until_done({submit(cached)})  # warm: models loaded, every node of this graph cached on (each) worker
    until_done({submit(cached) for _ in range(4)})
    lat = []
    for _ in range(repeats):
        t = time.perf_counter()
        until_done({submit(cached)})
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    until_done({submit(graph(seed=1000 + i, steps=steps)) for i in range(jobs)})
    wall = time.perf_counter() - t
    ws.close()
    return {"overhead_ms": statistics.median(lat) * 1000, "jobs_per_min": jobs / wall * 60, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--modes", default="inprocess,ray:1,ray:2")
    args = ap.parse_args()
    import ray
    import torch

    from ipgraph.nodes.tiny import write_all

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    models = root / "models"
    write_all(models)
    results = {}
    for mode in args.modes.split(","):
        t = time.perf_counter()
        srv = Server(root, models, mode).start()
        startup = time.perf_counter() - t
        try:
            results[mode] = {**measure(srv, args.jobs, args.steps, args.repeats), "startup_s": startup}
        finally:
            srv.stop()
        r = results[mode]
        print(f"{mode:10s} overhead/job {r['overhead_ms']:7.1f} ms   throughput {r['jobs_per_min']:6.1f} jobs/min"
              f"   ({args.jobs} jobs in {r['wall_s']:.1f} s; workers up in {startup:.1f} s)", flush=True)
    base = results.get("inprocess")
    if base:
        for mode, r in results.items():
            if mode != "inprocess":
                print(f"{mode} vs inprocess: overhead x{r['overhead_ms'] / base['overhead_ms']:.2f}, "
                      f"throughput x{r['jobs_per_min'] / base['jobs_per_min']:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()

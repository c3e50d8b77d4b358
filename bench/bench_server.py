"""Server benchmark on the tiny SD1.5 txt2img graph (graphs/txt2img.json).

    python bench/bench_server.py [--jobs 50] [--steps 20]

Starts a real server (``python -m ipgraph serve``, its own process and temporary data folder, loopback port) and
measures, as a ComfyUI client would see it (HTTP + websocket, no polling):
1. latency from POST /prompt to the ``execution_start`` websocket event on an idle server (median of N);
2. throughput of N queued jobs (each a different seed, so KSampler and what follows really run) in jobs/minute,
   versus running the same graphs in this process with ``Engine.run``;
3. the server process's RSS before and after the N jobs.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Events:
    """A websocket client reading ComfyUI messages (JSON text frames; binary preview frames are skipped)."""

    def __init__(self, url: str, client_id: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(f"{url}?clientId={client_id}", max_size=None)

    def until(self, kind: str, prompt_id: str | None = None, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while True:
            msg = self.ws.recv(timeout=max(0.1, deadline - time.time()))
            if isinstance(msg, bytes):
                continue
            data = json.loads(msg)
            if data["type"] == "execution_error" and data["data"].get("prompt_id") in (prompt_id, None):
                raise RuntimeError(f"job failed: {data['data'].get('exception_message')}")
            if data["type"] == kind and (prompt_id is None or data["data"].get("prompt_id") == prompt_id):
                return data["data"]

    def close(self) -> None:
        self.ws.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-samples", type=int, default=10)
    args = ap.parse_args(argv)

    import httpx

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.engine.comfy import to_comfy_api
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.nodes.tiny import write_all

    tmp = Path(tempfile.mkdtemp(prefix="ipgraph-bench-"))
    models = tmp / "models"
    write_all(models)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ipgraph", "serve", "--port", str(port), "--models-dir",
                             str(models), "--data-dir", str(tmp / "data"), "--no-frontend"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=url, timeout=60)
        deadline = time.time() + 120
        while True:
            try:
                client.get("/api/system_stats")
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        graph = Graph.from_json((ROOT / "graphs" / "txt2img.json").read_text(), REGISTRY)
        base = to_comfy_api(graph)

        def prompt(seed: int) -> dict:
            p = json.loads(json.dumps(base))
            p["sampler"]["inputs"].update(seed=seed, steps=args.steps)
            return p

        def submit(seed: int) -> str:
            body = {"prompt": prompt(seed), "client_id": "bench"}
            return client.post("/prompt", json=body).raise_for_status().json()["prompt_id"]

        events = Events(url.replace("http", "ws") + "/ws", "bench")
        events.until("execution_success", submit(0))  # warm-up: loads the models (not measured)

        latencies = []
        for i in range(args.latency_samples):
            started = time.perf_counter()
            pid = submit(i + 1)
            events.until("execution_start", pid)
            latencies.append((time.perf_counter() - started) * 1000)
            events.until("execution_success", pid)
        rss_before = rss_mb(proc.pid)

        started = time.perf_counter()
        ids = [submit(1000 + i) for i in range(args.jobs)]
        events.until("execution_success", ids[-1])
        server_s = time.perf_counter() - started
        rss_after = rss_mb(proc.pid)
        statuses = {client.get(f"/api/jobs/{i}").json()["status"] for i in ids}
        events.close()
    finally:
        proc.terminate()
        proc.wait(30)

    # in-process baseline: the same graphs and seeds through Engine.run, models loaded once (warm-up)
    engine = Engine(REGISTRY, Runtime.create(models_dir=models, output_dir=tmp / "inproc-out"))
    engine.run(graph)
    started = time.perf_counter()
    for i in range(args.jobs):
        g = graph.copy()
        g.set("sampler", "seed", 1000 + i)
        g.set("sampler", "steps", args.steps)
        engine.run(g)
    inproc_s = time.perf_counter() - started

    lat = statistics.median(latencies)
    print(f"latency POST /prompt -> execution_start (idle server): median {lat:.1f} ms "
          f"(min {min(latencies):.1f}, max {max(latencies):.1f})")
    print(f"throughput, {args.jobs} queued txt2img jobs ({args.steps} steps, tiny SD1.5, CPU): server "
          f"{args.jobs / server_s * 60:.1f} jobs/min, in-process {args.jobs / inproc_s * 60:.1f} jobs/min "
          f"(server/in-process time ratio {server_s / inproc_s:.3f})")
    print(f"server process RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after the {args.jobs} jobs")
    print(f"job statuses: {', '.join(sorted(statuses))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

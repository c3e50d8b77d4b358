"""Server benchmark on the tiny SD1.5 txt2img graph (graphs/txt2img.json).

    python bench/bench_server.py [--jobs 50] [--steps 20] [--device cpu]

Measures, against a real server (uvicorn in this process, loopback port, its own temporary data folder):
1. latency from POST /prompt to the ``execution_start`` websocket event on an idle server (median of N);
2. throughput of N queued jobs (each a different seed, so KSampler and what follows really run) in jobs/minute,
   versus running the same graphs in-process with ``Engine.run``;
3. server process RSS before and after the N jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-samples", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    from engine import CancelToken, Engine, Graph
    from engine.comfy import to_comfy_api
    from nodes.models.tiny import ensure_tiny_models
    from nodes.runtime import Runtime
    from tests.server.conftest import LiveServer, WsClient

    tmp = Path(tempfile.mkdtemp(prefix="ipgraph-bench-"))
    models = tmp / "models"
    ensure_tiny_models(models)
    server = LiveServer(tmp / "data", models_dir=models, serve_frontend=False).start()
    client = server.client()
    graph = Graph.from_json((ROOT / "graphs" / "txt2img.json").read_text(), server.state.registry)
    base = to_comfy_api(graph)
    sampler = next(n for n, e in base.items() if e["class_type"] == "KSampler")

    def prompt(seed: int) -> dict:
        p = json.loads(json.dumps(base))
        p[sampler]["inputs"]["seed"] = seed
        p[sampler]["inputs"]["steps"] = args.steps
        return p

    ws = WsClient(server, "bench")
    # warm up: load the models once (not measured)
    pid = client.post("/prompt", json={"prompt": prompt(0), "client_id": ws.sid}).json()["prompt_id"]
    ws.until_done(pid, timeout=600)

    # 1. latency to execution_start on an idle server
    latencies = []
    for _ in range(args.latency_samples):
        t0 = time.perf_counter()
        pid = client.post("/prompt", json={"prompt": prompt(0), "client_id": ws.sid}).json()["prompt_id"]
        ws.until(lambda t, d, pid=pid: t == "execution_start" and d["prompt_id"] == pid)
        latencies.append((time.perf_counter() - t0) * 1000)
        ws.until_done(pid)
    rss_before = rss_mb()

    # 2. throughput of N queued jobs
    t0 = time.perf_counter()
    ids = [client.post("/prompt", json={"prompt": prompt(1000 + i)}).json()["prompt_id"] for i in range(args.jobs)]
    submit_s = time.perf_counter() - t0
    while True:
        done = client.get("/api/jobs", params={"status": "completed,failed,cancelled", "limit": 1}).json()
        if done["pagination"]["total"] >= args.jobs + 1 + args.latency_samples:
            break
        time.sleep(0.05)
    server_s = time.perf_counter() - t0
    statuses = {client.get(f"/api/jobs/{i}").json()["status"] for i in ids}
    rss_after = rss_mb()
    ws.close()
    server.stop()

    # in-process baseline: same graphs, same seeds, a fresh engine with warm models
    runtime = Runtime.create(models_dir=models, output_dir=tmp / "inproc-out", input_dir=tmp / "inproc-in")
    engine = Engine(server.state.registry, runtime)
    engine.run(Graph.from_json(json.dumps(graph.to_dict()), server.state.registry), cancel=CancelToken())
    t0 = time.perf_counter()
    for i in range(args.jobs):
        g = graph.copy()
        g.set("sampler", "seed", 1000 + i)
        g.set("sampler", "steps", args.steps)
        engine.run(g)
    inproc_s = time.perf_counter() - t0

    result = {
        "jobs": args.jobs, "steps": args.steps, "device": str(runtime.device),
        "latency_to_execution_start_ms": {"median": round(statistics.median(latencies), 2),
                                          "min": round(min(latencies), 2), "max": round(max(latencies), 2)},
        "server_jobs_per_minute": round(args.jobs / server_s * 60, 1),
        "inprocess_jobs_per_minute": round(args.jobs / inproc_s * 60, 1),
        "server_overhead_pct": round((server_s / inproc_s - 1) * 100, 1),
        "submit_all_s": round(submit_s, 3),
        "statuses": sorted(statuses),
        "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_after, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_to_execution_start_ms"]
        print(f"latency POST /prompt -> execution_start (idle): median {lat['median']} ms "
              f"(min {lat['min']}, max {lat['max']})")
        print(f"throughput, {args.jobs} queued txt2img jobs ({args.steps} steps, {result['device']}): "
              f"server {result['server_jobs_per_minute']} jobs/min, in-process {result['inprocess_jobs_per_minute']} "
              f"jobs/min ({result['server_overhead_pct']:+.1f}% time)")
        print(f"server RSS: {result['rss_mb_before']} MB before, {result['rss_mb_after']} MB after the {args.jobs} jobs "
              "(bench process: server + client)")
        print(f"job statuses: {', '.join(result['statuses'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

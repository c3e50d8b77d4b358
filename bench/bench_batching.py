"""Throughput of queued seed variants: batched sampling (``--batch 4``) vs one job at a time (``--batch 1``).

    python bench/bench_batching.py [--model tiny|mid|both] [--rounds 3] [--jobs 4] [--threads 1]
                                   [--worker inprocess|remote]

The real server (uvicorn on a loopback port; the in-process worker, or with ``--worker remote`` an ``ipgraph
worker`` leasing over HTTP and uploading its images, as ``--workers local:N`` runs them) on the txt2img workflow (tiny SD1.5 at 64 px,
20 steps; the ~100M-parameter "mid" SD1.5 at 256 px, 8 steps). Each round pauses the queue, POSTs ``--jobs``
ComfyUI prompts that differ only in the seed (fresh seeds: nothing cached but the shared prefix), resumes and
times, as a websocket client, until the last ``execution_success``. Rounds alternate between the worker's
batch limit 1 and ``--jobs`` (one server, models warm; every round its own seeds). Prints the median jobs/min of
each and the ratio, then runs one set of seeds both ways (output cache emptied in between) and says whether the
saved images have the same pixels.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {"tiny": ("tiny-sd15.safetensors", 64, 20), "mid": ("mid-sd15.safetensors", 256, 8)}


def prompt_for(registry, ckpt: str, size: int, steps: int) -> tuple[dict, str]:
    from ipgraph.engine import Graph
    from ipgraph.engine.comfy import to_comfy_api

    prompt = to_comfy_api(Graph.from_json((ROOT / "graphs" / "txt2img.json").read_text(), registry))
    for entry in prompt.values():
        if entry["class_type"] == "CheckpointLoaderSimple" or "ckpt_name" in entry["inputs"]:
            entry["inputs"]["ckpt_name"] = ckpt
        if entry["class_type"] == "EmptyLatentImage":
            entry["inputs"].update(width=size, height=size)
    sampler = next(n for n, e in prompt.items() if e["class_type"] == "KSampler")
    prompt[sampler]["inputs"]["steps"] = steps
    return prompt, sampler


def one_round(srv, c, ws, prompt: dict, sampler: str, seeds: list[int]) -> tuple[float, dict]:
    pool = srv.state.worker
    pool.pause()
    ids = {}
    for seed in seeds:
        p = json.loads(json.dumps(prompt))
        p[sampler]["inputs"]["seed"] = seed
        ids[c.post("/api/prompt", json={"prompt": p, "client_id": ws.sid}).json()["prompt_id"]] = seed
    start = time.perf_counter()
    pool.resume()
    done = 0
    while done < len(ids):
        events = ws.until(lambda t, d: t in ("execution_success", "execution_error") and d.get("prompt_id") in ids,
                          timeout=1800)
        kind, data = events[-1]
        if kind != "execution_success":
            raise RuntimeError(f"job failed: {data}")
        done += 1
    seconds = time.perf_counter() - start
    pixels = {}
    for pid, seed in ids.items():
        entry = c.get(f"/api/history/{pid}").json()[pid]
        (out,) = [o for o in entry["outputs"].values() if "images" in o]
        img = out["images"][0]
        from PIL import Image

        pixels[seed] = Image.open(io.BytesIO(c.get("/api/view", params=img).content)).tobytes()
    return seconds, pixels


def remote_worker(srv, models: Path):
    """An ``ipgraph worker`` loop in a thread (its own engine, runtime and folders), serving ``srv``."""
    import threading

    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime
    from ipgraph.server.workers.remote import RemoteWorker
    from ipgraph.server.workers.runner import JobRunner

    work = Path(tempfile.mkdtemp(prefix="bench-batch-worker-"))
    runtime = Runtime.create(models_dir=models, output_dir=work / "output", input_dir=work / "input",
                             temp_dir=work / "temp", device="cpu", allow_absolute_paths=False)
    worker = RemoteWorker(srv.url, None, "bench", JobRunner(Engine(REGISTRY, runtime), upload=True),
                          default_registry=False, batch=1)
    threading.Thread(target=worker.serve, daemon=True).start()
    return worker


def bench(kind: str, models: Path, rounds: int, jobs: int, where: str = "inprocess") -> None:
    from tests.server.conftest import LiveServer, WsClient

    ckpt, size, steps = SETTINGS[kind]
    srv = LiveServer(Path(tempfile.mkdtemp(prefix=f"bench-batch-{kind}-")), models_dir=models, batch=jobs,
                     workers="none" if where == "remote" else "inprocess").start()
    try:
        c = srv.client()
        c.timeout = 600
        ws = WsClient(srv, f"bench-{kind}")
        prompt, sampler = prompt_for(srv.state.registry, ckpt, size, steps)
        slot = remote_worker(srv, models) if where == "remote" else srv.state.worker.slots[0]
        slot.batch = 1
        one_round(srv, c, ws, prompt, sampler, [1])  # load the model, encode the prompts
        times: dict[int, list[float]] = {1: [], jobs: []}
        for r in range(rounds):
            for limit in ((1, jobs) if r % 2 == 0 else (jobs, 1)):
                slot.batch = limit
                seeds = [1000 * (r + 1) + 100 * (limit > 1) + i for i in range(jobs)]  # fresh: not cached
                times[limit].append(one_round(srv, c, ws, prompt, sampler, seeds)[0])
        images = {}
        for limit in (jobs, 1):  # the same seeds both ways (the output cache emptied in between)
            slot.batch = limit
            (slot.runner.engine if where == "remote" else srv.state.engine).cache.clear()
            images[limit] = one_round(srv, c, ws, prompt, sampler, list(range(7, 7 + jobs)))[1]
        same = images[1] == images[jobs]
        seq, bat = statistics.median(times[1]), statistics.median(times[jobs])
        print(f"[{kind}, {where} worker] {size}px {steps} steps, {jobs} queued seed variants, median of {rounds} "
              f"rounds: "
              f"one at a time {seq:.2f} s ({60 * jobs / seq:.1f} jobs/min) | batched {bat:.2f} s "
              f"({60 * jobs / bat:.1f} jobs/min) | throughput ratio batched/sequential {seq / bat:.2f}x | "
              f"same pixels per seed: {same}", flush=True)
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "mid", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--worker", choices=["inprocess", "remote"], default="inprocess")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    from ipgraph.nodes.tiny.sd import ensure_tiny_models

    models = Path(args.models_dir or ROOT / "models").resolve()
    ensure_tiny_models(models, include_mid=args.model != "tiny")
    from ipgraph.nodes.tiny import write_all

    write_all(models)
    print(f"torch threads {args.threads}; machine: {torch.get_num_threads()} torch threads of "
          f"{__import__('os').cpu_count()} CPUs", flush=True)
    for kind in (["tiny", "mid"] if args.model == "both" else [args.model]):
        bench(kind, models, args.rounds, args.jobs, args.worker)


if __name__ == "__main__":
    main()

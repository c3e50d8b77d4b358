"""``ipgraph worker``: a plain remote worker for users without Ray. It leases jobs from a server over HTTP
(``/ipgraph/worker/...``), runs them on its own engine (own output cache, own model manager, one device), streams
events and renews the lease with heartbeats, and uploads its output files with the outcome.

    ipgraph worker --server http://HOST:8188 [--token TOKEN] [--name NAME] [--models-dir DIR] [--input-dir DIR]
                   [--device cuda:0] [--cache-gb 2]

Models are read from its own ``--models-dir`` and input images from its ``--input-dir`` (copy or share them).
If the server cannot be reached for longer than the lease, the worker stops the job: by then the server has
given it to another worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("ipgraph.worker")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipgraph worker", description="Run jobs of an ipgraph server on this machine.")
    p.add_argument("--server", required=True, help="the server's URL, e.g. http://127.0.0.1:8188")
    p.add_argument("--token", default=os.environ.get("IPGRAPH_TOKEN") or None, help="the server's --token")
    p.add_argument("--name", default=None, help="this worker's name (default: host-pid)")
    p.add_argument("--models-dir", default=None, help="models folder (default $IPGRAPH_MODELS_DIR or ./models)")
    p.add_argument("--input-dir", default=None, help="input images folder (default ./input)")
    p.add_argument("--work-dir", default=None, help="where outputs are written before upload (default: a temp dir)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--cache-gb", type=float, default=2.0, help="output cache size (GB)")
    p.add_argument("--registry", default=None, help="MODULE:ATTR node registry (default: ipgraph's nodes)")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs (tests, batch use)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


class RemoteWorker:
    def __init__(self, server: str, token: str | None, name: str, runner, default_registry: bool = True) -> None:
        import httpx

        self.name = name
        self.runner = runner
        self.default_registry = default_registry
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=30)
        self._stop = threading.Event()
        self.jobs_done = 0

    def stop(self) -> None:
        self._stop.set()

    def _post(self, path: str, body: dict):
        from .wire import to_json

        return self.http.post(path, json=to_json(body))

    def serve(self, max_jobs: int | None = None) -> None:
        import httpx

        device = str(getattr(self.runner.runtime, "device", "cpu"))
        while not self._stop.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
            try:
                resp = self._post("/ipgraph/worker/lease", {"worker": self.name, "device": device,
                                                             "held": self.runner.held(), "wait": 5})
            except httpx.HTTPError as exc:
                log.info("server unreachable (%s); retrying", type(exc).__name__)
                self._stop.wait(1.0)
                continue
            if resp.status_code == 204:
                continue
            if resp.status_code != 200:
                log.warning("lease refused: %s %s", resp.status_code, resp.text[:200])
                self._stop.wait(2.0)
                continue
            lease = resp.json()
            self.run_one(lease["job"], lease["token"], float(lease["lease_s"]))
            self.jobs_done += 1

    def run_one(self, job: dict, token: str, lease_s: float) -> None:
        import httpx

        from ipgraph.engine import CancelToken

        from .wire import from_json

        job = from_json(job)
        cancel = CancelToken()
        events: list = []
        lock = threading.Lock()
        state = {"lost": False, "last_ok": time.monotonic()}
        done = threading.Event()
        path = f"/ipgraph/worker/jobs/{job['id']}"
        name = self.name if self.name.startswith(("remote-", "local-")) else f"remote-{self.name}"

        def beat() -> None:
            with lock:
                batch, events[:] = list(events), []
            try:
                resp = self._post(path + "/heartbeat", {"worker": name, "token": token, "events": batch})
            except httpx.HTTPError:
                with lock:
                    events[:0] = batch  # keep them for the next beat
                if time.monotonic() - state["last_ok"] > lease_s:
                    state["lost"] = True  # the server has given the job to another worker by now
                    cancel.cancel()
                return
            if resp.status_code == 409:
                state["lost"] = True
                cancel.cancel()
                return
            if resp.status_code == 200:
                state["last_ok"] = time.monotonic()
                if resp.json().get("cancel"):
                    cancel.cancel()

        def heartbeats() -> None:
            period = min(0.25, lease_s / 4)
            while not done.wait(period) and not state["lost"]:
                beat()

        if self.default_registry:
            try:
                from ipgraph.engine import Graph
                from ipgraph.nodes.tiny import ensure_for_graph

                ensure_for_graph(Graph.from_dict(job["graph"], self.runner.engine.registry), self.runner.runtime)
            except Exception:
                log.debug("no tiny models prepared", exc_info=True)
        hb = threading.Thread(target=heartbeats, name="ipgraph-heartbeat", daemon=True)
        hb.start()

        def emit(wire: dict) -> None:
            with lock:
                events.append(wire)

        result = self.runner.run(job, emit, cancel)
        done.set()
        hb.join(30)
        if state["lost"]:
            log.warning("job %s: the lease was lost; its result is dropped", job["id"])
            return
        beat()  # the last events, before the outcome
        body = {"worker": name, "token": token, "result": result, "held": self.runner.held()}
        while True:  # the server may be restarting: keep trying while the lease can still hold
            try:
                resp = self._post(path + "/complete", body)
                if resp.status_code == 409:
                    log.warning("job %s: the lease was lost before completion", job["id"])
                return
            except httpx.HTTPError:
                if time.monotonic() - state["last_ok"] > lease_s or self._stop.is_set():
                    log.warning("job %s: server unreachable; giving up its result", job["id"])
                    return
                time.sleep(0.5)
                try:
                    beat()
                except Exception:
                    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    import torch

    from ipgraph.engine import Engine
    from ipgraph.nodes.core.runtime import Runtime

    from .ray_pool import _load_registry
    from .runner import JobRunner

    if os.environ.get("IPGRAPH_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["IPGRAPH_TORCH_THREADS"]))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ipgraph-worker-"))
    runtime = Runtime.create(models_dir=args.models_dir, output_dir=work / "output", input_dir=args.input_dir,
                             temp_dir=work / "temp", device=args.device, allow_absolute_paths=False)
    engine = Engine(_load_registry(args.registry), runtime, cache_bytes=int(args.cache_gb * 1024**3))
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    worker = RemoteWorker(args.server, args.token, name, JobRunner(engine, upload=True),
                          default_registry=args.registry is None)
    print(f"ipgraph worker {name} on {runtime.device}, serving {args.server}", file=sys.stderr)
    try:
        worker.serve(args.max_jobs)
    except KeyboardInterrupt:
        pass
    return 0

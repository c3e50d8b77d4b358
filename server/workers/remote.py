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
    p.add_argument("--batch", type=int, default=4,
                   help="queued jobs that differ only in their seeds are leased and sampled as one batch, at most "
                        "this many (default 4; 1 = one job at a time)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


class RemoteWorker:
    def __init__(self, server: str, token: str | None, name: str, runner, default_registry: bool = True,
                 batch: int = 1) -> None:
        import httpx

        self.name = name
        self.batch = max(1, int(batch))  # jobs leased together when they differ only in their seeds
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
                                                             "held": self.runner.held(), "wait": 5,
                                                             "batch": self._batch_room(max_jobs)})
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
            mates = [(m["job"], m["token"]) for m in lease.get("mates") or []]
            self.run_leased([(lease["job"], lease["token"]), *mates], float(lease["lease_s"]))
            self.jobs_done += 1 + len(mates)

    def _batch_room(self, max_jobs: int | None) -> int:
        return self.batch if max_jobs is None else max(1, min(self.batch, max_jobs - self.jobs_done))

    def run_leased(self, leased: list[tuple[dict, str]], lease_s: float) -> None:
        """Run the leased jobs, one alone or several as one batch (the server leased them together because
        their graphs differ only in their seeds: ``JobRunner.run_batch``); each keeps its own lease, events,
        cancel and outcome."""
        from .wire import from_json

        leases = [_Lease(self, from_json(job), token, lease_s) for job, token in leased]
        if self.default_registry:
            self._prepare_tiny_models(leases[0].job)
        for lease in leases:
            lease.start()
        if len(leases) == 1:
            results = [self.runner.run(leases[0].job, leases[0].emit, leases[0].cancel)]
        else:
            results = self.runner.run_batch([x.job for x in leases], [x.emit for x in leases],
                                            [x.cancel for x in leases])
        for lease, result in zip(leases, results, strict=True):
            lease.finish(result)

    def _prepare_tiny_models(self, job: dict) -> None:
        try:
            from ipgraph.engine import Graph
            from ipgraph.nodes.tiny import ensure_for_graph

            ensure_for_graph(Graph.from_dict(job["graph"], self.runner.engine.registry), self.runner.runtime)
        except Exception:
            log.debug("no tiny models prepared", exc_info=True)


class _Lease:
    """One leased job on this worker: its events go out with heartbeats that renew the lease; a lost lease
    cancels the run; the outcome is posted while the lease can still hold."""

    def __init__(self, worker: RemoteWorker, job: dict, token: str, lease_s: float) -> None:
        from ipgraph.engine import CancelToken

        self.worker, self.job, self.token, self.lease_s = worker, job, token, lease_s
        self.cancel = CancelToken()
        self.events: list = []
        self.lock = threading.Lock()
        self.lost, self.last_ok = False, time.monotonic()
        self.done = threading.Event()
        self.path = f"/ipgraph/worker/jobs/{job['id']}"
        name = worker.name
        self.name = name if name.startswith(("remote-", "local-")) else f"remote-{name}"
        self.thread = threading.Thread(target=self._heartbeats, name="ipgraph-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def emit(self, wire: dict) -> None:
        with self.lock:
            self.events.append(wire)

    def beat(self) -> None:
        import httpx

        with self.lock:
            batch, self.events[:] = list(self.events), []
        try:
            resp = self.worker._post(self.path + "/heartbeat", {"worker": self.name, "token": self.token,
                                                                "events": batch})
        except httpx.HTTPError:
            with self.lock:
                self.events[:0] = batch  # keep them for the next beat
            if time.monotonic() - self.last_ok > self.lease_s:
                self.lost = True  # the server has given the job to another worker by now
                self.cancel.cancel()
            return
        if resp.status_code == 409:
            self.lost = True
            self.cancel.cancel()
            return
        if resp.status_code == 200:
            self.last_ok = time.monotonic()
            if resp.json().get("cancel"):
                self.cancel.cancel()

    def _heartbeats(self) -> None:
        period = min(0.25, self.lease_s / 4)
        while not self.done.wait(period) and not self.lost:
            self.beat()

    def finish(self, result: dict) -> None:
        import httpx

        self.done.set()
        self.thread.join(30)
        if self.lost:
            log.warning("job %s: the lease was lost; its result is dropped", self.job["id"])
            return
        self.beat()  # the last events, before the outcome
        body = {"worker": self.name, "token": self.token, "result": result, "held": self.worker.runner.held()}
        while True:  # the server may be restarting: keep trying while the lease can still hold
            try:
                resp = self.worker._post(self.path + "/complete", body)
                if resp.status_code == 409:
                    log.warning("job %s: the lease was lost before completion", self.job["id"])
                return
            except httpx.HTTPError:
                if time.monotonic() - self.last_ok > self.lease_s or self.worker._stop.is_set():
                    log.warning("job %s: server unreachable; giving up its result", self.job["id"])
                    return
                time.sleep(0.5)
                try:
                    self.beat()
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
                          default_registry=args.registry is None, batch=args.batch)
    print(f"ipgraph worker {name} on {runtime.device}, serving {args.server}", file=sys.stderr)
    try:
        worker.serve(args.max_jobs)
    except KeyboardInterrupt:
        pass
    return 0

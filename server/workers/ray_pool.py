"""Workers on Ray: each is a long-lived actor owning an engine, its output cache and its model manager, pinned to
one device (``num_gpus=1`` when the cluster has GPUs). The server drives each actor from one thread
(:class:`RayWorker`): it leases a job for it, starts ``run`` on the actor, drains the actor's events while it
runs (relaying them to the submitting client), renews the lease while the actor answers, and records the outcome.
An actor that dies (kill -9, OOM) has its job requeued at once; a fresh actor replaces it.

``connect("ray")`` starts a local cluster for the user (``ray.init(num_cpus=..., include_dashboard=False)``),
``connect("ray://HOST:PORT")`` joins an existing one (ipgraph and the models folder must exist on its nodes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from ..store import FAILED
from .pool import Run, WorkerPool

log = logging.getLogger("ipgraph.server")


def connect(spec: str, num_cpus: int | None = None) -> bool:
    """Make sure Ray is initialised for ``spec`` ("ray" or "ray://HOST:PORT"); True when this call started it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--workers ray needs Ray: pip install 'ipgraph[ray]'") from None
    if ray.is_initialized():
        return False
    if spec.startswith("ray://"):
        ray.init(address=spec, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    return True


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


class EngineActor:
    """Lives in a Ray worker process. ``max_concurrency > 1``: ``drain``/``cancel`` answer while ``run`` runs."""

    def __init__(self, worker_id: str, models_dir: str, input_dir: str, scratch: str, cache_bytes: int,
                 registry_spec: str | None = None, device: str | None = None, threads: int = 1) -> None:
        import torch

        from ipgraph.engine import Engine
        from ipgraph.nodes.core.runtime import Runtime
        from ipgraph.server.workers.runner import JobRunner

        torch.set_num_threads(threads)
        registry = _load_registry(registry_spec)
        scratch_dir = Path(scratch)
        runtime = Runtime.create(models_dir=models_dir, output_dir=scratch_dir / "output", input_dir=input_dir,
                                 temp_dir=scratch_dir / "temp", device=device, allow_absolute_paths=False)
        self.worker_id = worker_id
        self.runner = JobRunner(Engine(registry, runtime, cache_bytes=cache_bytes), upload=True)
        self.events: deque = deque()
        self.tokens: dict = {}

    def info(self) -> dict:
        import socket

        return {"pid": os.getpid(), "device": str(self.runner.runtime.device), "host": socket.gethostname()}

    def run(self, job: dict) -> dict:
        from ipgraph.engine import CancelToken

        token = self.tokens.setdefault(job["id"], CancelToken())
        try:
            result = self.runner.run(job, self.events.append, token)
        finally:
            self.tokens.pop(job["id"], None)
        result["held"] = self.runner.held()
        return result

    def drain(self) -> list:
        out = []
        while self.events:
            out.append(self.events.popleft())
        return out

    def cancel(self, job_id: str) -> None:
        from ipgraph.engine import CancelToken

        self.tokens.setdefault(job_id, CancelToken()).cancel()


def _load_registry(spec: str | None):
    if not spec:
        import ipgraph.nodes  # noqa: F401
        from ipgraph.engine import REGISTRY

        return REGISTRY
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "REGISTRY")


class RayWorker:
    """The server's thread for one actor slot. The actor of slot ``i`` is ``ray-i`` (``ray-i.2`` after one
    replacement, and so on)."""

    kind = "ray"

    def __init__(self, pool: WorkerPool, index: int, actor_args: dict, gpus: int = 0,
                 respawn_delay: float = 2.0) -> None:
        self.pool = pool
        self.index = index
        self.actor_args = actor_args
        self.gpus = gpus
        self.respawn_delay = respawn_delay
        self.generation = 0
        self.id = f"ray-{index}"
        self.actor = None
        self.pid: int | None = None
        self.current: Run | None = None
        self.last_ok = time.monotonic()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"ipgraph-ray-{index}", daemon=True)

    # -- pool interface ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        run = self.current
        if run is not None:
            self.cancel(run.job.id)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        self._kill()

    def alive(self, run: Run) -> bool:
        return time.monotonic() - self.last_ok < max(1.0, self.pool.lease_s / 2)

    def cancel(self, job_id: str) -> None:
        actor = self.actor
        if actor is not None:
            try:
                actor.cancel.remote(job_id)
            except Exception:
                log.exception("could not cancel %s on %s", job_id, self.id)

    # -- the actor --------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        import ray

        self.generation += 1
        self.id = f"ray-{self.index}" if self.generation == 1 else f"ray-{self.index}.{self.generation}"
        opts = {"num_cpus": 1, "num_gpus": 1 if self.gpus else 0, "max_concurrency": 4, "max_restarts": 0}
        args = {**self.actor_args, "scratch": str(Path(self.actor_args["scratch"]) / self.id)}
        self.actor = ray.remote(EngineActor).options(**opts).remote(self.id, **args)
        info = ray.get(self.actor.info.remote(), timeout=300)
        self.pid = info["pid"]
        self.pool.register(self.id, "ray", f"{info['device']}@{info['host']}")
        self.last_ok = time.monotonic()
        self.ready.set()

    def _kill(self) -> None:
        actor, self.actor = self.actor, None
        if actor is not None:
            try:
                import ray

                ray.kill(actor, no_restart=True)
            except Exception:
                pass

    def _loop(self) -> None:
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            from ray.exceptions import ActorUnavailableError
        except ImportError:  # older Ray
            ActorUnavailableError = RayActorError  # noqa: N806
        lost_errors = (RayActorError, ActorUnavailableError, GetTimeoutError)
        while not self._stop.is_set():
            if self.actor is None:
                try:
                    self._spawn()
                except Exception:
                    log.exception("could not start Ray worker %s", self.id)
                    self._kill()
                    self._stop.wait(self.respawn_delay)
                    continue
            run = None
            try:
                run = self.pool.acquire(self.id)
                if run is None:
                    self.pool.wait(0.5)
                    continue
                self.current = run
                self._drive(run)
            except lost_errors as exc:
                if run is not None:
                    self.pool.lost(run, type(exc).__name__)
                self._kill()
                self.ready.clear()
                self._stop.wait(self.respawn_delay)
            except Exception as exc:
                log.exception("Ray worker %s failed", self.id)
                if run is not None:
                    self.pool.finish(run, {"status": FAILED, "report_error": True, "error": {
                        "exception_type": type(exc).__name__, "message": str(exc), "node_id": None,
                        "node_type": None}})
            finally:
                self.current = None
        self._kill()

    def _drive(self, run: Run) -> None:
        import ray

        actor = self.actor
        if run.cancel_requested:
            actor.cancel.remote(run.job.id)
        ref = actor.run.remote(run.payload())
        sent_cancel = run.cancel_requested
        while True:
            ready, _ = ray.wait([ref], timeout=0.1)
            for wire in ray.get(actor.drain.remote(), timeout=max(5.0, self.pool.lease_s)):
                self.pool.event(run, wire)
            self.last_ok = time.monotonic()
            if run.cancel_requested and not sent_cancel:
                actor.cancel.remote(run.job.id)
                sent_cancel = True
            if ready:
                break
        result = ray.get(ref)
        for wire in ray.get(actor.drain.remote(), timeout=30):
            self.pool.event(run, wire)
        held = result.pop("held", None)
        self.pool.finish(run, result, held)

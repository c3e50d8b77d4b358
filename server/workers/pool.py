"""The server's side of every worker: leases jobs to them (routing by cache affinity), renews the leases of the
workers it can vouch for, relays their events, records their outcomes, and requeues the jobs of workers that died.

The pool is the only writer of the job store and the only speaker of the ComfyUI protocol; workers only run
engines. Three kinds of worker speak the same protocol (lease -> events/heartbeats -> complete, every call under
the lease token):

- :class:`ThreadWorker`: an engine in a thread of the server (``--workers inprocess``, today's server); its lease
  is renewed by the pool while the server lives. One per process: diffusers/accelerate build models under
  process-wide patches (``init_empty_weights``), so two engines loading models in threads of one process corrupt
  each other; more workers on one machine are processes (``local:N``, Ray actors).
- :class:`ProcessWorker` (``workers/local.py``): an ``ipgraph worker`` child process (``local:N``) on loopback.
- ``RayWorker`` (``workers/ray_pool.py``): a long-lived Ray actor owning an engine; renewed while the actor answers.
- remote ``ipgraph worker`` processes (``workers/http_routes.py``): renewed by their own heartbeats over HTTP.

A lease that is not renewed runs out and the reaper requeues the job (or fails it once it used ``max_attempts``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ipgraph.engine import CancelToken, Engine, Graph, batch_signature

from ..hub import Hub
from ..store import CANCELLED, COMPLETED, FAILED, PENDING, Job, JobStore
from .affinity import Holdings, Router
from .outputs import OutputStore
from .relay import Relay, now_ms
from .runner import JobRunner

log = logging.getLogger("ipgraph.server")


@dataclass
class Run:
    """One leased job as the server tracks it."""
    job: Job
    token: str
    worker: str
    relay: Relay
    cancel_requested: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    node: str | None = None

    def payload(self) -> dict:
        return {"id": self.job.id, "graph": self.job.graph, "outputs": self.job.outputs,
                "extra_data": self.job.extra_data or {}, "client_id": self.job.client_id,
                "attempt": self.job.attempts}


@dataclass
class WorkerInfo:
    id: str
    kind: str  # inprocess | local | ray | remote
    device: str = "cpu"
    state: str = "starting"  # starting | idle | busy | gone
    jobs_done: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    holdings: Holdings = field(default_factory=Holdings)


class WorkerPool:
    def __init__(self, store: JobStore, hub: Hub, engine: Engine, *, lease_s: float = 30.0, max_attempts: int = 2,
                 policy: str = "affinity", outputs: OutputStore | None = None) -> None:
        self.store = store
        self.hub = hub
        self.engine = engine  # the server's engine: plans cache keys for routing (never runs jobs here)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.outputs = outputs
        self.router = Router(engine, policy)
        self.workers: dict[str, WorkerInfo] = {}
        self.slots: list[Any] = []  # ThreadWorker / RayWorker: the workers this process drives
        self.runs: dict[str, Run] = {}
        self._lock = threading.RLock()
        self._wake = threading.Condition(threading.Lock())
        self.stopping = threading.Event()
        self.paused = threading.Event()  # no new leases while set (running jobs go on)
        self._threads: list[threading.Thread] = []
        self._signatures: dict[str, str | None] = {}
        self.before_first_job = None

    # -- life cycle -------------------------------------------------------------------------------
    def add(self, slot) -> None:
        self.slots.append(slot)

    def start(self) -> None:
        for target, name in ((self._heartbeats, "ipgraph-leases"),):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        for slot in self.slots:
            slot.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for slot in self.slots:
            slot.request_stop()
        self.wake()
        for slot in self.slots:
            slot.join(timeout)
        for t in self._threads:
            t.join(timeout)

    def pause(self) -> None:
        """Stop handing out leases (the queue fills up; running jobs go on)."""
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()
        self.wake()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait(seconds)

    # -- what the routes read -------------------------------------------------------------------------
    def queue_remaining(self) -> int:
        return self.store.count("pending", "running")

    def broadcast_status(self) -> None:
        self.hub.send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, None)

    @property
    def current_id(self) -> str | None:
        with self._lock:
            return next(iter(self.runs), None)

    @property
    def current_node(self) -> str | None:
        with self._lock:
            run = next(iter(self.runs.values()), None)
            return run.node if run else None

    def run_of(self, job_id: str) -> Run | None:
        with self._lock:
            return self.runs.get(job_id)

    def describe(self) -> list[dict]:
        """Every worker and what it runs (``/system_stats``, ``/ipgraph/workers``)."""
        with self._lock:
            by_worker = {r.worker: r for r in self.runs.values()}
            out = []
            for w in self.workers.values():
                run = by_worker.get(w.id)
                out.append({"id": w.id, "kind": w.kind, "device": w.device, "state": w.state,
                            "job": run.job.id if run else None, "node": run.node if run else None,
                            "attempt": run.job.attempts if run else None, "jobs_done": w.jobs_done,
                            "seen_s_ago": round(time.monotonic() - w.last_seen, 1),
                            "cached_outputs": len(w.holdings.keys), "models": sorted(w.holdings.models),
                            "model_loads": w.holdings.loads})
            return out

    def interrupt(self, job_id: str | None = None) -> bool:
        """Cancel a running job (``job_id``) or every running job; True when one was signalled."""
        with self._lock:
            runs = [r for r in self.runs.values() if job_id is None or r.job.id == job_id]
            for run in runs:
                run.cancel_requested = True
        for run in runs:
            for slot in self.slots:
                if slot.id == run.worker:
                    slot.cancel(run.job.id)
        return bool(runs)

    # -- the protocol -----------------------------------------------------------------------------------
    def register(self, worker_id: str, kind: str, device: str = "cpu") -> WorkerInfo:
        with self._lock:
            info = self.workers.get(worker_id)
            if info is None or info.kind != kind:
                info = self.workers[worker_id] = WorkerInfo(worker_id, kind, device)
            info.device = device
            return info

    def seen(self, worker_id: str, state: str | None = None, held: dict | None = None) -> None:
        with self._lock:
            info = self.workers.get(worker_id)
            if info is None:
                return
            info.last_seen = time.monotonic()
            if state:
                info.state = state
            if held is not None:
                info.holdings.update(held)

    def acquire(self, worker_id: str, held: dict | None = None) -> Run | None:
        """Lease the job the router picks for ``worker_id``; None when there is none for it now."""
        if self.stopping.is_set() or self.paused.is_set():
            self.seen(worker_id, "idle", held)
            return None
        with self._lock:
            self.seen(worker_id, "idle", held)
            window = self.store.pending_window(self.router.window)
            fresh = time.monotonic() - max(15.0, self.lease_s)
            idle = {w.id for w in self.workers.values() if w.state == "idle" and w.last_seen > fresh}
            holdings = {w.id: w.holdings for w in self.workers.values() if w.state in ("idle", "busy")}
            job = self.router.pick(worker_id, window, holdings, idle)
            if job is None:
                return None
            run = self._lease(worker_id, job)
            if run is None:
                return None
            self.workers[worker_id].state = "busy"
        self.broadcast_status()
        return run

    def _lease(self, worker_id: str, job: Job) -> Run | None:
        leased = self.store.lease(worker_id, self.lease_s, job.id)
        if leased is None:
            return None
        job, token = leased
        self.router.forget(job.id)
        relay = Relay(self.hub, job, worker_id, ingest=self._ingest_for(worker_id),
                      on_node=lambda node_id, jid=job.id: self._on_node(jid, node_id))
        run = Run(job, token, worker_id, relay)
        self.runs[job.id] = run
        return run

    def acquire_mates(self, worker_id: str, run: Run, limit: int) -> list[Run]:
        """Lease, to the worker that holds ``run``, up to ``limit - 1`` pending jobs of the router's window that
        can run in one batch with it (same batch signature and outputs: graphs equal but for their seeds; see
        ``run_batch``). Empty when batching is off (``limit`` <= 1) or nothing matches."""
        if limit <= 1 or self.stopping.is_set() or self.paused.is_set():
            return []
        signature = self._signature(run.job)
        if signature is None:
            return []
        mates: list[Run] = []
        with self._lock:
            for job in self.store.pending_window(self.router.window):
                if len(mates) >= limit - 1:
                    break
                if job.outputs != run.job.outputs or self._signature(job) != signature:
                    continue
                mate = self._lease(worker_id, job)
                if mate is not None:
                    mates.append(mate)
        if mates:
            self.broadcast_status()
        return mates

    def _signature(self, job: Job) -> str | None:
        """The job's batch signature (computed once per job)."""
        if job.id not in self._signatures:
            try:
                graph = Graph.from_dict(job.graph, self.engine.registry)
                self._signatures[job.id] = batch_signature(self.engine, graph, job.outputs)
            except Exception:
                self._signatures[job.id] = None
            if len(self._signatures) > 4096:
                self._signatures.pop(next(iter(self._signatures)))
        return self._signatures[job.id]

    def adopt(self, run: Run) -> Run:
        """Track a run leased before this server process started (a remote worker kept its lease)."""
        with self._lock:
            have = self.runs.get(run.job.id)
            if have is not None:
                return have
            run.relay.on_node = lambda node_id, jid=run.job.id: self._on_node(jid, node_id)
            self.runs[run.job.id] = run
            info = self.workers.get(run.worker) or self.register(run.worker, "remote")
            info.state = "busy"
            return run

    def _ingest_for(self, worker_id: str):
        if self.outputs is None:
            return None
        return lambda ui, uploads: self.outputs.ingest(worker_id, ui, uploads)

    def _on_node(self, job_id: str, node_id: str | None) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.node = node_id

    def event(self, run: Run, wire: dict) -> None:
        run.last_seen = time.monotonic()
        run.relay.on_wire(wire)

    def renew(self, run: Run) -> bool:
        run.last_seen = time.monotonic()
        self.seen(run.worker)
        return self.store.renew(run.job.id, run.token, self.lease_s)

    def finish(self, run: Run, result: dict, held: dict | None = None) -> bool:
        """Record the outcome under the run's lease; False when the lease was no longer current."""
        status = result.get("status")
        if status == CANCELLED and self.stopping.is_set() and not run.cancel_requested:
            # a graceful stop, not the user's cancel: back to the queue, the attempt not counted
            ok = self.store.release(run.job.id, run.token)
        else:
            status = status if status in (COMPLETED, FAILED, CANCELLED) else FAILED
            fields = run.relay.outcome({**result, "status": status})
            try:
                ok = self.store.complete(run.job.id, run.token, status, **fields)
            finally:
                run.relay.release()
            if not ok:
                log.warning("job %s: worker %s finished after losing its lease; its result was dropped",
                            run.job.id, run.worker)
        self._drop(run, held, done=True)
        return ok

    def lost(self, run: Run, why: str) -> None:
        """The run's worker is known dead: requeue the job now (or fail it when out of attempts)."""
        log.warning("worker %s was lost running job %s (%s)", run.worker, run.job.id, why)
        status = self.store.lost(run.job.id, run.token, self.max_attempts)
        self._drop(run, None, done=False, state="gone")
        if status == FAILED:
            self._announce_failed(run.job.id)
        self.wake()

    def _drop(self, run: Run, held: dict | None, done: bool, state: str = "idle") -> None:
        with self._lock:
            if self.runs.get(run.job.id) is run:
                del self.runs[run.job.id]
            info = self.workers.get(run.worker)
            if info is not None:
                info.state = state
                info.jobs_done += int(done)
                if held is not None:
                    info.holdings.update(held)
        self.broadcast_status()
        self.wake()

    def _announce_failed(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or not job.client_id:
            return
        for event, data in job.messages:
            self.hub.send(event, data, job.client_id)
        self.hub.send("executing", {"node": None, "display_node": None, "prompt_id": job_id}, job.client_id)

    # -- leases -------------------------------------------------------------------------------------
    def _heartbeats(self) -> None:
        """Renew the leases of this process's own workers; requeue or fail the jobs whose lease ran out."""
        period = max(0.05, self.lease_s / 4)
        while not self.stopping.wait(period):
            try:
                local = {s.id: s for s in self.slots}
                with self._lock:
                    runs = list(self.runs.values())
                for run in runs:
                    slot = local.get(run.worker)
                    if slot is not None and slot.alive(run):
                        if not self.store.renew(run.job.id, run.token, self.lease_s):
                            slot.cancel(run.job.id)
                requeued, failed = self.store.expire(self.max_attempts)
                for job_id in failed:
                    self._announce_failed(job_id)
                with self._lock:
                    for job_id in requeued + failed:  # a remote worker that fell silent
                        run = self.runs.pop(job_id, None)
                        if run is not None and run.worker in self.workers:
                            self.workers[run.worker].state = "gone"
                if requeued or failed:
                    log.warning("leases ran out: requeued %s, failed %s", requeued, failed)
                    self.broadcast_status()
                    self.wake()
            except Exception:
                log.exception("lease upkeep failed")


class ThreadWorker:
    """An engine driven by a thread of the server. ``upload``: its files go through the pool's output store."""

    kind = "inprocess"

    def __init__(self, pool: WorkerPool, worker_id: str, engine: Engine, upload: bool = False,
                 kind: str = "inprocess", before_first_job=None, batch: int = 1) -> None:
        self.pool = pool
        self.batch = batch  # jobs run as one batch at most (``--batch``; 1: one at a time)
        self.id = worker_id
        self.kind = kind
        self.runner = JobRunner(engine, upload=upload)
        self.before_first_job = before_first_job
        self._cancel: dict[str, CancelToken] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"ipgraph-{worker_id}", daemon=True)
        device = getattr(engine.resources, "device", "cpu")
        pool.register(worker_id, kind, str(device))

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        for token in list(self._cancel.values()):
            token.cancel()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def alive(self, run: Run) -> bool:
        return self.thread.is_alive()

    def cancel(self, job_id: str) -> None:
        token = self._cancel.get(job_id)
        if token is not None:
            token.cancel()

    def _loop(self) -> None:
        if self.before_first_job is not None:
            try:
                self.before_first_job()
            except Exception:
                log.exception("preparing models failed")
        self.pool.seen(self.id, "idle", self.runner.held())
        while not self._stop.is_set():
            try:
                run = self.pool.acquire(self.id, self.runner.held())
            except Exception:
                log.exception("leasing a job failed")
                run = None
            if run is None:
                self.pool.wait(0.5)
                continue
            mates = []
            try:
                mates = self.pool.acquire_mates(self.id, run, self.batch)
            except Exception:
                log.exception("leasing batch mates failed")
            if mates:
                self._run_batch([run, *mates])
                continue
            token = CancelToken()
            self._cancel[run.job.id] = token
            if run.cancel_requested:
                token.cancel()
            try:
                result = self.runner.run(run.payload(), lambda wire, r=run: self.pool.event(r, wire), token)
            except Exception as exc:  # never let one job take the worker down
                log.exception("job %s crashed the runner", run.job.id)
                result = {"status": FAILED, "report_error": True, "error": {
                    "exception_type": "InternalError", "message": str(exc), "node_id": None, "node_type": None}}
            finally:
                self._cancel.pop(run.job.id, None)
            try:
                self.pool.finish(run, result, self.runner.held())
            except Exception:
                log.exception("could not record the outcome of %s", run.job.id)

    def _run_batch(self, runs: list[Run]) -> None:
        tokens = []
        for run in runs:
            token = self._cancel[run.job.id] = CancelToken()
            if run.cancel_requested:
                token.cancel()
            tokens.append(token)
        try:
            results = self.runner.run_batch([r.payload() for r in runs],
                                            [lambda wire, r=r: self.pool.event(r, wire) for r in runs], tokens)
        except Exception as exc:
            log.exception("a batch of %d jobs crashed the runner", len(runs))
            results = [{"status": FAILED, "report_error": True, "error": {
                "exception_type": "InternalError", "message": str(exc), "node_id": None, "node_type": None}}
                for _ in runs]
        finally:
            for run in runs:
                self._cancel.pop(run.job.id, None)
        for run, result in zip(runs, results, strict=True):
            try:
                self.pool.finish(run, result, self.runner.held())
            except Exception:
                log.exception("could not record the outcome of %s", run.job.id)


__all__ = ["PENDING", "Run", "ThreadWorker", "WorkerInfo", "WorkerPool", "now_ms"]

"""The one worker thread: owns the engine (and so its output cache and loaded models), runs one job at a time,
and turns engine events into ComfyUI websocket messages for the submitting client.

The worker never dies on a bad job: every exception is caught, stored with the job and reported as
``execution_error``. Cancellation goes through the engine's ``CancelToken`` (checked between nodes and at
every sampling step).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ipgraph.engine import CancelToken, Engine, Graph, NodeFailed, RunCancelledError, ValidationFailed
from ipgraph.engine import events as ev

from .hub import Hub, encode_preview
from .store import CANCELLED, COMPLETED, FAILED, Job, JobStore

log = logging.getLogger("ipgraph.server")


def now_ms() -> int:
    return int(time.time() * 1000)


class Worker:
    def __init__(self, store: JobStore, hub: Hub, engine: Engine, before_first_job: Callable[[], Any] | None = None):
        self.store = store
        self.hub = hub
        self.engine = engine
        self.before_first_job = before_first_job
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.current_id: str | None = None
        self.current_node: str | None = None
        self._cancel: CancelToken | None = None
        self.thread = threading.Thread(target=self._loop, name="ipgraph-worker", daemon=True)
        self.last_job_started: float | None = None

    # -- control ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.interrupt()
        self._wake.set()
        self.thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, job_id: str | None = None) -> bool:
        """Cancel the running job (any, or only ``job_id``). True when a running job was signalled."""
        with self._lock:
            if self._cancel is None or (job_id is not None and job_id != self.current_id):
                return False
            self._cancel.cancel()
            return True

    def queue_remaining(self) -> int:
        return self.store.count("pending", "running")

    def broadcast_status(self) -> None:
        self.hub.send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, None)

    # -- loop -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        if self.before_first_job is not None:
            try:
                self.before_first_job()
            except Exception:
                log.exception("preparing models failed")
        while not self._stop.is_set():
            try:
                job = self.store.claim_next()
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # never let one job take the worker down
                log.exception("job %s crashed the runner", job.id)
                try:
                    self.store.finish(job.id, FAILED, error={
                        "exception_type": "InternalError", "message": traceback.format_exc(limit=5),
                        "node_id": None, "node_type": None})
                except Exception:
                    log.exception("could not record the failure of %s", job.id)
            finally:
                with self._lock:
                    self._cancel = None
                    self.current_id = None
                    self.current_node = None
                self.broadcast_status()

    def _run(self, job: Job) -> None:
        token = CancelToken()
        with self._lock:
            self._cancel = token
            self.current_id = job.id
        self.last_job_started = time.time()
        run = _RunReporter(self, job)
        self.broadcast_status()
        try:
            graph = Graph.from_dict(job.graph, self.engine.registry)
            result = self.engine.run(graph, outputs=job.outputs, on_event=run.on_event, cancel=token,
                                     run_id=job.id, extra=job.extra_data or {})
        except ValidationFailed as exc:
            run.fail_validation(exc)
            return
        except NodeFailed as exc:
            run.finish(FAILED, error=exc.error.to_dict())
            return
        except RunCancelledError:
            if self._stop.is_set():  # the server is shutting down: same outcome as a crash (see store.py)
                run.finish(FAILED, error={"exception_type": "ServerStopped", "node_id": self.current_node,
                                          "node_type": None, "traceback": "",
                                          "message": "the server stopped while this job was running; "
                                                     "it was not re-run"})
            else:
                run.finish(CANCELLED)
            return
        except Exception as exc:
            error = {"node_id": self.current_node, "node_type": None, "exception_type": type(exc).__name__,
                     "message": str(exc) or repr(exc), "traceback": traceback.format_exc(), "inputs": {}}
            run.send_error(error)
            run.finish(FAILED, error=error)
            return
        run.finish(COMPLETED, executed=list(result.executed), cached=list(result.cached))


class _RunReporter:
    """Translates one run's engine events into ComfyUI messages and collects what history stores."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.w = worker
        self.job = job
        self.sid = job.client_id
        self.pid = job.id
        self.messages: list = []
        self.ui: dict[str, dict] = {}
        self.states: dict[str, dict] = {}
        self.pending_cached: list[str] | None = None  # None until execution_cached was sent once
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.deferred: list[tuple[str, dict]] = []
        self.types: dict[str, str] = {nid: n.get("type", "") for nid, n in (job.graph.get("nodes") or {}).items()}

    # -- sending ----------------------------------------------------------------------------------
    def send(self, event: str, data: dict, keep: bool = False) -> None:
        if keep:
            self.messages.append([event, data])
        if self.sid:
            self.w.hub.send(event, data, self.sid)

    def _state(self, node_id: str, state: str, value: float = 0, maximum: float = 1) -> None:
        self.states[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                                "prompt_id": self.pid, "display_node_id": node_id, "parent_node_id": None,
                                "real_node_id": node_id}
        self.send("progress_state", {"prompt_id": self.pid, "nodes": dict(self.states)})

    def _flush_cached(self) -> None:
        if self.pending_cached is not None:
            return
        self.pending_cached = []
        self.send("execution_cached", {"nodes": list(self.cached), "prompt_id": self.pid,
                                       "timestamp": now_ms()}, keep=True)
        for event, data in self.deferred:
            self.send(event, data)
        self.deferred.clear()

    # -- events -----------------------------------------------------------------------------------
    def on_event(self, e: ev.Event) -> None:
        try:
            self._on_event(e)
        except Exception:  # reporting must never break a run
            log.exception("event %s could not be reported", e.kind)

    def _on_event(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.send("execution_start", {"prompt_id": self.pid, "timestamp": now_ms()}, keep=True)
        elif isinstance(e, ev.NodeCached):
            self.cached.append(e.node_id)
            if self.pending_cached is not None:  # the first batch was sent already: report this one alone
                self.send("execution_cached", {"nodes": [e.node_id], "prompt_id": self.pid,
                                               "timestamp": now_ms()}, keep=True)
            if e.ui:
                self.ui[e.node_id] = e.ui
                msg = {"node": e.node_id, "display_node": e.node_id, "output": e.ui, "prompt_id": self.pid}
                if self.pending_cached is None:
                    self.deferred.append(("executed", msg))  # after the execution_cached batch
                else:
                    self.send("executed", msg)
            self.states[e.node_id] = {"value": 1, "max": 1, "state": "finished", "node_id": e.node_id,
                                      "prompt_id": self.pid, "display_node_id": e.node_id,
                                      "parent_node_id": None, "real_node_id": e.node_id}
        elif isinstance(e, ev.NodeStarted):
            self._flush_cached()
            self.w.current_node = e.node_id
            self.send("executing", {"node": e.node_id, "display_node": e.node_id, "prompt_id": self.pid})
            self._state(e.node_id, "running", 0, 1)
        elif isinstance(e, ev.NodeProgress):
            self.send("progress", {"value": e.value, "max": e.max, "prompt_id": self.pid, "node": e.node_id})
            self._state(e.node_id, "running", e.value, e.max)
            if e.preview is not None and self.sid:
                encoded = encode_preview(e.preview)
                if encoded is not None:
                    data, mime = encoded
                    self.w.hub.send_preview(self.sid, data, mime, {
                        "node_id": e.node_id, "prompt_id": self.pid, "display_node_id": e.node_id,
                        "parent_node_id": None, "real_node_id": e.node_id})
        elif isinstance(e, ev.NodeFinished):
            self.executed.append(e.node_id)
            prev = self.states.get(e.node_id, {})
            self._state(e.node_id, "finished", prev.get("max", 1), prev.get("max", 1))
            if e.ui:
                self.ui[e.node_id] = e.ui
                self.send("executed", {"node": e.node_id, "display_node": e.node_id, "output": e.ui,
                                       "prompt_id": self.pid})
        elif isinstance(e, ev.RunFinished):
            self._flush_cached()
        elif isinstance(e, ev.RunFailed):
            self._flush_cached()
            if "problems" not in e.error:
                self.send_error(e.error)
        elif isinstance(e, ev.RunCancelled):
            self._flush_cached()
            node_id = e.node_id
            self.send("execution_interrupted", {
                "prompt_id": self.pid, "node_id": node_id, "node_type": self.types.get(node_id or "", None),
                "executed": list(self.executed), "timestamp": now_ms()}, keep=True)

    def send_error(self, error: dict) -> None:
        node_id = error.get("node_id")
        if node_id:
            prev = self.states.get(node_id, {})
            self._state(node_id, "error", prev.get("value", 0), prev.get("max", 1))
        tb = error.get("traceback") or ""
        self.send("execution_error", {
            "prompt_id": self.pid, "node_id": node_id, "node_type": error.get("node_type"),
            "executed": list(self.executed), "exception_message": error.get("message", ""),
            "exception_type": error.get("exception_type", "Exception"),
            "traceback": tb.splitlines(keepends=True) if isinstance(tb, str) else list(tb),
            "current_inputs": {k: [v] for k, v in (error.get("inputs") or {}).items()},
            "current_outputs": list(self.executed), "timestamp": now_ms()}, keep=True)

    def fail_validation(self, exc: ValidationFailed) -> None:
        """The graph stopped being valid between submit and run (a model file was removed...)."""
        first = exc.problems[0] if exc.problems else None
        error = {"node_id": first.node_id if first else None, "node_type": first.node_type if first else None,
                 "exception_type": "ValidationFailed", "message": str(exc), "traceback": "",
                 "problems": [p.to_dict() for p in exc.problems], "inputs": {}}
        self.send_error(error)
        self.finish(FAILED, error=error)

    def finish(self, status: str, error: dict | None = None, executed: list | None = None,
               cached: list | None = None) -> None:
        if status == COMPLETED:
            self.send("executing", {"node": None, "display_node": None, "prompt_id": self.pid})
            self.send("execution_success", {"prompt_id": self.pid, "timestamp": now_ms()}, keep=True)
        else:
            self.send("executing", {"node": None, "display_node": None, "prompt_id": self.pid})
        self.w.store.finish(self.job.id, status, ui=self.ui, error=error, messages=self.messages,
                            executed=executed if executed is not None else self.executed,
                            cached=cached if cached is not None else self.cached)

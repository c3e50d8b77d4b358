"""The server side of a run: wire events from any worker become ComfyUI websocket messages for the submitting
client only, and the messages ComfyUI keeps in ``history.status.messages`` are collected for the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..hub import Hub
from ..store import COMPLETED, Job

log = logging.getLogger("ipgraph.server")


def now_ms() -> int:
    return int(time.time() * 1000)


class Relay:
    """One job's run as its client sees it. ``ingest`` (optional) stores uploaded files and returns the ui with
    the server's file names; ``on_node`` tells the pool which node is running."""

    def __init__(self, hub: Hub, job: Job, worker: str, ingest: Callable[[dict, list], dict] | None = None,
                 on_node: Callable[[str | None], None] | None = None) -> None:
        self.hub = hub
        self.job = job
        self.worker = worker
        self.ingest = ingest
        self.on_node = on_node or (lambda node_id: None)
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
            self.hub.send(event, data, self.sid)

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
    def on_wire(self, e: dict) -> None:
        try:
            self._on_wire(e)
        except Exception:  # reporting must never break a run
            log.exception("event %s could not be relayed", e.get("kind"))

    def _ui(self, e: dict) -> dict | None:
        ui = e.get("ui")
        if ui and self.ingest is not None:
            ui = self.ingest(ui, e.get("files") or [])
        return ui

    def _on_wire(self, e: dict) -> None:
        kind = e.get("kind")
        node_id = e.get("node_id")
        if kind == "RunStarted":
            self.send("execution_start", {"prompt_id": self.pid, "timestamp": now_ms(), "worker": self.worker},
                      keep=True)
        elif kind == "NodeCached":
            self.cached.append(node_id)
            if self.pending_cached is not None:  # the first batch was sent already: report this one alone
                self.send("execution_cached", {"nodes": [node_id], "prompt_id": self.pid,
                                               "timestamp": now_ms()}, keep=True)
            ui = self._ui(e)
            if ui:
                self.ui[node_id] = ui
                msg = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.pid}
                if self.pending_cached is None:
                    self.deferred.append(("executed", msg))  # after the execution_cached batch
                else:
                    self.send("executed", msg)
            self.states[node_id] = {"value": 1, "max": 1, "state": "finished", "node_id": node_id,
                                    "prompt_id": self.pid, "display_node_id": node_id,
                                    "parent_node_id": None, "real_node_id": node_id}
        elif kind == "NodeStarted":
            self._flush_cached()
            self.on_node(node_id)
            self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.pid})
            self._state(node_id, "running", 0, 1)
        elif kind == "NodeProgress":
            self.send("progress", {"value": e["value"], "max": e["max"], "prompt_id": self.pid, "node": node_id})
            self._state(node_id, "running", e["value"], e["max"])
            preview = e.get("preview")
            if preview and self.sid:
                self.hub.send_preview(self.sid, preview["data"], preview["mime"], {
                    "node_id": node_id, "prompt_id": self.pid, "display_node_id": node_id,
                    "parent_node_id": None, "real_node_id": node_id})
        elif kind == "NodeFinished":
            self.executed.append(node_id)
            prev = self.states.get(node_id, {})
            self._state(node_id, "finished", prev.get("max", 1), prev.get("max", 1))
            ui = self._ui(e)
            if ui:
                self.ui[node_id] = ui
                self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                       "prompt_id": self.pid})
        elif kind == "RunFinished":
            self._flush_cached()
        elif kind == "RunFailed":
            self._flush_cached()
            if "problems" not in (e.get("error") or {}):
                self.send_error(e.get("error") or {})
        elif kind == "RunCancelled":
            self._flush_cached()
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

    def outcome(self, result: dict) -> dict:
        """The fields the store records for ``result`` (the runner's dict); sends the closing messages."""
        status = result["status"]
        if result.get("report_error") and result.get("error"):
            self.send_error(result["error"])
        if status == COMPLETED:
            self.send("executing", {"node": None, "display_node": None, "prompt_id": self.pid})
            self.send("execution_success", {"prompt_id": self.pid, "timestamp": now_ms()}, keep=True)
        else:
            self.send("executing", {"node": None, "display_node": None, "prompt_id": self.pid})
        return {"ui": self.ui, "error": result.get("error"), "messages": self.messages,
                "executed": result.get("executed", self.executed), "cached": result.get("cached", self.cached)}

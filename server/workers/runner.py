"""The worker side of a job: run one leased job on an engine and describe what happened as plain data.

The same runner serves every kind of worker (the server's own thread, a Ray actor, the ``ipgraph worker``
process): engine events become *wire events* (JSON-able dicts; a preview is JPEG bytes) that the server relays
to the submitting client, and the outcome is a dict the server records under the job's lease. A worker that does
not share the server's output folder sends the files its output nodes wrote along with the event that names them
(``upload=True``); the server stores them and rewrites the names.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipgraph.engine import (
    CancelToken,
    Engine,
    Graph,
    NodeFailed,
    RunCancelledError,
    ValidationFailed,
    run_batch,
)
from ipgraph.engine import events as ev

log = logging.getLogger("ipgraph.worker")

WireSink = Callable[[dict], None]


def encode_preview(image: Any, max_side: int = 512) -> dict | None:
    """A preview as ``{"data": bytes, "mime"}``; None when it cannot be encoded.

    A PIL image becomes a JPEG no larger than ``max_side``. ``(format, image, max_side)`` (ComfyUI's
    progress-bar form; SaveImageWebsocket sends ``("PNG", image, None)``) picks the format and the size limit:
    None keeps the full size.
    """
    import io

    fmt = "JPEG"
    if isinstance(image, tuple) and len(image) == 3:
        fmt, image, limit = str(image[0]).upper(), image[1], image[2]
        max_side = limit or 1 << 30
    try:
        img = image
        if max(img.size) > max_side:
            img = img.copy()
            img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        if fmt == "PNG":
            img.save(buf, format="PNG", compress_level=1)
            return {"data": buf.getvalue(), "mime": "image/png"}
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=85)
        return {"data": buf.getvalue(), "mime": "image/jpeg"}
    except Exception:
        return None


class JobRunner:
    """Runs jobs (``{"id", "graph", "outputs", "extra_data"}``) on one engine, one at a time."""

    def __init__(self, engine: Engine, upload: bool = False) -> None:
        self.engine = engine
        self.upload = upload

    @property
    def runtime(self) -> Any:
        return self.engine.resources

    def held(self) -> dict:
        """What this worker holds, for cache-affinity routing: output-cache keys and loaded model files."""
        keys = list(getattr(self.engine.cache, "_entries", {}).keys())
        models = []
        manager = getattr(self.runtime, "_models", None)
        for key in list(getattr(manager, "_loaded", {}) or {}):
            if len(key) > 1 and isinstance(key[1], str):
                models.append(Path(key[1]).name)
        return {"keys": keys, "models": models, "loads": int(getattr(manager, "loads", 0) or 0)}

    def run(self, job: dict, emit: WireSink, cancel: CancelToken) -> dict:
        """Run ``job``; every event goes to ``emit``. Returns ``{"status", "error", "executed", "cached",
        "report_error"}`` (``report_error``: the error was not announced by an event, the server must)."""
        current: dict = {"node": None}

        def on_event(e: ev.Event) -> None:
            try:
                wire = self._wire(e)
                if isinstance(e, ev.NodeStarted):
                    current["node"] = e.node_id
                emit(wire)
            except Exception:  # reporting must never break a run
                log.exception("event %s could not be reported", e.kind)

        try:
            graph = Graph.from_dict(job["graph"], self.engine.registry)
            result = self.engine.run(graph, outputs=job.get("outputs"), on_event=on_event, cancel=cancel,
                                     run_id=job["id"], extra=job.get("extra_data") or {})
        except Exception as exc:
            return self._outcome(exc, current["node"])
        return self._outcome(result, None)

    def run_batch(self, jobs: list[dict], emits: list[WireSink], cancels: list[CancelToken]) -> list[dict]:
        """Run jobs whose graphs share a batch signature together (``ipgraph.engine.run_batch``): one outcome per job,
        each as :meth:`run` returns it, each job's events to its own ``emit``."""
        current: list[dict] = [{"node": None} for _ in jobs]

        def sink(i: int):
            def on_event(e: ev.Event) -> None:
                try:
                    wire = self._wire(e)
                    if isinstance(e, ev.NodeStarted):
                        current[i]["node"] = e.node_id
                    emits[i](wire)
                except Exception:
                    log.exception("event %s could not be reported", e.kind)
            return on_event

        try:
            graphs = [Graph.from_dict(job["graph"], self.engine.registry) for job in jobs]
            results = run_batch(self.engine, graphs, outputs=jobs[0].get("outputs"),
                                            on_events=[sink(i) for i in range(len(jobs))], cancels=cancels,
                                            run_ids=[job["id"] for job in jobs],
                                            extras=[job.get("extra_data") or {} for job in jobs])
        except Exception as exc:
            return [self._outcome(exc, c["node"]) for c in current]
        return [self._outcome(r, c["node"]) for r, c in zip(results, current, strict=True)]

    @staticmethod
    def _outcome(result: Any, node: str | None) -> dict:
        """A run's RunResult or exception as the outcome dict the server records."""
        try:
            if isinstance(result, BaseException):
                raise result
        except ValidationFailed as exc:
            first = exc.problems[0] if exc.problems else None
            return {"status": "failed", "report_error": True, "error": {
                "node_id": first.node_id if first else None, "node_type": first.node_type if first else None,
                "exception_type": "ValidationFailed", "message": str(exc), "traceback": "",
                "problems": [p.to_dict() for p in exc.problems], "inputs": {}}}
        except NodeFailed as exc:
            return {"status": "failed", "error": exc.error.to_dict()}
        except RunCancelledError:
            return {"status": "cancelled"}
        except Exception as exc:
            return {"status": "failed", "report_error": True, "error": {
                "node_id": node, "node_type": None, "exception_type": type(exc).__name__,
                "message": str(exc) or repr(exc), "traceback": traceback.format_exc(), "inputs": {}}}
        return {"status": "completed", "executed": list(result.executed), "cached": list(result.cached)}

    def _wire(self, e: ev.Event) -> dict:
        wire = e.to_dict()
        if isinstance(e, ev.NodeProgress) and e.preview is not None:
            wire["preview"] = encode_preview(e.preview)
        if self.upload and isinstance(e, ev.NodeFinished) and e.ui:
            wire["files"] = self._take_files(e.ui)
        return wire

    def _take_files(self, ui: dict) -> list[dict]:
        """Read the files an output node wrote into this worker's folders (they stay, so the worker's file
        counters keep rising and a cached output node's names stay unambiguous)."""
        out = []
        folders = {"output": self.runtime.output_dir, "temp": getattr(self.runtime, "temp_dir", None)}
        for img in ui.get("images", []) if isinstance(ui, dict) else []:
            base = folders.get(img.get("type", "output")) if isinstance(img, dict) else None
            if base is None:
                continue
            path = Path(base) / (img.get("subfolder") or "") / img["filename"]
            try:
                data = path.read_bytes()
            except OSError:
                continue
            out.append({"type": img.get("type", "output"), "subfolder": img.get("subfolder") or "",
                        "filename": img["filename"], "data": data})
        return out

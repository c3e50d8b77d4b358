"""The server's configuration and the state every route shares: job store, worker, engine, settings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipgraph.engine import Engine, Graph, Registry
from ipgraph.engine.comfy import graph_from_document, to_comfy_api
from ipgraph.graphs import GRAPHS_DIR
from ipgraph.limits import Limits

from .hub import Hub
from .store import PENDING, Job, JobStore

log = logging.getLogger("ipgraph.server")

FRONTEND_VERSION = "1.58.1"

# Settings every new user starts with: no first-run dialogs, no outbound release check.
DEFAULT_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.InstalledVersion": FRONTEND_VERSION,
    "Comfy.Release.Status": "skipped",
    "Comfy.Release.Version": FRONTEND_VERSION,
    "Comfy.Desktop.CloudNotificationShown": True,
    "Comfy.PartnerNodesEducation.Dismissed": True,
    "Comfy.VersionCompatibility.DisableWarnings": True,
    "Comfy.Manager.ShowUpdateAvailablePacks": False,
    "Comfy.LoadDefaultWorkflow": False,
}


@dataclass
class ServerConfig:
    data_dir: Path = Path("data")
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    graphs_dir: Path = GRAPHS_DIR
    first_workflow: str = "txt2img.json"  # what a fresh editor opens (one of the bundled graphs)
    max_upload_bytes: int = 32 * 1024 * 1024
    max_upload_pixels: int | None = None  # default: the runtime's max_pixels
    cache_bytes: int = 2 * 1024**3
    limits: Limits | None = None  # image sizes and work per job; None: flags' defaults and the environment
    serve_frontend: bool = True
    prepare_tiny_models: bool = True  # generate the tiny demo models the bundled graphs name (default registry)
    workers: str = "inprocess"  # inprocess | local:N | ray | ray:N | ray://HOST:PORT | none (server/workers)
    worker_count: int | None = None  # Ray workers (default: one per GPU, else 1)
    lease_s: float = 30.0  # a job's lease; workers renew it every lease_s/4 or so
    max_attempts: int = 2  # leases a job gets before a lost worker fails it for good
    routing: str = "affinity"  # affinity | fifo | random
    batch: int = 4  # queued jobs equal but for their seeds run as one sampling batch, at most this many (1: off)
    ray_num_cpus: int | None = None  # CPUs of the local Ray cluster (default: all)
    registry_spec: str | None = None  # MODULE:ATTR registry for Ray workers (default: ipgraph's nodes)
    respawn_delay_s: float = 2.0  # wait before replacing a dead Ray actor
    extra: dict = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.data_dir) / "output"

    @property
    def input_dir(self) -> Path:
        return Path(self.data_dir) / "input"

    @property
    def temp_dir(self) -> Path:
        return Path(self.data_dir) / "temp"

    @property
    def user_dir(self) -> Path:
        return Path(self.data_dir) / "user" / "default"


def frontend_static_dir() -> Path | None:
    override = os.environ.get("IPGRAPH_FRONTEND_DIR")
    if override:
        return Path(override)
    try:
        import importlib.resources

        import comfyui_frontend_package

        return Path(str(importlib.resources.files(comfyui_frontend_package) / "static"))
    except Exception:
        return None


def default_runtime(config: ServerConfig):
    from ipgraph.nodes.core.runtime import Runtime

    return Runtime.create(models_dir=config.models_dir, output_dir=config.output_dir, input_dir=config.input_dir,
                          temp_dir=config.temp_dir, allow_absolute_paths=False,
                          limits=config.limits or Limits.create())


class State:
    """Everything the routes share (one per app)."""

    def __init__(self, config: ServerConfig, registry: Registry, runtime: Any, uses_default_registry: bool):
        self.config = config
        self.registry = registry
        self.runtime = runtime
        for d in (config.output_dir, config.input_dir, config.temp_dir, config.user_dir / "workflows"):
            Path(d).mkdir(parents=True, exist_ok=True)
        self.store = JobStore(Path(config.data_dir) / "ipgraph.sqlite", max_attempts=config.max_attempts)
        self.hub = Hub()
        self.engine = Engine(registry, runtime, cache_bytes=config.cache_bytes)
        self.uses_default_registry = uses_default_registry
        from .workers import build_pool

        self.worker = build_pool(self)  # every worker of this server, behind the one lease protocol
        self.settings_lock = threading.Lock()
        self.max_pixels = config.max_upload_pixels or int(getattr(runtime, "max_pixels", 4096 * 4096))
        self.started = time.time()

    def _prepare_models(self) -> None:
        """Write the tiny random-weight models the bundled graphs use, if missing (no network)."""
        try:
            from ipgraph.nodes.tiny import ensure_for_graph
        except Exception:
            return
        from .workflows import bundled_graphs

        for path in bundled_graphs(Path(self.config.graphs_dir)).values():
            try:
                ensure_for_graph(Graph.from_json(path.read_text(), self.registry), self.runtime)
            except Exception:
                log.exception("could not prepare the models of %s", path.name)

    def prepare_graph(self, graph: Graph) -> None:
        """Write the tiny demo models a submitted graph names, if missing (default registry only)."""
        if not (self.uses_default_registry and self.config.prepare_tiny_models):
            return
        try:
            from ipgraph.nodes.tiny import ensure_for_graph

            ensure_for_graph(graph, self.runtime)
        except Exception:
            log.exception("could not prepare tiny models")

    # -- graph intake -------------------------------------------------------------------------------
    def parse_graph(self, doc: Any, warnings: list[str] | None = None) -> Graph:
        """ipgraph/1, ComfyUI API format or a UI-format workflow; sentences about what was left out (unknown
        inputs, unreadable widget values) go to ``warnings``."""
        return graph_from_document(doc, self.registry, self.object_info, warnings)

    def object_info(self) -> dict:
        from .comfy_api import object_info

        return object_info(self.registry, self.runtime)

    def submit(self, graph: Graph, *, outputs: list[str] | None, client_id: str | None, prompt: dict | None,
               extra_data: dict | None, front: bool = False, number: float | None = None,
               job_id: str | None = None) -> Job:
        seq = self.store.next_number()
        if number is None:
            number = -seq if front else seq
        job = Job(id=job_id or str(uuid.uuid4()), number=float(number), status=PENDING, graph=graph.to_dict(),
                  outputs=outputs, prompt=prompt, extra_data=extra_data or {}, client_id=client_id,
                  created=time.time())
        self.store.add(job)
        self.worker.wake()
        self.worker.broadcast_status()
        return job

    def comfy_prompt(self, job: Job) -> dict:
        if job.prompt is not None:
            return job.prompt
        try:
            return to_comfy_api(Graph.from_dict(job.graph, self.registry))
        except Exception:
            return {}

    def cancel(self, job_id: str) -> bool:
        if self.store.cancel_pending([job_id]):
            self.worker.broadcast_status()
            return True
        return self.worker.interrupt(job_id)

    # -- settings -------------------------------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.config.user_dir / "comfy.settings.json"

    def read_settings(self) -> dict:
        stored = {}
        with contextlib.suppress(Exception):
            stored = json.loads(self.settings_path.read_text())
        return {**DEFAULT_SETTINGS, **(stored if isinstance(stored, dict) else {})}

    def write_settings(self, changes: dict) -> None:
        with self.settings_lock:
            stored = {}
            with contextlib.suppress(Exception):
                stored = json.loads(self.settings_path.read_text())
            if not isinstance(stored, dict):
                stored = {}
            stored.update(changes)
            tmp = self.settings_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=2))
            tmp.replace(self.settings_path)

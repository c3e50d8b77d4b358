"""The FastAPI application: native API (``/ipgraph/...``), the ComfyUI-compatible API (every route also under
``/api``), the websocket (``/ws``) and the web editor (the pinned ``comfyui-frontend-package``) at ``/``.

Build one with :func:`create_app`; it starts the worker thread on startup and stops it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.staticfiles import StaticFiles

from engine import Engine, Graph, GraphFormatError, Registry
from engine.comfy import from_comfy_api, is_comfy_api, to_comfy_api

from . import comfy_api, files
from .hub import Hub
from .security import LOOPBACK_HOSTS, SecurityMiddleware
from .store import CANCELLED, COMPLETED, FAILED, FINISHED, PENDING, RUNNING, Job, JobStore
from .worker import Worker

log = logging.getLogger("ipgraph.server")

FRONTEND_VERSION = "1.58.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")

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

STATUS_TO_COMFY = {PENDING: "pending", RUNNING: "in_progress", COMPLETED: "completed", FAILED: "failed",
                   CANCELLED: "cancelled"}
COMFY_TO_STATUS = {v: k for k, v in STATUS_TO_COMFY.items()} | {"error": FAILED, "running": RUNNING,
                                                               "success": COMPLETED, "queued": PENDING}


@dataclass
class ServerConfig:
    data_dir: Path = Path("data")
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    graphs_dir: Path = REPO_ROOT / "graphs"
    max_upload_bytes: int = 32 * 1024 * 1024
    max_upload_pixels: int | None = None  # default: the runtime's max_pixels
    cache_bytes: int = 2 * 1024**3
    serve_frontend: bool = True
    prepare_tiny_models: bool = True  # generate the tiny demo models the bundled graphs name (default registry)
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
    from nodes.runtime import Runtime

    return Runtime.create(models_dir=config.models_dir, output_dir=config.output_dir, input_dir=config.input_dir,
                          temp_dir=config.temp_dir, allow_absolute_paths=False)


class State:
    """Everything the routes share (one per app)."""

    def __init__(self, config: ServerConfig, registry: Registry, runtime: Any, uses_default_registry: bool):
        self.config = config
        self.registry = registry
        self.runtime = runtime
        for d in (config.output_dir, config.input_dir, config.temp_dir, config.user_dir / "workflows"):
            Path(d).mkdir(parents=True, exist_ok=True)
        self.store = JobStore(Path(config.data_dir) / "ipgraph.sqlite")
        self.hub = Hub()
        self.engine = Engine(registry, runtime, cache_bytes=config.cache_bytes)
        self.worker = Worker(self.store, self.hub, self.engine,
                             before_first_job=self._prepare_models if (
                                 uses_default_registry and config.prepare_tiny_models) else None)
        self.uses_default_registry = uses_default_registry
        self.settings_lock = threading.Lock()
        self.max_pixels = config.max_upload_pixels or int(getattr(runtime, "max_pixels", 4096 * 4096))
        self.started = time.time()

    def _prepare_models(self) -> None:
        """Write the tiny random-weight models the bundled graphs use, if missing (no network)."""
        try:
            from nodes.tiny_models import ensure_for_graph
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
            from nodes.tiny_models import ensure_for_graph

            ensure_for_graph(graph, self.runtime)
        except Exception:
            log.exception("could not prepare tiny models")

    # -- graph intake -------------------------------------------------------------------------------
    def parse_graph(self, doc: Any) -> Graph:
        if is_comfy_api(doc):
            return from_comfy_api(doc, self.registry)
        return Graph.from_dict(doc, self.registry)

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


def _err(status: int, type_: str, message: str, details: str = "", **extra) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}
    body.update(extra)
    return JSONResponse(body, status_code=status)


async def _json_body(request: Request, default: Any = None) -> Any:
    raw = await request.body()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(400, "the request body is not valid JSON") from None


def _job_images(job: Job) -> list[dict]:
    out = []
    for node_id, ui in (job.ui or {}).items():
        for img in (ui or {}).get("images", []) if isinstance(ui, dict) else []:
            if isinstance(img, dict) and "filename" in img:
                out.append({**img, "nodeId": node_id, "mediaType": "images"})
    return out


def _num(n: float) -> int | float:
    return int(n) if float(n).is_integer() else n


def _ms(t: float | None) -> int | None:
    return int(t * 1000) if t else None


def _comfy_job(state: State, job: Job, detail: bool = False) -> dict:
    images = _job_images(job)
    error = None
    if job.status == FAILED and job.error:
        error = {"node_id": job.error.get("node_id"), "node_type": job.error.get("node_type"),
                 "exception_message": job.error.get("message", ""),
                 "exception_type": job.error.get("exception_type", ""),
                 "traceback": (job.error.get("traceback") or "").splitlines(),
                 "current_inputs": {}, "current_outputs": {}}
    out = {
        "id": job.id, "status": STATUS_TO_COMFY.get(job.status, job.status), "priority": _num(job.number),
        "create_time": _ms(job.created), "execution_start_time": _ms(job.started),
        "execution_end_time": _ms(job.finished),
        "preview_output": images[0] if images else None,
        "outputs_count": len(images) if job.status in FINISHED else None,
        "previewable_outputs_count": len(images) if job.status in FINISHED else None,
        "execution_error": error, "workflow_id": (job.extra_data.get("extra_pnginfo") or {}).get(
            "workflow", {}).get("id") if isinstance(job.extra_data.get("extra_pnginfo"), dict) else None,
    }
    if detail:
        out["outputs"] = job.ui or {}
        out["workflow"] = {"prompt": state.comfy_prompt(job), "extra_data": job.extra_data or {}}
        out["execution_status"] = {"status_str": "success" if job.status == COMPLETED else "error",
                                   "completed": job.status == COMPLETED, "messages": job.messages}
    return out


def _history_entry(state: State, job: Job) -> dict:
    extra = dict(job.extra_data or {})
    if job.client_id:
        extra.setdefault("client_id", job.client_id)
    return {
        "prompt": [_num(job.number), job.id, state.comfy_prompt(job), extra, job.outputs or []],
        "outputs": job.ui or {},
        "status": {"status_str": "success" if job.status == COMPLETED else "error",
                   "completed": job.status == COMPLETED, "messages": job.messages},
        "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                 for nid in (job.ui or {})},
    }


def _queue_item(state: State, job: Job) -> list:
    extra = dict(job.extra_data or {})
    if job.client_id:
        extra.setdefault("client_id", job.client_id)
    return [_num(job.number), job.id, state.comfy_prompt(job), extra, job.outputs or []]


# ==================================================================================================
# ComfyUI-compatible routes (mounted at / and /api)
# ==================================================================================================

def comfy_router(state: State) -> APIRouter:
    r = APIRouter(tags=["comfyui"])
    cfg = state.config

    @r.post("/prompt")
    async def post_prompt(request: Request):
        try:
            body = await _json_body(request, {})
        except HTTPException:
            return _err(400, "invalid_prompt", "the request body is not valid JSON")
        if not isinstance(body, dict) or "prompt" not in body:
            return _err(400, "no_prompt", "No prompt provided", "")
        prompt = body["prompt"]
        if not isinstance(prompt, dict) or not prompt:
            return _err(400, "invalid_prompt", "the prompt must be a non-empty object", "")
        try:
            graph = state.parse_graph(prompt)
        except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
            return _err(400, "invalid_prompt", "Cannot execute because the prompt is malformed", str(exc))
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, (str, int))
                                                                            for t in targets)):
            return _err(400, "invalid_prompt", "partial_execution_targets must be a list of node ids", "")
        outputs = [str(t) for t in targets] if targets else None
        await run_in_threadpool(state.prepare_graph, graph)
        problems = await run_in_threadpool(state.engine.validate, graph, outputs)
        if problems:
            top, errors = comfy_api.node_errors(problems, graph)
            return JSONResponse({"error": top, "node_errors": errors}, status_code=400)
        job_id = body.get("prompt_id")
        if job_id is not None:
            if not isinstance(job_id, str) or not _ID_RE.match(job_id):
                return _err(400, "invalid_prompt", "prompt_id must be a short id string", "")
            if state.store.get(job_id) is not None:
                return _err(400, "invalid_prompt", f"prompt_id {job_id!r} is already used", "")
        number = body.get("number")
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            number = None
        client_id = body.get("client_id")
        client_id = client_id if isinstance(client_id, str) and len(client_id) <= 128 else None
        extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        # never store account secrets the editor may attach
        extra_data = {k: v for k, v in extra_data.items() if k not in ("auth_token_comfy_org", "api_key_comfy_org")}
        job = state.submit(graph, outputs=outputs, client_id=client_id,
                           prompt=prompt if is_comfy_api(prompt) else None, extra_data=extra_data,
                           front=bool(body.get("front")), number=number, job_id=job_id)
        return {"prompt_id": job.id, "number": _num(job.number), "node_errors": {}}

    @r.get("/prompt")
    def get_prompt():
        return {"exec_info": {"queue_remaining": state.worker.queue_remaining()}}

    @r.get("/queue")
    def get_queue():
        running, pending = state.store.queue()
        return {"queue_running": [_queue_item(state, j) for j in running],
                "queue_pending": [_queue_item(state, j) for j in pending]}

    @r.post("/queue")
    async def post_queue(request: Request):
        body = await _json_body(request, {}) or {}
        if not isinstance(body, dict):
            raise HTTPException(400, "expected an object")
        if body.get("clear"):
            state.store.cancel_pending(None)
        if isinstance(body.get("delete"), list):
            ids = [str(i) for i in body["delete"]]
            state.store.cancel_pending(ids)
        state.worker.broadcast_status()
        return Response(status_code=200)

    @r.post("/interrupt")
    async def interrupt(request: Request):
        body = await _json_body(request, {}) or {}
        job_id = body.get("prompt_id") if isinstance(body, dict) else None
        state.worker.interrupt(str(job_id) if job_id else None)
        return Response(status_code=200)

    @r.post("/free")
    async def free(request: Request):
        body = await _json_body(request, {}) or {}
        if isinstance(body, dict) and body.get("free_memory"):
            # The worker owns the engine; clearing between nodes is safe (values are only read from it).
            with contextlib.suppress(Exception):
                state.engine.cache.clear()
        return Response(status_code=200)

    @r.get("/history")
    def get_history(max_items: int | None = None, offset: int = 0):
        limit = max(0, min(int(max_items), 10000)) if max_items is not None else 10000
        jobs, _ = state.store.list(FINISHED, limit=limit, offset=max(0, offset), newest_first=False)
        return {j.id: _history_entry(state, j) for j in jobs}

    @r.get("/history/{prompt_id}")
    def get_history_one(prompt_id: str):
        job = state.store.get(prompt_id)
        if job is None or job.status not in FINISHED:
            return {}
        return {job.id: _history_entry(state, job)}

    @r.post("/history")
    async def post_history(request: Request):
        body = await _json_body(request, {}) or {}
        if isinstance(body, dict):
            if body.get("clear"):
                state.store.delete_finished(None)
            if isinstance(body.get("delete"), list):
                state.store.delete_finished([str(i) for i in body["delete"]])
        return Response(status_code=200)

    @r.get("/jobs")
    def list_jobs(status: str | None = None, limit: int = 100, offset: int = 0, sort_order: str = "desc"):
        wanted = None
        if status:
            wanted = [COMFY_TO_STATUS[s.strip()] for s in status.split(",") if s.strip() in COMFY_TO_STATUS]
            if not wanted:
                return {"jobs": [], "pagination": {"offset": offset, "limit": limit, "total": 0, "has_more": False}}
        limit = max(1, min(int(limit), 1000))
        offset = max(0, int(offset))
        jobs, total = state.store.list(wanted, limit=limit, offset=offset, newest_first=sort_order != "asc")
        return {"jobs": [_comfy_job(state, j) for j in jobs],
                "pagination": {"offset": offset, "limit": limit, "total": total,
                               "has_more": offset + len(jobs) < total}}

    @r.post("/jobs/cancel")
    async def cancel_jobs(request: Request):
        body = await _json_body(request, {}) or {}
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            raise HTTPException(400, "expected {\"job_ids\": [...]}")
        return {"cancelled": [str(i) for i in ids if state.cancel(str(i))]}

    @r.get("/jobs/{job_id}")
    def get_job(job_id: str):
        job = state.store.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return _comfy_job(state, job, detail=True)

    @r.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        job = state.store.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return {"cancelled": state.cancel(job_id)}

    @r.get("/object_info")
    def object_info():
        return comfy_api.object_info(state.registry, state.runtime)

    @r.get("/object_info/{node_class}")
    def object_info_one(node_class: str):
        return comfy_api.object_info(state.registry, state.runtime, only=node_class)

    @r.get("/view")
    def view(filename: str, subfolder: str = "", type: str = "output"):  # noqa: A002
        base = {"output": cfg.output_dir, "input": cfg.input_dir, "temp": cfg.temp_dir}.get(type)
        if base is None:
            raise HTTPException(400, "type must be output, input or temp")
        try:
            path = files.safe_join(base, subfolder, filename)
        except files.UnsafePath as exc:
            raise HTTPException(403, str(exc)) from None
        if not path.is_file():
            raise HTTPException(404, "no such file")
        mime = files.media_type(path)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        if not mime.startswith("image/"):
            mime = "application/octet-stream"
            headers["Content-Disposition"] = "attachment"
        return FileResponse(path, media_type=mime, headers=headers)

    @r.post("/upload/image")
    async def upload_image(request: Request):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:
            raise HTTPException(400, f"bad multipart body: {exc}") from None
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(400, "the form needs an 'image' file")
        kind = str(form.get("type") or "input")
        base = {"input": cfg.input_dir, "temp": cfg.temp_dir}.get(kind)
        if base is None:
            raise HTTPException(400, "type must be input or temp")
        data = await image.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, f"the image is larger than {cfg.max_upload_bytes} bytes")
        overwrite = str(form.get("overwrite") or "").lower() in ("1", "true", "yes")
        subfolder = str(form.get("subfolder") or "")
        try:
            name, sub = await run_in_threadpool(files.store_upload, base, subfolder, image.filename or "upload.png",
                                                data, state.max_pixels, overwrite)
        except files.UnsafePath as exc:
            raise HTTPException(403, str(exc)) from None
        except files.BadUpload as exc:
            raise HTTPException(400, str(exc)) from None
        return {"name": name, "subfolder": sub, "type": kind}

    # -- bootstrap endpoints of the editor ---------------------------------------------------------
    @r.get("/users")
    def users():
        return {"storage": "server", "migrated": True}

    @r.post("/users")
    def create_user():
        return "default"

    @r.get("/settings")
    def get_settings():
        return state.read_settings()

    @r.get("/settings/{setting_id}")
    def get_setting(setting_id: str):
        return state.read_settings().get(setting_id)

    @r.post("/settings")
    async def post_settings(request: Request):
        body = await _json_body(request, {})
        if not isinstance(body, dict):
            raise HTTPException(400, "expected an object of settings")
        state.write_settings(body)
        return Response(status_code=200)

    @r.post("/settings/{setting_id}")
    async def post_setting(setting_id: str, request: Request):
        value = await _json_body(request, None)
        state.write_settings({setting_id: value})
        return Response(status_code=200)

    @r.get("/extensions")
    def extensions():
        return []

    @r.get("/i18n")
    def i18n():
        return {}

    @r.get("/embeddings")
    def embeddings():
        return []

    @r.get("/global_subgraphs")
    def global_subgraphs():
        return {}

    @r.get("/workflow_templates")
    def workflow_templates():
        return {}

    @r.get("/features")
    def features():
        return {"supports_preview_metadata": True, "max_upload_size": cfg.max_upload_bytes}

    @r.get("/system_stats")
    def system_stats():
        return _system_stats(state)

    @r.get("/models")
    def model_folders():
        return list(_model_kinds(state))

    @r.get("/models/{folder}")
    def model_files(folder: str):
        if folder not in _model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return comfy_api._list_models(state.runtime, folder)

    @r.get("/experiment/models")
    def experiment_models():
        return [{"name": k, "folders": [str(Path(getattr(state.runtime, "models_dir", "")) / k)]}
                for k in _model_kinds(state)]

    @r.get("/experiment/models/{folder}")
    def experiment_model_files(folder: str):
        if folder not in _model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return [{"name": n, "pathIndex": 0} for n in comfy_api._list_models(state.runtime, folder)]

    # -- userdata (saved workflows, keybindings...) ----------------------------------------------------
    from .userdata import add_userdata_routes

    add_userdata_routes(r, state)
    return r


def _model_kinds(state: State) -> tuple[str, ...]:
    kinds = getattr(state.runtime, "model_kinds", None)
    if kinds is not None:
        return tuple(kinds)
    try:
        from nodes.runtime import MODEL_KINDS

        return MODEL_KINDS
    except Exception:
        return ()


def _system_stats(state: State) -> dict:
    ram_total = ram_free = 0
    with contextlib.suppress(Exception):
        ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    devices = []
    torch_version = ""
    with contextlib.suppress(Exception):
        import torch

        torch_version = torch.__version__
        device = getattr(state.runtime, "device", None)
        if device is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(device)
            devices.append({"name": torch.cuda.get_device_name(device), "type": "cuda", "index": device.index or 0,
                            "vram_total": total, "vram_free": free, "torch_vram_total": total,
                            "torch_vram_free": free})
        else:
            devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total,
                            "vram_free": ram_free, "torch_vram_total": 0, "torch_vram_free": 0})
    try:
        from importlib.metadata import version

        ours = version("ipgraph")
    except Exception:
        ours = "0.1.0"
    return {"system": {"os": platform.system().lower(), "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": f"ipgraph {ours}", "required_frontend_version": FRONTEND_VERSION,
                       "installed_templates_version": None, "required_templates_version": None,
                       "python_version": sys.version.split()[0], "pytorch_version": torch_version,
                       "embedded_python": False, "argv": ["ipgraph", "serve"]},
            "devices": devices}


# ==================================================================================================
# Native API
# ==================================================================================================

def native_router(state: State) -> APIRouter:
    r = APIRouter(prefix="/ipgraph", tags=["ipgraph"])

    def job_view(job: Job) -> dict:
        out = job.to_dict()
        out["images"] = [{**img, "url": f"/view?filename={img['filename']}&subfolder={img.get('subfolder', '')}"
                          f"&type={img.get('type', 'output')}"} for img in _job_images(job)]
        return out

    @r.get("/nodes", summary="Every node type with its inputs and outputs")
    def nodes():
        return state.registry.describe()

    @r.get("/models", summary="Model files per folder")
    def models():
        return {k: comfy_api._list_models(state.runtime, k) for k in _model_kinds(state)}

    @r.get("/models/{kind}")
    def models_of(kind: str):
        if kind not in _model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return comfy_api._list_models(state.runtime, kind)

    @r.get("/graphs", summary="Bundled example graphs")
    def graphs():
        from .workflows import bundled_graphs

        return sorted(bundled_graphs(Path(state.config.graphs_dir)))

    @r.get("/graphs/{name}")
    def graph(name: str):
        from .workflows import bundled_graphs

        path = bundled_graphs(Path(state.config.graphs_dir)).get(name)
        if path is None:
            raise HTTPException(404, "no such bundled graph")
        return json.loads(path.read_text())

    async def _graph_from(request: Request) -> tuple[dict, Graph, list[str] | None]:
        body = await _json_body(request, None)
        if not isinstance(body, dict) or not isinstance(body.get("graph"), dict):
            raise HTTPException(400, 'expected {"graph": {...}}')
        try:
            graph = state.parse_graph(body["graph"])
        except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
            raise HTTPException(400, f"not a graph: {exc}") from None
        outputs = body.get("outputs")
        if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)):
            raise HTTPException(400, "outputs must be a list of node ids")
        return body, graph, outputs

    @r.post("/validate", summary="Validate a graph without running it")
    async def validate(request: Request):
        _, graph, outputs = await _graph_from(request)
        problems = await run_in_threadpool(state.engine.validate, graph, outputs)
        return {"valid": not problems, "problems": [p.to_dict() for p in problems]}

    @r.post("/jobs", status_code=202, summary="Queue a graph (ipgraph/1 or ComfyUI API format)")
    async def submit(request: Request):
        body, graph, outputs = await _graph_from(request)
        await run_in_threadpool(state.prepare_graph, graph)
        problems = await run_in_threadpool(state.engine.validate, graph, outputs)
        if problems:
            return JSONResponse({"valid": False, "problems": [p.to_dict() for p in problems]}, status_code=400)
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
        job = state.submit(graph, outputs=outputs, client_id=client_id, prompt=None, extra_data={},
                           front=bool(body.get("front")))
        return {"id": job.id, "number": job.number, "status": job.status}

    @r.get("/jobs", summary="List jobs, newest first")
    def jobs(status: str | None = None, limit: int = 50, offset: int = 0):
        wanted = [s for s in (status or "").split(",") if s] or None
        jobs_, total = state.store.list(wanted, limit=max(1, min(limit, 1000)), offset=max(0, offset))
        return {"jobs": [{k: v for k, v in job_view(j).items() if k != "graph"} for j in jobs_], "total": total}

    @r.get("/jobs/{job_id}", summary="One job: status, error, outputs")
    def job(job_id: str):
        found = state.store.get(job_id)
        if found is None:
            raise HTTPException(404, "no such job")
        return job_view(found)

    @r.get("/jobs/{job_id}/outputs", summary="Output images of a job")
    def job_outputs(job_id: str):
        found = state.store.get(job_id)
        if found is None:
            raise HTTPException(404, "no such job")
        return {"status": found.status, "images": job_view(found)["images"]}

    @r.post("/jobs/{job_id}/cancel", summary="Cancel a pending or running job")
    def cancel(job_id: str):
        if state.store.get(job_id) is None:
            raise HTTPException(404, "no such job")
        return {"cancelled": state.cancel(job_id)}

    return r


# ==================================================================================================
# App
# ==================================================================================================

def create_app(config: ServerConfig | None = None, registry: Registry | None = None, runtime: Any = None) -> FastAPI:
    """Build the app. ``registry`` defaults to ipgraph's nodes (``import nodes``); ``runtime`` to a
    :class:`nodes.runtime.Runtime` on the data folder (input/output inside it, no absolute paths)."""
    config = config or ServerConfig()
    uses_default = registry is None
    if registry is None:
        import nodes  # noqa: F401  (registers the node families)
        from engine import REGISTRY

        registry = REGISTRY
    if runtime is None:
        runtime = default_runtime(config)
    state = State(config, registry, runtime, uses_default)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.hub.loop = asyncio.get_running_loop()
        recovered = state.store.recover()
        if recovered:
            log.warning("marked %d interrupted job(s) as failed: %s", len(recovered), ", ".join(recovered))
        state.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(state.worker.stop)
            state.store.close()

    app = FastAPI(title="ipgraph", version="0.1.0", docs_url="/docs-api", redoc_url=None,
                  openapi_url="/openapi.json", lifespan=lifespan)
    app.state.ipgraph = state

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": {"type": "http_error", "message": str(exc.detail), "details": "",
                                       "extra_info": {}}}, status_code=exc.status_code)

    app.include_router(native_router(state))
    router = comfy_router(state)
    app.include_router(router, prefix="/api")
    app.include_router(router, include_in_schema=False)

    async def websocket_endpoint(ws: WebSocket):
        await ws.accept()
        client = await state.hub.attach(ws, ws.query_params.get("clientId"))
        state.hub.send("status", {"status": {"exec_info": {"queue_remaining": state.worker.queue_remaining()}},
                                  "sid": client.sid}, client.sid)
        current = state.worker.current_id
        if current and (job := state.store.get(current)) is not None and job.client_id == client.sid \
                and state.worker.current_node:
            state.hub.send("executing", {"node": state.worker.current_node,
                                         "display_node": state.worker.current_node, "prompt_id": current},
                           client.sid)
        try:
            while True:
                text = await ws.receive_text()
                if len(text) > 65536:
                    continue
                try:
                    msg = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(msg, dict) and msg.get("type") == "feature_flags" and isinstance(msg.get("data"), dict):
                    client.features = msg["data"]
                    state.hub.send("feature_flags", {"supports_preview_metadata": True,
                                                     "max_upload_size": config.max_upload_bytes}, client.sid)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            await state.hub.detach(client)

    app.add_api_websocket_route("/ws", websocket_endpoint)
    app.add_api_websocket_route("/api/ws", websocket_endpoint)

    static = frontend_static_dir() if config.serve_frontend else None
    if static is not None and (static / "index.html").is_file():
        @app.get("/", include_in_schema=False)
        def index():
            return FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

        app.mount("/", StaticFiles(directory=str(static)), name="frontend")
    else:
        @app.get("/", include_in_schema=False)
        def index_missing():
            return JSONResponse({"message": "ipgraph server; the web editor (comfyui-frontend-package "
                                 f"=={FRONTEND_VERSION}) is not installed. API docs: /docs-api"})

    loopback = config.host in LOOPBACK_HOSTS or config.host.startswith("127.")
    app.add_middleware(SecurityMiddleware, token=config.token, loopback_only_hosts=loopback,
                       max_body_bytes=config.max_upload_bytes + 1024 * 1024)
    return app

"""ComfyUI's HTTP protocol (mounted at / and /api): prompts, queue, history, jobs, object_info, view, uploads."""

from __future__ import annotations

import contextlib
import re

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ipgraph.engine import GraphFormatError
from ipgraph.engine.comfy import is_comfy_api
from ipgraph.engine.comfy_ui import is_ui_workflow, ui_to_api

from . import comfy_api, files
from .responses import error, job_images, json_body, ms, num
from .state import State
from .store import CANCELLED, COMPLETED, FAILED, FINISHED, PENDING, RUNNING, Job

_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")

STATUS_TO_COMFY = {PENDING: "pending", RUNNING: "in_progress", COMPLETED: "completed", FAILED: "failed",
                   CANCELLED: "cancelled"}
COMFY_TO_STATUS = {v: k for k, v in STATUS_TO_COMFY.items()} | {"error": FAILED, "running": RUNNING,
                                                               "success": COMPLETED, "queued": PENDING}


def _workflow_id(extra_data: dict) -> str | None:
    """The id of the editor workflow the job came from (``extra_pnginfo.workflow.id``), if any."""
    info = extra_data.get("extra_pnginfo")
    workflow = info.get("workflow") if isinstance(info, dict) else None
    return workflow.get("id") if isinstance(workflow, dict) else None


def _comfy_job(state: State, job: Job, detail: bool = False) -> dict:
    images = job_images(job)
    execution_error = None
    if job.status == FAILED and job.error:
        execution_error = {"node_id": job.error.get("node_id"), "node_type": job.error.get("node_type"),
                 "exception_message": job.error.get("message", ""),
                 "exception_type": job.error.get("exception_type", ""),
                 "traceback": [],  # never sent to clients: the server's log has it
                 "current_inputs": {}, "current_outputs": {}}
    out = {
        "id": job.id, "status": STATUS_TO_COMFY.get(job.status, job.status), "priority": num(job.number),
        "create_time": ms(job.created), "execution_start_time": ms(job.started),
        "execution_end_time": ms(job.finished),
        "preview_output": images[0] if images else None,
        "outputs_count": len(images) if job.status in FINISHED else None,
        "previewable_outputs_count": len(images) if job.status in FINISHED else None,
        "execution_error": execution_error, "worker": job.worker, "attempts": job.attempts,
        "workflow_id": _workflow_id(job.extra_data),
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
        "prompt": [num(job.number), job.id, state.comfy_prompt(job), extra, job.outputs or []],
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
    if job.worker and job.status == RUNNING:
        extra["ipgraph_worker"] = job.worker  # which worker runs it (server/workers)
    return [num(job.number), job.id, state.comfy_prompt(job), extra, job.outputs or []]



def comfy_router(state: State) -> APIRouter:
    r = APIRouter(tags=["comfyui"])
    cfg = state.config

    @r.post("/prompt")
    async def post_prompt(request: Request):
        try:
            body = await json_body(request, {})
        except HTTPException as exc:
            return error(400, "invalid_prompt", str(exc.detail))
        if not isinstance(body, dict) or "prompt" not in body:
            return error(400, "no_prompt", "No prompt provided", "")
        prompt = body["prompt"]
        if not isinstance(prompt, dict) or not prompt:
            return error(400, "invalid_prompt", "the prompt must be a non-empty object", "")
        if is_ui_workflow(prompt):  # a UI-format workflow posted as the prompt: convert it as the editor would
            try:
                prompt, ui_warnings = await run_in_threadpool(ui_to_api, prompt, state.object_info())
            except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
                return error(400, "invalid_prompt", "Cannot execute because the workflow is malformed", str(exc))
        else:
            ui_warnings = []
        warnings: list[str] = list(ui_warnings)
        try:
            graph = state.parse_graph(prompt, warnings)
        except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
            return error(400, "invalid_prompt", "Cannot execute because the prompt is malformed", str(exc))
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, (str, int))
                                                                            for t in targets)):
            return error(400, "invalid_prompt", "partial_execution_targets must be a list of node ids", "")
        outputs = [str(t) for t in targets] if targets else None
        await run_in_threadpool(state.prepare_graph, graph)
        problems = await run_in_threadpool(state.engine.validate, graph, outputs)
        if problems:
            top, errors = comfy_api.node_errors(problems, graph)
            body = {"error": top, "node_errors": errors}
            if warnings:
                body["warnings"] = warnings
            return JSONResponse(body, status_code=400)
        job_id = body.get("prompt_id")
        if job_id is not None:
            if not isinstance(job_id, str) or not _ID_RE.match(job_id):
                return error(400, "invalid_prompt", "prompt_id must be a short id string", "")
            if state.store.get(job_id) is not None:
                return error(400, "invalid_prompt", f"prompt_id {job_id!r} is already used", "")
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
        reply = {"prompt_id": job.id, "number": num(job.number), "node_errors": {}}
        if warnings:  # inputs left out are reported, never dropped silently
            reply["warnings"] = warnings
        return reply

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
        body = await json_body(request, {}) or {}
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
        body = await json_body(request, {}) or {}
        job_id = body.get("prompt_id") if isinstance(body, dict) else None
        state.worker.interrupt(str(job_id) if job_id else None)
        return Response(status_code=200)

    @r.post("/free")
    async def free(request: Request):
        body = await json_body(request, {}) or {}
        if not isinstance(body, dict):
            return Response(status_code=200)
        # ComfyUI: unload_models drops the loaded models, free_memory also the cached node outputs. The worker
        # owns the engine; clearing between nodes is safe (a running job keeps its own references).
        if body.get("free_memory"):
            with contextlib.suppress(Exception):
                state.engine.cache.clear()
        if body.get("unload_models") or body.get("free_memory"):
            models = getattr(state.runtime, "_models", None)  # never created -> nothing loaded
            if models is not None and hasattr(models, "clear"):
                await run_in_threadpool(models.clear)
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
        body = await json_body(request, {}) or {}
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
        body = await json_body(request, {}) or {}
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
            path = (files.input_image_path(base, subfolder, filename) if type == "input"
                    else files.safe_join(base, subfolder, filename))
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
        except HTTPException:
            raise
        except Exception as exc:
            raise HTTPException(400, f"bad multipart body: {exc or type(exc).__name__}") from None
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
    return r

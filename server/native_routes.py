"""ipgraph's own API under /ipgraph: nodes, models, bundled graphs, validation and jobs."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ipgraph.engine import Graph, GraphFormatError
from ipgraph.engine.comfy_ui import is_ui_workflow, ui_to_api

from . import comfy_api
from .responses import job_images, json_body
from .state import State
from .store import Job
from .system_routes import model_kinds
from .workflows import bundled_graphs, to_ui_workflow


def native_router(state: State) -> APIRouter:
    r = APIRouter(prefix="/ipgraph", tags=["ipgraph"])

    def job_view(job: Job) -> dict:
        out = job.to_dict()
        out["images"] = [{**img, "url": f"/view?filename={img['filename']}&subfolder={img.get('subfolder', '')}"
                          f"&type={img.get('type', 'output')}"} for img in job_images(job)]
        return out

    @r.get("/nodes", summary="Every node type with its inputs and outputs")
    def nodes():
        return state.registry.describe()

    @r.get("/models", summary="Model files per folder")
    def models():
        return {k: comfy_api._list_models(state.runtime, k) for k in model_kinds(state)}

    @r.get("/models/{kind}")
    def models_of(kind: str):
        if kind not in model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return comfy_api._list_models(state.runtime, kind)

    @r.get("/graphs", summary="Bundled example graphs")
    def graphs():
        return sorted(bundled_graphs(Path(state.config.graphs_dir)))

    @r.get("/first_workflow", summary="The workflow a fresh editor opens (a bundled graph, editor format)")
    def first_workflow():
        name = state.config.first_workflow
        path = bundled_graphs(Path(state.config.graphs_dir)).get(name)
        if path is None:
            raise HTTPException(404, f"the first workflow {name!r} is not among the bundled graphs")
        graph = Graph.from_json(path.read_text(), state.registry)
        return {"name": name, "workflow": to_ui_workflow(graph, state.runtime, name=name)}

    @r.get("/graphs/{name}")
    def graph(name: str):
        path = bundled_graphs(Path(state.config.graphs_dir)).get(name)
        if path is None:
            raise HTTPException(404, "no such bundled graph")
        return json.loads(path.read_text())

    async def _graph_from(request: Request, warnings: list[str] | None = None
                          ) -> tuple[dict, Graph, list[str] | None]:
        body = await json_body(request, None)
        if not isinstance(body, dict) or not isinstance(body.get("graph"), dict):
            raise HTTPException(400, 'expected {"graph": {...}}')
        try:
            graph = state.parse_graph(body["graph"], warnings)
        except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
            raise HTTPException(400, f"not a graph: {exc}") from None
        outputs = body.get("outputs")
        if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)):
            raise HTTPException(400, "outputs must be a list of node ids")
        return body, graph, outputs

    @r.post("/convert", summary="Convert a UI-format workflow (what the editor saves) to ComfyUI's API format")
    async def convert(request: Request):
        body = await json_body(request, None)
        workflow = body.get("workflow") if isinstance(body, dict) and "workflow" in body else body
        if not is_ui_workflow(workflow):
            raise HTTPException(400, 'expected a UI-format workflow ({"nodes": [...], "links": [...]}), '
                                'or {"workflow": {...}}')
        try:
            prompt, warnings = await run_in_threadpool(ui_to_api, workflow, state.object_info())
            state.parse_graph(prompt, warnings)  # adds the sentences about inputs a node does not have
        except (GraphFormatError, ValueError, TypeError, KeyError) as exc:
            raise HTTPException(400, f"not a workflow: {exc}") from None
        return {"prompt": prompt, "warnings": warnings}

    @r.post("/validate", summary="Validate a graph without running it")
    async def validate(request: Request):
        warnings: list[str] = []
        _, graph, outputs = await _graph_from(request, warnings)
        problems = await run_in_threadpool(state.engine.validate, graph, outputs)
        return {"valid": not problems, "problems": [p.to_dict() for p in problems], "warnings": warnings}

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

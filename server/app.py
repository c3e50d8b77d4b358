"""The FastAPI application: native API (``/ipgraph/...``), the ComfyUI-compatible API (every route also under
``/api``), the websocket (``/ws``) and the web editor (the pinned ``comfyui-frontend-package``) at ``/``.

Build one with :func:`create_app`; it starts the worker thread on startup and stops it on shutdown. The routes
live by concern in ``comfy_routes`` (ComfyUI's protocol), ``system_routes`` (editor start-up, system stats,
model listings), ``userdata`` (saved workflows) and ``native_routes`` (``/ipgraph``); ``state`` holds what
they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from ipgraph.engine import Registry

from .comfy_routes import comfy_router
from .native_routes import native_router
from .security import LOOPBACK_HOSTS, SecurityMiddleware
from .state import FRONTEND_VERSION, ServerConfig, State, default_runtime, frontend_static_dir
from .system_routes import system_router
from .userdata import add_userdata_routes
from .workers.http_routes import worker_router

__all__ = ["ServerConfig", "State", "create_app"]

log = logging.getLogger("ipgraph.server")


def create_app(config: ServerConfig | None = None, registry: Registry | None = None, runtime: Any = None) -> FastAPI:
    """Build the app. ``registry`` defaults to ipgraph's nodes (``import ipgraph.nodes``); ``runtime`` to a
    :class:`ipgraph.nodes.core.runtime.Runtime` on the data folder (input/output inside it, no absolute paths)."""
    config = config or ServerConfig()
    uses_default = registry is None
    if registry is None:
        import ipgraph.nodes  # noqa: F401  (registers the node families)
        from ipgraph.engine import REGISTRY

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
    app.include_router(worker_router(state))
    router = APIRouter()
    router.include_router(comfy_router(state))
    router.include_router(system_router(state))
    add_userdata_routes(router, state)
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

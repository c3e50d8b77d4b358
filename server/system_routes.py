"""What the web editor asks for at start-up (users, settings, extensions, features), system stats and the
model folder listings (mounted at / and /api, as ComfyUI's)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from . import comfy_api
from .responses import json_body
from .state import FRONTEND_VERSION, State

WEB_DIR = Path(__file__).resolve().parent / "web"
EXTENSIONS = ("ipgraph.js",)  # the editor imports these (first screen, requests kept on this machine)


def system_router(state: State) -> APIRouter:
    r = APIRouter(tags=["comfyui"])
    cfg = state.config

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
        body = await json_body(request, {})
        if not isinstance(body, dict):
            raise HTTPException(400, "expected an object of settings")
        state.write_settings(body)
        return Response(status_code=200)

    @r.post("/settings/{setting_id}")
    async def post_setting(setting_id: str, request: Request):
        value = await json_body(request, None)
        state.write_settings({setting_id: value})
        return Response(status_code=200)

    @r.get("/extensions")
    def extensions():
        return [f"/extensions/ipgraph/{name}" for name in EXTENSIONS]

    @r.get("/extensions/ipgraph/{name}", include_in_schema=False)
    def extension_file(name: str):
        if name not in EXTENSIONS:
            raise HTTPException(404, "no such extension file")
        return FileResponse(WEB_DIR / name, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

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
    def get_system_stats():
        return system_stats(state)

    @r.get("/models")
    def model_folders():
        return list(model_kinds(state))

    @r.get("/models/{folder}")
    def model_files(folder: str):
        if folder not in model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return comfy_api._list_models(state.runtime, folder)

    @r.get("/experiment/models")
    def experiment_models():
        return [{"name": k, "folders": [str(Path(getattr(state.runtime, "models_dir", "")) / k)]}
                for k in model_kinds(state)]

    @r.get("/experiment/models/{folder}")
    def experiment_model_files(folder: str):
        if folder not in model_kinds(state):
            raise HTTPException(404, "unknown model folder")
        return [{"name": n, "pathIndex": 0} for n in comfy_api._list_models(state.runtime, folder)]

    return r


def model_kinds(state: State) -> tuple[str, ...]:
    kinds = getattr(state.runtime, "model_kinds", None)
    if kinds is not None:
        return tuple(kinds)
    try:
        from ipgraph.nodes.core.runtime import MODEL_KINDS

        return MODEL_KINDS
    except Exception:
        return ()


def system_stats(state: State) -> dict:
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
            "devices": devices,
            "workers": state.worker.describe()}  # ipgraph: every worker, its device and the job it runs

"""Small helpers every route module uses: structured error bodies, JSON bodies, numbers as ComfyUI prints them."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from ipgraph.engine.graph import GraphFormatError, parse_json

from .store import Job


def error(status: int, type_: str, message: str, details: str = "", **extra) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}
    body.update(extra)
    return JSONResponse(body, status_code=status)


async def json_body(request: Request, default: Any = None) -> Any:
    raw = await request.body()
    if not raw:
        return default
    try:
        return parse_json(raw)
    except GraphFormatError as exc:
        detail = str(exc) if "nested" in str(exc) else "the request body is not valid JSON"
        raise HTTPException(400, detail) from None


def job_images(job: Job) -> list[dict]:
    out = []
    for node_id, ui in (job.ui or {}).items():
        for img in (ui or {}).get("images", []) if isinstance(ui, dict) else []:
            if isinstance(img, dict) and "filename" in img:
                out.append({**img, "nodeId": node_id, "mediaType": "images"})
    return out


def num(n: float) -> int | float:
    return int(n) if float(n).is_integer() else n


def ms(t: float | None) -> int | None:
    return int(t * 1000) if t else None

"""``/userdata``: the editor's per-user files (saved workflows, keybindings...), kept under
``DATA/user/default``. The bundled ``graphs/*.json`` are listed in ``workflows/`` too, converted on the fly to the
editor's workflow format; saving under the same name stores the user's copy, which then wins.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from ipgraph.engine import Graph

from . import files
from .workflows import bundled_graphs, to_ui_workflow

if TYPE_CHECKING:
    from .state import State

MAX_USERDATA_BYTES = 16 * 1024 * 1024


def add_userdata_routes(r: APIRouter, state: State) -> None:
    root = state.config.user_dir
    graphs_dir = Path(state.config.graphs_dir)

    def resolve(rel: str) -> Path:
        try:
            path = files.safe_join(root, rel)
        except files.UnsafePath as exc:
            raise HTTPException(403, str(exc)) from None
        if path == root.resolve():
            raise HTTPException(400, "a file name is required")
        return path

    def bundled(rel: str) -> Path | None:
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == "workflows":
            return bundled_graphs(graphs_dir).get(parts[1])
        return None

    def converted(path: Path) -> dict:
        graph = Graph.from_json(path.read_text(), state.registry)
        return to_ui_workflow(graph, state.runtime, name=path.name)

    @r.get("/userdata")
    def list_userdata(dir: str = "", recurse: bool = False, split: bool = False, full_info: bool = False):  # noqa: A002
        base = resolve(dir) if dir else root.resolve()
        entries: dict[str, dict] = {}
        if base.is_dir():
            it = base.rglob("*") if recurse else base.glob("*")
            for p in it:
                if p.is_file() and not p.name.startswith(".") and not p.is_symlink():
                    st = p.stat()
                    rel = p.relative_to(base).as_posix()
                    entries[rel] = {"path": rel, "size": st.st_size, "modified": st.st_mtime,
                                    "created": st.st_ctime}
        if dir.strip("/") == "workflows":
            for name, path in bundled_graphs(graphs_dir).items():
                if name not in entries:
                    st = path.stat()
                    entries[name] = {"path": name, "size": st.st_size, "modified": st.st_mtime,
                                     "created": st.st_mtime}
        items = sorted(entries.values(), key=lambda e: e["path"])
        if full_info:
            return items
        if split:
            return [[e["path"], *e["path"].split("/")] for e in items]
        return [e["path"] for e in items]

    @r.post("/userdata/{file:path}/move/{dest:path}")
    def move_userdata(file: str, dest: str, overwrite: bool = True, full_info: bool = False):
        src, dst = resolve(file), resolve(dest)
        if not src.is_file():
            raise HTTPException(404, "no such file")
        if dst.exists() and not overwrite:
            raise HTTPException(409, "the destination exists")
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)
        return _info(dst, root) if full_info else dst.relative_to(root.resolve()).as_posix()

    @r.get("/userdata/{file:path}")
    def get_userdata(file: str):
        path = resolve(file)
        if path.is_file():
            return FileResponse(path, media_type=files.media_type(path) if path.suffix == ".json"
                                else "application/octet-stream", headers={"X-Content-Type-Options": "nosniff"})
        source = bundled(file)
        if source is not None:
            try:
                return JSONResponse(converted(source))
            except Exception as exc:
                raise HTTPException(500, f"could not convert {source.name}: {exc}") from None
        raise HTTPException(404, "no such file")

    @r.post("/userdata/{file:path}")
    async def post_userdata(file: str, request: Request, overwrite: bool = True, full_info: bool = False):
        path = resolve(file)
        body = await request.body()
        if len(body) > MAX_USERDATA_BYTES:
            raise HTTPException(413, "file too large")
        if path.exists() and not overwrite:
            raise HTTPException(409, "the file exists")
        if path.is_symlink() or path.is_dir():
            raise HTTPException(403, "refusing to write there")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{time.time_ns()}.part")
        tmp.write_bytes(body)
        tmp.replace(path)
        if full_info:
            return _info(path, root)
        return JSONResponse(path.relative_to(root.resolve()).as_posix())

    @r.delete("/userdata/{file:path}")
    def delete_userdata(file: str):
        path = resolve(file)
        if path.is_file():
            path.unlink()
            return Response(status_code=204)
        if bundled(file) is not None:
            raise HTTPException(409, "bundled workflows cannot be deleted")
        raise HTTPException(404, "no such file")


def _info(path: Path, root: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(root.resolve()).as_posix(), "size": st.st_size, "modified": st.st_mtime,
            "created": st.st_ctime}


__all__ = ["add_userdata_routes", "json"]

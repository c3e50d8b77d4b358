"""Files a worker uploads (its output nodes' PNGs) land in the server's output/temp folders under names that are
free there: the worker's own name when no one took it, else the next number of ComfyUI's ``prefix_NNNNN_.png``
scheme. Each (worker, file) keeps its server name, so a cached output node re-reported later points at the file
the server stored the first time."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from .. import files

_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<n>\d{5})_\.png$")
_ALLOWED = (".png", ".jpg", ".jpeg", ".webp", ".gif")


class OutputStore:
    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = {k: Path(v) for k, v in folders.items()}
        self._lock = threading.Lock()
        self._names: dict[tuple, str] = {}

    def ingest(self, worker: str, ui: dict, uploads: list[dict]) -> dict:
        """Store ``uploads`` and return ``ui`` with every image's filename as the server stored it."""
        for up in uploads:
            self._store(worker, up)
        images = ui.get("images") if isinstance(ui, dict) else None
        if not isinstance(images, list):
            return ui
        renamed = []
        for img in images:
            if isinstance(img, dict) and "filename" in img:
                key = (worker, img.get("type", "output"), img.get("subfolder") or "", img["filename"])
                img = {**img, "filename": self._names.get(key, img["filename"])}
            renamed.append(img)
        return {**ui, "images": renamed}

    def _store(self, worker: str, up: dict) -> None:
        kind, sub, name = up.get("type", "output"), up.get("subfolder") or "", str(up.get("filename", ""))
        base = self.folders.get(kind)
        if base is None or not name.lower().endswith(_ALLOWED) or not isinstance(up.get("data"), bytes):
            raise ValueError(f"refused upload {name!r} of type {kind!r}")
        folder = files.safe_join(base, sub) if sub else base
        folder.mkdir(parents=True, exist_ok=True)
        files.safe_join(base, sub, files.sanitize_filename(name))  # refuses anything escaping the folder
        with self._lock:
            final = self._reserve(folder, files.sanitize_filename(name))
            tmp = folder / f".{final}.part"
            tmp.write_bytes(up["data"])
            os.replace(tmp, folder / final)
            self._names[(worker, kind, sub, name)] = final

    @staticmethod
    def _reserve(folder: Path, name: str) -> str:
        if not (folder / name).exists():
            return name
        m = _NUMBERED.match(name)
        if m:
            stem = m.group("stem")
            pat = re.compile(re.escape(stem) + r"_(\d{5})_\.png$")
            n = max((int(x.group(1)) for p in folder.iterdir() if (x := pat.match(p.name))), default=0) + 1
            return f"{stem}_{n:05d}_.png"
        stem, dot, ext = name.rpartition(".")
        n = 1
        while (folder / f"{stem}_{n}.{ext}").exists():
            n += 1
        return f"{stem}_{n}.{ext}"

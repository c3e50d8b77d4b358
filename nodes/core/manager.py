"""The model manager: every model file is loaded once per (file, dtype, device) and kept under a budget.

Loaded models are shared read-only by every graph. On CUDA the manager keeps what sampling needs on the
GPU and moves the least recently used models back to the CPU when the device budget would be exceeded; on
the CPU nothing moves. Loading the same checkpoint twice in one process returns the same objects.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def module_nbytes(obj: Any) -> int:
    """Parameter + buffer bytes of a module, or of every module inside a tuple/dataclass of them."""
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, (tuple, list)):
        return sum(module_nbytes(o) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(module_nbytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


def modules_of(obj: Any) -> list[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [m for o in obj for m in modules_of(o)]
    if hasattr(obj, "__dataclass_fields__"):
        return [m for f in obj.__dataclass_fields__ for m in modules_of(getattr(obj, f))]
    return []


def modules_in(value: Any, depth: int = 0) -> Iterator[torch.nn.Module]:
    """Modules reachable from a node's outputs: through modules, dataclasses, pydantic models, dicts, lists."""
    if depth > 8 or value is None or isinstance(value, (str, bytes, int, float, bool, torch.Tensor)):
        return
    if isinstance(value, torch.nn.Module):
        yield value
        return
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    elif hasattr(value, "__dataclass_fields__"):
        children = (getattr(value, f, None) for f in value.__dataclass_fields__)
    elif hasattr(type(value), "model_fields"):
        children = (getattr(value, f, None) for f in type(value).model_fields)
    else:
        return
    for child in children:
        yield from modules_in(child, depth + 1)


def file_bytes(path) -> int:
    """Bytes on disk of a model file or folder: the default ``size_hint`` of :meth:`ModelManager.load`."""
    path = Path(path)
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def file_fingerprint(path: Path) -> str:
    """path + size + mtime: a changed file changes the cache key of whatever loaded it."""
    if path.is_dir():
        parts = []
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}")
        return f"{path}|" + ";".join(parts)
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def release_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc keeps them otherwise, so RSS would
    stay at its peak after a model is dropped)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


@dataclass
class _Loaded:
    value: Any
    nbytes: int
    stamp: str | None = None  # the source file's path, size and mtime when it was loaded


def _stamp(path) -> str | None:
    try:
        return file_fingerprint(Path(path))
    except OSError:
        return None


class ModelManager:
    """Loads, shares and places models. ``budget_bytes`` bounds what is kept on the compute device."""

    def __init__(self, device: torch.device, dtype: torch.dtype, budget_bytes: int | None = None,
                 max_loaded_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if budget_bytes is None and self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            budget_bytes = int(free * 0.8)
        self.budget_bytes = budget_bytes
        self.max_loaded_bytes = max_loaded_bytes  # RAM bound on loaded files; None = unbounded
        self._loaded: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader really ran (tests check the second load is free)
        self.evictions = 0
        self._evicted: weakref.WeakSet = weakref.WeakSet()  # dropped modules something may still hold
        self.on_evict: list[Callable[[], None]] = []  # called after models were dropped (cache pruning)

    def load(self, key: tuple, loader: Callable[[], Any], size_hint: int | None = None, path=None) -> Any:
        """Return the model for ``key`` (kind, file, ...), running ``loader`` only the first time.

        ``path``: the file or folder the model is read from. A file replaced under the same name (its size or
        mtime changed) is loaded again and the old model dropped, as ComfyUI reads the file each time its
        loader runs; its size is the default ``size_hint``. Under ``max_loaded_bytes``, least recently used
        models are dropped BEFORE loading when ``size_hint`` says the new one would not fit, so two models never
        overlap at the peak, and again after loading with the real size."""
        full_key = (*key, str(self.dtype), str(self.device))
        stamp = _stamp(path) if path is not None else None
        with self._lock:
            hit = self._loaded.get(full_key)
            if hit is not None and hit.stamp == stamp:
                self._loaded.move_to_end(full_key)
                return hit.value
            if hit is not None:  # the file changed since: the old model goes first
                self._forget([self._loaded.pop(full_key)])
            if size_hint is None and path is not None:
                size_hint = file_bytes(path)
            if size_hint:
                self._evict_loaded(keep=None, extra=int(size_hint))
            value = loader()
            self.loads += 1
            entry = _Loaded(value, module_nbytes(value), stamp)
            self._loaded[full_key] = entry
            self._evict_loaded(keep=full_key)
            return value

    def _evict_loaded(self, keep: tuple | None, extra: int = 0) -> None:
        if self.max_loaded_bytes is None:
            return
        dropped = []
        while (sum(e.nbytes for e in self._loaded.values()) + extra > self.max_loaded_bytes
               and any(k != keep for k in self._loaded)):
            oldest = next(k for k in self._loaded if k != keep)
            dropped.append(self._loaded.pop(oldest))
        if dropped:
            self._forget(dropped)

    def _forget(self, dropped: list[_Loaded]) -> None:
        """Remember dropped modules (so cached outputs holding them can be pruned), then free the memory."""
        for entry in dropped:
            for m in modules_of(entry.value):
                self._evicted.add(m)
        self.evictions += len(dropped)
        dropped.clear()  # the caller's list: nothing here keeps the models alive any more
        for hook in list(self.on_evict):
            hook()
        release_memory()

    def holds_evicted(self, value: Any) -> bool:
        """Whether ``value`` (a node's outputs) references a model this manager has dropped."""
        return bool(self._evicted) and any(m in self._evicted for m in modules_in(value))

    @contextmanager
    def on_device(self, *objs: Any, once_per_job: bool = False) -> Iterator[None]:
        """Make sure the modules inside ``objs`` are on the compute device for the duration of the block.

        ``once_per_job``: the modules run once per job (text and image encoders, the VAE), not at every step;
        afterwards the pages of their file-mapped weights leave the process's resident memory and come back
        from the page cache on the next use (:func:`~ipgraph.nodes.models.tensorfile.release_pages`)."""
        wanted = [m for o in objs for m in modules_of(o)]
        if self.device.type != "cpu":
            with self._lock:
                need = sum(module_nbytes(m) for m in wanted if _device_of(m) != self.device)
                self._make_room(need, wanted)
                for m in wanted:
                    if _device_of(m) != self.device:
                        m.to(self.device)
        try:
            yield
        finally:
            if once_per_job:
                from ..models.tensorfile import release_pages

                release_pages(wanted)

    def _make_room(self, need: int, keep: list[torch.nn.Module]) -> None:
        if self.budget_bytes is None:
            return
        keep_ids = {id(m) for m in keep}
        on_device = [m for e in self._loaded.values() for m in modules_of(e.value)
                     if _device_of(m) == self.device and id(m) not in keep_ids]
        used = sum(module_nbytes(m) for m in on_device) + sum(
            module_nbytes(m) for m in keep if _device_of(m) == self.device)
        for m in on_device:  # least recently loaded first
            if used + need <= self.budget_bytes:
                break
            m.to("cpu")
            used -= module_nbytes(m)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict:
        with self._lock:
            return {"loaded": len(self._loaded), "bytes": sum(e.nbytes for e in self._loaded.values()),
                    "loads": self.loads}

    def clear(self) -> None:
        """Drop every model (ComfyUI's ``/free`` ``unload_models``); cached outputs holding them are pruned."""
        with self._lock:
            dropped = list(self._loaded.values())
            self._loaded.clear()
            self._forget(dropped)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")

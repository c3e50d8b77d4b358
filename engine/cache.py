"""Merkle cache keys and the byte-bounded LRU output cache shared across runs."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from . import tensors


def node_key(type_name: str, version: int, literals: dict, upstream: dict[str, tuple[str, str]],
             fingerprint: str | None) -> str:
    """Hash of what determines a node's outputs; node ids never enter it.

    ``upstream`` maps input name → (upstream key, output name).
    """
    payload = json.dumps(
        [type_name, version, literals, sorted((k, v[0], v[1]) for k, v in upstream.items()), fingerprint],
        sort_keys=True, default=repr, separators=(",", ":"),
    )
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()


@dataclass
class CacheEntry:
    outputs: Any  # the node's NodeOutputs instance
    ui: dict | None
    nbytes: int


class OutputCache:
    """LRU by bytes. An entry larger than the whole budget is not stored (its run still uses it)."""

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, outputs: Any, ui: dict | None) -> CacheEntry:
        entry = CacheEntry(outputs, ui, tensors.nbytes(outputs))
        if entry.nbytes > self.max_bytes:
            return entry
        tensors.freeze_arrays(outputs)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
        return entry

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes

    def discard_holding(self, objects: list) -> int:
        """Drop every entry that shares one of ``objects`` (tensors changed in place by a faulty node)."""
        wanted = {id(o) for o in objects}
        with self._lock:
            doomed = [k for k, e in self._entries.items()
                      if any(id(t) in wanted for t in tensors.iter_tensors(e.outputs))]
        for key in doomed:
            self.discard(key)
        return len(doomed)

    def discard_where(self, predicate) -> int:
        """Drop every entry whose outputs satisfy ``predicate`` (resources released what they hold)."""
        with self._lock:
            doomed = [k for k, e in self._entries.items() if predicate(e.outputs)]
        for key in doomed:
            self.discard(key)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

"""The one place the engine looks inside values: byte sizes for the cache and in-place-change detection.

torch is imported lazily so the engine itself never needs it; values that are not tensors (or containers of
them) count as small. A value may declare its own size with ``cache_nbytes()`` (model handles return 0:
their weights belong to the model manager, not the output cache).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

_SMALL = 64  # bytes charged for a non-tensor leaf


def _torch():
    return sys.modules.get("torch")  # only present if some node imported it


def iter_tensors(value: Any, depth: int = 0) -> Iterator[Any]:
    """Tensors/arrays reachable through plain containers, dataclasses and pydantic models."""
    if depth > 6 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        yield value
        return
    if torch is not None and isinstance(value, torch.nn.Module):
        return
    if type(value).__module__ == "numpy" and hasattr(value, "nbytes"):
        yield value
        return
    if hasattr(value, "cache_nbytes"):
        return
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    elif hasattr(value, "__dataclass_fields__"):
        children = (getattr(value, f) for f in value.__dataclass_fields__)
    elif hasattr(type(value), "model_fields"):
        children = (getattr(value, f) for f in type(value).model_fields)
    else:
        return
    for child in children:
        yield from iter_tensors(child, depth + 1)


def nbytes(value: Any, depth: int = 0) -> int:
    """Approximate memory held by a value, counting each tensor storage once."""
    if hasattr(value, "cache_nbytes"):
        return int(value.cache_nbytes())
    total, seen = 0, set()
    found = False
    for t in iter_tensors(value, depth):
        found = True
        key = id(t)
        if key in seen:
            continue
        seen.add(key)
        total += int(t.element_size() * t.nelement()) if hasattr(t, "element_size") else int(t.nbytes)
    return total if found else _SMALL


def versions(value: Any) -> list[tuple[Any, int]]:
    """(tensor, version counter) pairs: an in-place change bumps a torch tensor's ``_version``."""
    out = []
    for t in iter_tensors(value):
        if hasattr(t, "_version"):
            out.append((t, t._version))
    return out


def changed(snapshot: list[tuple[Any, int]]) -> bool:
    return any(t._version != v for t, v in snapshot)


def freeze_arrays(value: Any) -> None:
    """numpy arrays in cached values are made read-only (numpy has a flag for it; torch does not)."""
    for t in iter_tensors(value):
        if hasattr(t, "flags") and hasattr(t.flags, "writeable"):
            try:
                t.flags.writeable = False
            except ValueError:
                pass

"""Wire events and results over JSON: bytes (previews, uploaded files) travel as ``{"__b64__": "..."}``."""

from __future__ import annotations

import base64
from typing import Any


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__b64__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__b64__"} and isinstance(value["__b64__"], str):
            return base64.b64decode(value["__b64__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value

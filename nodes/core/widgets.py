"""Small helpers shared by the node families: model-name widgets, file checks and fingerprints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from ..models.probe import unreadable_reason
from .runtime import ModelNotFound, Runtime, file_fingerprint


def ModelName(kind: str, description: str) -> Any:  # noqa: N802
    """A widget naming a file in the models folder of ``kind`` (the server lists the choices)."""
    return Field(..., min_length=1, description=description, json_schema_extra={"model_kind": kind})


def model_file_check(kind: str, inspect: Callable[[Path], Iterable[str]] | None = None, field: str = "name"):
    """A validation hook: the named model file must exist (the message lists what is available), and
    ``inspect(path)`` (a cheap header read) may add sentences saying why the file cannot serve."""

    def check(literals: dict, runtime: Runtime | None):
        if runtime is None:
            return
        try:
            path = runtime.model_path(kind, literals[field])
        except ModelNotFound as exc:
            yield field, str(exc)
            return
        problem = unreadable_reason(path)
        if problem:
            yield field, problem
            return
        for sentence in inspect(path) if inspect else ():
            yield field, sentence

    return check


def model_file_fingerprint(kind: str, field: str = "name"):
    def fingerprint(literals: dict, runtime: Runtime | None) -> str:
        if runtime is None:
            return ""
        try:
            return file_fingerprint(runtime.model_path(kind, literals[field]))
        except ModelNotFound:
            return "missing"

    return fingerprint


def image_file_fingerprint(field: str):
    def fingerprint(literals: dict, runtime: Runtime | None) -> str:
        try:
            return file_fingerprint(runtime.image_path(literals[field]))
        except (FileNotFoundError, AttributeError):
            return "missing"

    return fingerprint


def runtime_of(ctx) -> Runtime:
    runtime = ctx.resources
    if not isinstance(runtime, Runtime):
        raise RuntimeError("diffusion nodes need a ipgraph.nodes.core.runtime.Runtime as the engine's resources")
    return runtime

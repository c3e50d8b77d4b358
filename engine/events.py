"""Typed run events: the only way progress leaves the engine (CLI, server and tests all subscribe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    run_id: str

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "preview"}
        data["kind"] = self.kind
        return data


@dataclass(frozen=True)
class RunStarted(Event):
    nodes: tuple[str, ...] = ()  # the planned nodes, in execution order


@dataclass(frozen=True)
class NodeCached(Event):
    node_id: str = ""
    node_type: str = ""
    ui: dict | None = None


@dataclass(frozen=True)
class NodeStarted(Event):
    node_id: str = ""
    node_type: str = ""


@dataclass(frozen=True)
class NodeProgress(Event):
    node_id: str = ""
    value: int = 0
    max: int = 0
    preview: Any = field(default=None, compare=False)  # optional small PIL image (latent preview)


@dataclass(frozen=True)
class NodeFinished(Event):
    node_id: str = ""
    node_type: str = ""
    seconds: float = 0.0
    ui: dict | None = None


@dataclass(frozen=True)
class RunFinished(Event):
    seconds: float = 0.0
    executed: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunFailed(Event):
    error: dict = field(default_factory=dict)  # NodeError.to_dict() or {"problems": [...]} for validation


@dataclass(frozen=True)
class RunCancelled(Event):
    node_id: str | None = None

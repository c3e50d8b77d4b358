"""Planning and running a validated graph with the shared output cache.

The run is: validate everything → prune to what the requested outputs need → order with networkx →
compute Merkle keys → run each node whose key is not cached. Nodes get a :class:`NodeContext` for progress and
cancellation; events are the only way progress leaves the engine.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

from . import events as ev
from . import tensors
from .cache import OutputCache, node_key
from .graph import Graph, is_link
from .node import REGISTRY, NodeType, Registry
from .validate import GraphProblem, graph_dag, output_nodes, validate

EventSink = Callable[[ev.Event], None]


class CancelToken:
    """Set from any thread; the run stops at the next check (between nodes, or a node's progress call)."""

    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled


class RunCancelledError(Exception):
    """Raised inside a node by ``ctx.check_cancelled()``; the run ends with a RunCancelled event."""


class ValidationFailed(Exception):
    def __init__(self, problems: list[GraphProblem]) -> None:
        self.problems = problems
        super().__init__("the graph is not valid:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class NodeError:
    """What the user needs to know about a node that raised."""

    node_id: str
    node_type: str
    exception_type: str
    message: str
    inputs: dict[str, str] = field(default_factory=dict)  # summaries, never dumped tensors
    traceback: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: {self.message}"


class NodeFailed(Exception):
    def __init__(self, error: NodeError) -> None:
        self.error = error
        super().__init__(str(error))


class InputMutatedError(RuntimeError):
    """A node changed one of its inputs in place, which would corrupt values shared through the cache."""


class NodeContext:
    """Handed to every node function: progress, cancellation, UI payload, shared resources."""

    def __init__(self, run_id: str, node_id: str, node_type: str, resources: Any, emit: EventSink,
                 cancel: CancelToken, graph: Graph | None = None, extra: dict | None = None) -> None:
        self.run_id = run_id
        self.graph = graph  # the document being run (SaveImage embeds it in the PNG)
        self.extra = extra or {}  # caller-supplied run data (e.g. the editor's workflow for PNG metadata)
        self.node_id = node_id
        self.node_type = node_type
        self.resources = resources
        self._emit = emit
        self._cancel = cancel
        self.ui: dict | None = None

    def check_cancelled(self) -> None:
        if self._cancel.cancelled:
            raise RunCancelledError(f"run {self.run_id} cancelled in node {self.node_id}")

    def progress(self, value: int, maximum: int, preview: Any = None) -> None:
        """Report progress (and optionally a small preview image), then honour cancellation."""
        self._emit(ev.NodeProgress(self.run_id, self.node_id, int(value), int(maximum), preview))
        self.check_cancelled()

    def set_ui(self, ui: dict) -> None:
        """What an output node shows (saved image names...); kept with the cached outputs."""
        self.ui = ui


@dataclass
class RunResult:
    run_id: str
    outputs: dict[str, Any]  # node id -> NodeOutputs instance, for every planned node
    ui: dict[str, dict]
    executed: list[str]
    cached: list[str]
    seconds: float


class Engine:
    """Runs graphs against one registry, one resources object and one output cache (kept across runs)."""

    def __init__(self, registry: Registry | None = None, resources: Any = None,
                 cache_bytes: int = 2 * 1024**3) -> None:
        self.registry = registry or REGISTRY
        self.resources = resources
        self.cache = OutputCache(cache_bytes)
        attach = getattr(resources, "attach_cache", None)
        if callable(attach):  # resources that drop things cached outputs hold (models) prune the cache
            attach(self.cache)

    def validate(self, graph: Graph, outputs: list[str] | None = None) -> list[GraphProblem]:
        return validate(graph, self.resources, outputs)

    def plan(self, graph: Graph, outputs: list[str] | None = None) -> list[str]:
        """Node ids the requested outputs need, in a topological order."""
        targets = list(outputs) if outputs is not None else output_nodes(graph)
        dag = graph_dag(graph)
        needed = set(targets)
        for target in targets:
            needed |= nx.ancestors(dag, target)
        sub = dag.subgraph(needed)
        return list(nx.lexicographical_topological_sort(sub))  # deterministic: same graph, same order

    def run(self, graph: Graph, outputs: list[str] | None = None, on_event: EventSink | None = None,
            cancel: CancelToken | None = None, run_id: str | None = None, extra: dict | None = None) -> RunResult:
        run_id = run_id or uuid.uuid4().hex
        emit = on_event or (lambda event: None)
        cancel = cancel or CancelToken()
        started = time.perf_counter()

        problems = self.validate(graph, outputs)
        if problems:
            emit(ev.RunFailed(run_id, {"problems": [p.to_dict() for p in problems]}))
            raise ValidationFailed(problems)
        order = self.plan(graph, outputs)
        emit(ev.RunStarted(run_id, tuple(order)))

        keys: dict[str, str] = {}
        values: dict[str, Any] = {}
        uis: dict[str, dict] = {}
        executed: list[str] = []
        cached: list[str] = []
        current: str | None = None
        try:
            for node_id in order:
                current = node_id
                if cancel.cancelled:
                    raise RunCancelledError(f"run {run_id} cancelled before node {node_id}")
                entry = graph.nodes[node_id]
                node_type = self.registry[entry.type]
                literals = self._literals(node_type, entry.inputs)
                key = self._key(node_type, entry.inputs, literals, keys)
                keys[node_id] = key
                hit = self.cache.get(key)
                if hit is not None:
                    values[node_id] = hit.outputs
                    if hit.ui is not None:
                        uis[node_id] = hit.ui
                    cached.append(node_id)
                    emit(ev.NodeCached(run_id, node_id, entry.type, hit.ui))
                    continue
                ctx = NodeContext(run_id, node_id, entry.type, self.resources, emit, cancel, graph, extra)
                outputs_value, ui, seconds = self._execute(ctx, node_type, entry.inputs, literals, values)
                values[node_id] = outputs_value
                if ui is not None:
                    uis[node_id] = ui
                self.cache.put(key, outputs_value, ui)
                executed.append(node_id)
                emit(ev.NodeFinished(run_id, node_id, entry.type, seconds, ui))
        except RunCancelledError:
            emit(ev.RunCancelled(run_id, current))
            raise
        except NodeFailed as exc:
            emit(ev.RunFailed(run_id, exc.error.to_dict()))
            raise
        seconds = time.perf_counter() - started
        emit(ev.RunFinished(run_id, seconds, tuple(executed), tuple(cached)))
        return RunResult(run_id, values, uis, executed, cached, seconds)

    def cache_keys(self, graph: Graph, outputs: list[str] | None = None) -> dict[str, str]:
        """The output-cache key each planned (cacheable) node would have, without running anything: lets a
        scheduler send a graph to the worker whose cache already holds its upstream outputs."""
        keys: dict[str, str] = {}
        for node_id in self.plan(graph, outputs):
            entry = graph.nodes[node_id]
            node_type = self.registry[entry.type]
            keys[node_id] = self._key(node_type, entry.inputs, self._literals(node_type, entry.inputs), keys)
        return {n: k for n, k in keys.items() if not k.startswith("uncacheable:")}

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _literals(node_type: NodeType, inputs: dict) -> dict:
        """Validated widget values, defaults filled in (validation already proved they pass)."""
        literals = {}
        for name, spec in node_type.inputs.items():
            if spec.socket:
                continue
            value = inputs.get(name)
            if is_link(value):
                continue
            if value is None:
                literals[name] = spec.default
            else:
                literals[name] = spec.adapter.validate_python(value)
        return literals

    def _key(self, node_type: NodeType, inputs: dict, literals: dict, keys: dict[str, str]) -> str:
        if not node_type.cacheable:
            return "uncacheable:" + uuid.uuid4().hex
        upstream = {name: (keys[v.node], v.output) for name, v in inputs.items() if is_link(v)}
        fingerprint = node_type.fingerprint(literals, self.resources) if node_type.fingerprint else None
        return node_key(node_type.type_name, node_type.version, literals, upstream, fingerprint)

    def _execute(self, ctx: NodeContext, node_type: NodeType, inputs: dict, literals: dict, values: dict):
        kwargs = dict(literals)
        linked = {}
        for name, value in inputs.items():
            if is_link(value):
                linked[name] = value
                kwargs[name] = getattr(values[value.node], value.output)
        snapshots = {name: tensors.versions(kwargs[name]) for name in linked}
        ctx._emit(ev.NodeStarted(ctx.run_id, ctx.node_id, node_type.type_name))
        started = time.perf_counter()
        try:
            inp = node_type.inputs_model.model_construct(**kwargs)
            result = node_type.fn(inp, ctx)
            if not isinstance(result, node_type.outputs_model):
                raise TypeError(f"returned {type(result).__name__}, expected {node_type.outputs_model.__name__}")
            mutated = [name for name, snap in snapshots.items() if tensors.changed(snap)]
            if mutated:  # the shared values are corrupt: never serve them again
                self.cache.discard_holding([t for name in mutated for t, _ in snapshots[name]])
                raise InputMutatedError(
                    f"the node changed its input(s) {', '.join(mutated)} in place; nodes must not modify "
                    "their inputs (clone first). The affected cached values were dropped.")
        except RunCancelledError:
            raise
        except Exception as exc:
            raise NodeFailed(NodeError(
                node_id=ctx.node_id,
                node_type=node_type.type_name,
                exception_type=type(exc).__name__,
                message=str(exc) or repr(exc),
                inputs={k: summarize(v) for k, v in kwargs.items()},
                traceback=traceback.format_exc(),
            )) from exc
        return result, ctx.ui, time.perf_counter() - started


def summarize(value: Any, limit: int = 80) -> str:
    """Short description of an input value for error reports (shapes, not contents)."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__}[{', '.join(str(s) for s in shape)}] {value.dtype}"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"{type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Validation of a whole document before anything runs: every problem is collected, none stops the search."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
from pydantic import ValidationError

from .graph import Graph, is_link
from .node import ANY

# Pydantic error types → our machine types.
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
_CHOICE_ERRORS = {"literal_error", "enum"}


@dataclass(frozen=True)
class GraphProblem:
    """One problem: where (node, input), what kind (``type``) and a plain sentence."""

    node_id: str | None
    input: str | None
    type: str
    message: str
    node_type: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"node {self.node_id}" if self.node_id is not None else "graph"
        if self.node_type:
            where += f" ({self.node_type})"
        if self.input:
            where += f", input {self.input!r}"
        return f"{where}: {self.message}"


def validate(graph: Graph, resources: Any = None, outputs: list[str] | None = None) -> list[GraphProblem]:
    """Return all problems of ``graph`` (empty list = runnable)."""
    problems: list[GraphProblem] = []
    registry = graph.registry

    def add(node_id, input_name, kind, message, node_type=None):
        problems.append(GraphProblem(node_id, input_name, kind, message, node_type))

    for node_id, entry in graph.nodes.items():
        node_type = registry.get(entry.type)
        if node_type is None:
            add(node_id, None, "unknown_node_type", f"there is no node type {entry.type!r}", entry.type)
            continue
        literals: dict[str, Any] = {}
        input_ok = True
        for name in entry.inputs:
            if name not in node_type.inputs:
                add(node_id, name, "unknown_input", f"{entry.type} has no input {name!r}", entry.type)
                input_ok = False
        for name, spec in node_type.inputs.items():
            value = entry.inputs.get(name)
            if name not in entry.inputs or value is None:
                if not spec.required and not spec.socket:
                    literals[name] = spec.default
                if spec.required:
                    what = f"a link of type {spec.socket}" if spec.socket else "a value"
                    add(node_id, name, "missing_input", f"this input is required: give it {what}", entry.type)
                    input_ok = False
                continue
            if is_link(value):
                upstream = graph.nodes.get(value.node)
                if upstream is None:
                    add(node_id, name, "missing_node", f"links to node {value.node!r}, which is not in the graph",
                        entry.type)
                    input_ok = False
                    continue
                up_type = registry.get(upstream.type)
                if up_type is None:
                    input_ok = False
                    continue  # already reported on the upstream node
                out = up_type.outputs.get(value.output)
                if out is None:
                    add(node_id, name, "unknown_output",
                        f"node {value.node!r} ({upstream.type}) has no output {value.output!r}; "
                        f"it has: {', '.join(up_type.outputs)}", entry.type)
                    input_ok = False
                    continue
                wanted = spec.accepts_link_type
                if ANY not in (wanted, out.socket) and wanted != out.socket:
                    add(node_id, name, "type_mismatch",
                        f"expects {wanted} but node {value.node!r} output {value.output!r} is {out.socket}",
                        entry.type)
                    input_ok = False
                continue
            if spec.socket:
                add(node_id, name, "type_mismatch",
                    f"expects a link of type {spec.socket}, got the literal {_short(value)}", entry.type)
                input_ok = False
                continue
            if isinstance(value, bool) and spec.widget_type in ("INT", "FLOAT"):
                add(node_id, name, "invalid_value", f"expects a number, got the boolean {_short(value)}", entry.type)
                input_ok = False
                continue
            try:
                literals[name] = spec.adapter.validate_python(value)
            except ValidationError as exc:
                input_ok = False
                err = exc.errors()[0]
                kind = ("out_of_range" if err["type"] in _RANGE_ERRORS
                        else "not_in_choices" if err["type"] in _CHOICE_ERRORS else "invalid_value")
                add(node_id, name, kind, f"{_short(value)} is not accepted: {err['msg']}", entry.type)
        if input_ok and node_type.check is not None:
            try:
                for input_name, message in node_type.check(literals, resources) or ():
                    add(node_id, input_name, "invalid_value", message, entry.type)
            except Exception as exc:  # a check hook must never take validation down
                add(node_id, None, "check_failed", f"its check raised {type(exc).__name__}: {exc}", entry.type)

    dag = graph_dag(graph)
    for cycle in _cycles(dag):
        for node_id in cycle:
            add(node_id, None, "cycle", "is part of a cycle formed by nodes " + ", ".join(cycle))

    if outputs is not None:
        for node_id in outputs:
            if node_id not in graph.nodes:
                add(node_id, None, "missing_node", f"requested output node {node_id!r} is not in the graph")
    elif not output_nodes(graph):
        add(None, None, "no_outputs", "the graph has no output node (SaveImage, PreviewImage, ...) to run")
    return problems


def output_nodes(graph: Graph) -> list[str]:
    out = []
    for node_id, entry in graph.nodes.items():
        node_type = graph.registry.get(entry.type)
        if node_type is not None and node_type.output_node:
            out.append(node_id)
    return out


def graph_dag(graph: Graph) -> nx.DiGraph:
    """Edges run from producer to consumer; links to missing nodes are left out."""
    dag = nx.DiGraph()
    dag.add_nodes_from(graph.nodes)
    for node_id, entry in graph.nodes.items():
        for value in entry.inputs.values():
            if is_link(value) and value.node in graph.nodes:
                dag.add_edge(value.node, node_id)
    return dag


def _cycles(dag: nx.DiGraph) -> list[list[str]]:
    if nx.is_directed_acyclic_graph(dag):
        return []
    return [sorted(c) for c in nx.strongly_connected_components(dag)
            if len(c) > 1 or any(dag.has_edge(n, n) for n in c)]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

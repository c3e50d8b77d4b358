"""The graph document (``ipgraph/1``) and the Python builder.

A document maps node ids to ``{"type", "inputs"}``; an input is either a literal or a link
``{"node": id, "output": name}``. An optional ``ui`` block (editor layout) is kept verbatim.
Saving is canonical (sorted keys, two-space indent) so load → save is byte-stable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .node import REGISTRY, Registry

FORMAT = "ipgraph/1"


class GraphBuildError(ValueError):
    """A mistake made while building a graph in Python (unknown type, input or output)."""


class GraphFormatError(ValueError):
    """A document that is not an ipgraph graph at all (bad JSON, wrong shape)."""


@dataclass(frozen=True)
class Link:
    node: str
    output: str

    def to_json(self) -> dict:
        return {"node": self.node, "output": self.output}


def is_link(value: Any) -> bool:
    return isinstance(value, Link)


@dataclass
class NodeEntry:
    type: str
    inputs: dict[str, Any] = field(default_factory=dict)


class NodeRef:
    """What ``Graph.add`` returns: attribute access names an output (``ckpt.model``)."""

    def __init__(self, graph: Graph, node_id: str) -> None:
        self._graph = graph
        self.id = node_id

    def __getattr__(self, output: str) -> Link:
        if output.startswith("_"):
            raise AttributeError(output)
        return self.out(output)

    def out(self, output: str) -> Link:
        type_name = self._graph.nodes[self.id].type
        node_type = self._graph.registry.get(type_name)
        if node_type is not None:
            output = node_type.renamed_outputs.get(output, output)
        if node_type is not None and output not in node_type.outputs:
            raise GraphBuildError(
                f"node {self.id!r} ({type_name}) has no output {output!r}; "
                f"it has: {', '.join(node_type.outputs) or 'none'}"
            )
        return Link(self.id, output)

    def __repr__(self) -> str:
        return f"NodeRef({self.id!r})"


class Graph:
    """A graph document, also the builder: ``g.add("KSampler", model=ckpt.model, seed=1)``."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or REGISTRY
        self.nodes: dict[str, NodeEntry] = {}
        self.ui: dict | None = None

    # -- building -------------------------------------------------------------------------------
    def add(self, type_name: str, id: str | None = None, **inputs: Any) -> NodeRef:  # noqa: A002
        node_type = self.registry.get(type_name)
        if node_type is None:
            raise GraphBuildError(f"unknown node type {type_name!r}")
        if today := node_type.upgraded_type(inputs):
            type_name, node_type = today, self.registry[today]
        inputs = {node_type.renamed_inputs.get(k, k): v for k, v in inputs.items()}
        unknown = sorted(set(inputs) - set(node_type.inputs))
        if unknown:
            raise GraphBuildError(
                f"{type_name} has no input {unknown[0]!r}; its inputs are: {', '.join(node_type.inputs)}"
            )
        for name, value in inputs.items():
            if isinstance(value, NodeRef):
                raise GraphBuildError(f"input {name!r}: pass an output such as ref.{name}, not the node itself")
            if is_link(value) and value.node not in self.nodes:
                raise GraphBuildError(f"input {name!r} links to unknown node {value.node!r}")
        node_id = id or self._next_id(type_name)
        if node_id in self.nodes:
            raise GraphBuildError(f"node id {node_id!r} is already used")
        self.nodes[node_id] = NodeEntry(type_name, dict(inputs))
        return NodeRef(self, node_id)

    def set(self, node_id: str, input_name: str, value: Any) -> None:
        """Change one input (used by ``--set NODE.INPUT=VALUE``)."""
        if node_id not in self.nodes:
            raise GraphBuildError(f"no node {node_id!r} in this graph")
        self.nodes[node_id].inputs[input_name] = value

    def ref(self, node_id: str) -> NodeRef:
        if node_id not in self.nodes:
            raise GraphBuildError(f"no node {node_id!r} in this graph")
        return NodeRef(self, node_id)

    def _next_id(self, type_name: str) -> str:
        n = len(self.nodes) + 1
        while str(n) in self.nodes:
            n += 1
        return str(n)

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        nodes = {}
        for node_id, entry in self.nodes.items():
            inputs = {k: (v.to_json() if is_link(v) else v) for k, v in entry.inputs.items()}
            nodes[node_id] = {"type": entry.type, "inputs": inputs}
        doc: dict[str, Any] = {"format": FORMAT, "nodes": nodes}
        if self.ui is not None:
            doc["ui"] = self.ui
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def copy(self) -> Graph:
        return Graph.from_dict(self.to_dict(), self.registry)

    @classmethod
    def from_dict(cls, doc: Any, registry: Registry | None = None) -> Graph:
        """Read a document; unknown node types are kept so validation can report them all at once."""
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
            raise GraphFormatError('an ipgraph document is an object with a "nodes" object')
        if json_depth(doc) > MAX_JSON_DEPTH:
            raise GraphFormatError(f"the document is nested more than {MAX_JSON_DEPTH} levels deep")
        if doc.get("format", FORMAT) != FORMAT:
            raise GraphFormatError(f"unsupported format {doc.get('format')!r}; expected {FORMAT!r}")
        graph = cls(registry)
        for node_id, entry in doc["nodes"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                raise GraphFormatError(f'node {node_id!r} needs a "type" string')
            raw_inputs = entry.get("inputs", {})
            if not isinstance(raw_inputs, dict):
                raise GraphFormatError(f'node {node_id!r}: "inputs" must be an object')
            inputs = {k: _parse_value(v) for k, v in raw_inputs.items()}
            graph.nodes[str(node_id)] = NodeEntry(entry["type"], inputs)
        graph.ui = doc.get("ui")
        graph._apply_renames()
        return graph

    def _apply_renames(self) -> None:
        """Bring input and output names an older version of a node type used up to today's names."""
        for entry in self.nodes.values():
            node_type = self.registry.get(entry.type)
            today = node_type.upgraded_type(entry.inputs) if node_type is not None else None
            if today:
                entry.type = today
        for entry in self.nodes.values():
            node_type = self.registry.get(entry.type)
            if node_type is not None and node_type.renamed_inputs:
                entry.inputs = {node_type.renamed_inputs.get(k, k) if node_type.renamed_inputs.get(k, k)
                                not in entry.inputs else k: v for k, v in entry.inputs.items()}
            for name, value in entry.inputs.items():
                up = self.nodes.get(value.node) if is_link(value) else None
                up_type = self.registry.get(up.type) if up is not None else None
                if up_type is not None and value.output in up_type.renamed_outputs:
                    entry.inputs[name] = Link(value.node, up_type.renamed_outputs[value.output])

    @classmethod
    def from_json(cls, text: str, registry: Registry | None = None) -> Graph:
        return cls.from_dict(parse_json(text), registry)


MAX_JSON_DEPTH = 100  # graph documents nest a few levels; thousands of levels are an attack, not a graph


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` for documents from outside: bad JSON and absurd nesting become a GraphFormatError."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise GraphFormatError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphFormatError(f"not valid JSON: {exc}") from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise GraphFormatError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return doc


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative, so a hostile document cannot overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _parse_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"node", "output"}:
        return Link(str(value["node"]), str(value["output"]))
    return value

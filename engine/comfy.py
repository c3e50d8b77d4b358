"""Import of ComfyUI's API format (``{"3": {"class_type": ..., "inputs": {"model": ["4", 0]}}}``).

Class names resolve to ipgraph types directly or through a node's declared ``comfy_aliases`` (which may also
rename inputs, e.g. ``ckpt_name`` → ``name``); output slots become output names by position.
"""

from __future__ import annotations

from typing import Any

from .graph import Graph, GraphFormatError, Link, NodeEntry
from .node import Registry


def is_comfy_api(doc: Any) -> bool:
    return isinstance(doc, dict) and "nodes" not in doc and bool(doc) and all(
        isinstance(v, dict) and "class_type" in v for v in doc.values())


def from_comfy_api(prompt: dict, registry: Registry | None = None) -> Graph:
    graph = Graph(registry)
    registry = graph.registry
    resolved = {}
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            raise GraphFormatError(f"node {node_id!r} is missing its class_type")
        resolved[str(node_id)] = registry.comfy_class(entry["class_type"])
    for node_id, entry in prompt.items():
        node_id = str(node_id)
        found = resolved[node_id]
        type_name, renames = (found[0].type_name, found[1]) if found else (entry["class_type"], {})
        inputs = {}
        for name, value in (entry.get("inputs") or {}).items():
            name = renames.get(name, name)
            if _is_comfy_link(value):
                up_id, slot = str(value[0]), int(value[1])
                up = resolved.get(up_id)
                out_names = list(up[0].outputs) if up else []
                output = out_names[slot] if 0 <= slot < len(out_names) else f"#{slot}"
                inputs[name] = Link(up_id, output)
            else:
                inputs[name] = value
        if found is not None:  # ComfyUI sends extras (e.g. hidden "upload" widgets): keep only known inputs
            inputs = {k: v for k, v in inputs.items() if k in found[0].inputs}
        graph.nodes[node_id] = NodeEntry(type_name, inputs)
    return graph


def to_comfy_api(graph: Graph) -> dict:
    """The inverse: output names become slots (what ComfyUI clients expect to send back)."""
    out = {}
    for node_id, entry in graph.nodes.items():
        node_type = graph.registry.get(entry.type)
        inputs = {}
        for name, value in entry.inputs.items():
            if isinstance(value, Link):
                up = graph.registry.get(graph.nodes[value.node].type) if value.node in graph.nodes else None
                slot = list(up.outputs).index(value.output) if up and value.output in up.outputs else 0
                inputs[name] = [value.node, slot]
            else:
                inputs[name] = value
        out[node_id] = {"class_type": node_type.type_name if node_type else entry.type, "inputs": inputs}
    return out


def _is_comfy_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))

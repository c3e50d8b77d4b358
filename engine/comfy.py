"""Import of ComfyUI's API format (``{"3": {"class_type": ..., "inputs": {"model": ["4", 0]}}}``).

Class names resolve to ipgraph types directly or through a node's declared ``comfy_aliases`` (which may also
rename inputs, e.g. ``ckpt_name`` → ``name``); output slots become output names by position. An input the node
does not have is not silently dropped: it is left out of the graph and reported as a warning sentence
(``ipgraph validate --strict`` turns those into errors). UI-format workflows go through :mod:`.comfy_ui` first.
"""

from __future__ import annotations

from typing import Any

from .graph import Graph, GraphFormatError, Link, NodeEntry
from .node import Registry


def is_comfy_api(doc: Any) -> bool:
    return isinstance(doc, dict) and "nodes" not in doc and bool(doc) and all(
        isinstance(v, dict) and "class_type" in v for v in doc.values())


# Values the editor adds that are never inputs of the node (upload buttons, seed control combos).
EDITOR_ONLY_INPUTS = ("upload", "choose file to upload", "control_after_generate")


def from_comfy_api(prompt: dict, registry: Registry | None = None, warnings: list[str] | None = None) -> Graph:
    """The graph of an API-format prompt; sentences about inputs left out are appended to ``warnings``."""
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
        raw_inputs = entry.get("inputs") or {}
        if not isinstance(raw_inputs, dict):
            raise GraphFormatError(f"node {node_id!r} ({entry['class_type']}): \"inputs\" must be an object")
        for name, value in raw_inputs.items():
            name = renames.get(name, name)
            if found is not None:
                name = found[0].renamed_inputs.get(name, name)
            if _is_comfy_link(value):
                up_id, slot = str(value[0]), int(value[1])
                up = resolved.get(up_id)
                out_names = list(up[0].outputs) if up else []
                output = out_names[slot] if 0 <= slot < len(out_names) else f"#{slot}"
                inputs[name] = Link(up_id, output)
            else:
                inputs[name] = value
        if found is not None:
            known = found[0].inputs
            back = {v: k for k, v in renames.items()}
            for k in [k for k in inputs if k not in known]:
                del inputs[k]
                if warnings is not None and back.get(k, k) not in EDITOR_ONLY_INPUTS:
                    theirs = [back.get(n, n) for n in known]
                    warnings.append(f"node {node_id} ({entry['class_type']}): {back.get(k, k)!r} is not an input "
                                    f"of {entry['class_type']}; it was ignored (its inputs are: "
                                    f"{', '.join(theirs) or 'none'})")
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


def graph_from_document(doc: Any, registry: Registry | None = None, object_info: Any = None,
                        warnings: list[str] | None = None) -> Graph:
    """Any document a user may bring: ipgraph/1, ComfyUI API format, or a UI-format workflow.

    ``object_info`` (ComfyUI's ``/object_info`` shape, or a callable returning it) is needed only for UI
    workflows: it gives each node's widget order.
    """
    from .comfy_ui import is_ui_workflow, ui_to_api

    if is_ui_workflow(doc):
        info = object_info() if callable(object_info) else object_info
        if info is None:
            raise GraphFormatError("a UI-format workflow needs the node descriptions (/object_info) to be read")
        prompt, found = ui_to_api(doc, info)
        if warnings is not None:
            warnings.extend(found)
        if not prompt:
            raise GraphFormatError("the workflow has no node that runs (all are muted, bypassed or notes)")
        return from_comfy_api(prompt, registry, warnings)
    if is_comfy_api(doc):
        return from_comfy_api(doc, registry, warnings)
    return Graph.from_dict(doc, registry)

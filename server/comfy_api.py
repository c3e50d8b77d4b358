"""ComfyUI shapes generated from the ipgraph registry: ``/object_info`` and ``node_errors``.

Widget order matters to the web editor (``widgets_values`` in saved workflows are positional): it follows
``input_order`` here, required inputs first, then optional ones, each in declaration order. Two widget kinds add
an extra positional value in the editor: an INT named ``seed``/``noise_seed`` gets a "control after generate"
combo, and an ``image_upload`` combo gets an upload button. :func:`widget_slots` lists all of them so the
workflow converter writes values in exactly the order the editor reads them.
"""

from __future__ import annotations

from typing import Any

from ipgraph.engine import GraphProblem, NodeType, Registry
from ipgraph.engine.graph import Graph, is_link
from ipgraph.engine.validate import graph_dag, output_nodes

from .files import list_input_images

SEED_NAMES = ("seed", "noise_seed")
_PASS_OPTIONS = ("multiline", "tooltip", "dynamicPrompts", "image_upload", "forceInput", "defaultInput",
                 "placeholder", "round", "display", "label_on", "label_off", "control_after_generate")
_WIDGET_DEFAULTS = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}


def _extra(spec) -> dict:
    extra = spec.info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def _bounds(spec) -> dict:
    out = {}
    for meta in spec.info.metadata:
        for attr in ("ge", "gt", "le", "lt", "multiple_of"):
            value = getattr(meta, attr, None)
            if value is not None:
                out[attr] = value
    return out


def is_widget_required(spec) -> bool:
    return spec.socket is None and (spec.required or spec.default is not None)


def input_sections(nt: NodeType) -> tuple[list[str], list[str]]:
    """(required names, optional names) in declaration order, as /object_info reports them."""
    required, optional = [], []
    for name, spec in nt.inputs.items():
        if spec.socket is not None:
            (required if spec.required else optional).append(name)
        else:
            (required if is_widget_required(spec) else optional).append(name)
    return required, optional


def widget_default(spec, runtime: Any = None) -> Any:
    if spec.default is not None:
        return spec.default
    if spec.choices:
        return spec.choices[0]
    kind = _extra(spec).get("model_kind")
    if kind and runtime is not None:
        names = _list_models(runtime, kind)
        if names:
            return names[0]
    bounds = _bounds(spec)
    if spec.widget_type in ("INT", "FLOAT") and ("ge" in bounds or "gt" in bounds):
        return bounds.get("ge", bounds.get("gt"))
    return _WIDGET_DEFAULTS.get(spec.widget_type, "")


def widget_slots(nt: NodeType) -> list[tuple[str, str]]:
    """Every editor widget of a node in order: (input name, "value" | "control" | "upload")."""
    required, optional = input_sections(nt)
    slots = []
    for name in required + optional:
        spec = nt.inputs[name]
        if spec.socket is not None or spec.widget_type == "JSON":
            continue
        slots.append((name, "value"))
        opts = _extra(spec)
        if spec.widget_type == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
            slots.append((name, "control"))
        if opts.get("image_upload"):
            slots.append((name, "upload"))
    return slots


def _list_models(runtime: Any, kind: str) -> list[str]:
    try:
        return list(runtime.list_models(kind))
    except Exception:
        return []


def input_spec(spec, runtime: Any = None) -> list:
    """One input as ComfyUI's ``[TYPE, {options}]``."""
    if spec.socket is not None:
        opts = {"tooltip": spec.info.description} if spec.info.description else {}
        return [spec.socket, opts]
    extra = _extra(spec)
    opts: dict[str, Any] = {k: extra[k] for k in _PASS_OPTIONS if k in extra}
    if spec.info.description and "tooltip" not in opts:
        opts["tooltip"] = spec.info.description
    if spec.widget_type == "JSON":
        return ["JSON", opts]
    kind = extra.get("model_kind")
    if kind or extra.get("image_upload") or spec.widget_type == "COMBO":
        if kind:
            choices = _list_models(runtime, kind) if runtime is not None else []
        elif extra.get("image_upload"):
            choices = list_input_images(runtime.input_dir) if runtime is not None and hasattr(runtime, "input_dir") else []
            opts["image_upload"] = True
        else:
            choices = list(spec.choices or ())
        default = spec.default if spec.default is not None else (choices[0] if choices else None)
        if default is not None:
            opts["default"] = default
        return [choices, opts]
    wtype = spec.widget_type
    opts["default"] = widget_default(spec, runtime)
    bounds = _bounds(spec)
    if wtype in ("INT", "FLOAT"):
        lo = bounds.get("ge", bounds.get("gt"))
        hi = bounds.get("le", bounds.get("lt"))
        if lo is not None:
            opts["min"] = lo
        if hi is not None:
            opts["max"] = hi
        if wtype == "INT":
            opts.setdefault("min", -(2**53) + 1)
            opts.setdefault("max", 2**53 - 1)
            opts["step"] = int(bounds.get("multiple_of", 1))
            if spec.name in SEED_NAMES:
                opts["control_after_generate"] = True
        else:
            opts.setdefault("min", -1e9)
            opts.setdefault("max", 1e9)
            opts["step"] = float(bounds.get("multiple_of", 0.01))
            opts.setdefault("round", False)
    return [wtype, opts]


def object_info(registry: Registry, runtime: Any = None, only: str | None = None) -> dict:
    names = [only] if only is not None else registry.types()
    out = {}
    for name in names:
        nt = registry.get(name)
        if nt is None:
            continue
        required, optional = input_sections(nt)
        spec_of = {n: input_spec(nt.inputs[n], runtime) for n in required + optional}
        out[name] = {
            "input": {"required": {n: spec_of[n] for n in required},
                      "optional": {n: spec_of[n] for n in optional}},
            "input_order": {"required": required, "optional": optional},
            "output": [o.socket for o in nt.outputs.values()],
            "output_is_list": [False for _ in nt.outputs],
            "output_name": list(nt.outputs),
            "output_tooltips": [o.description for o in nt.outputs.values()],
            "name": name,
            "display_name": nt.display_name or name,
            "description": nt.description,
            "python_module": "ipgraph",
            "category": nt.category,
            "output_node": bool(nt.output_node),
            "deprecated": False,
            "experimental": False,
        }
    return out


# -- validation problems → ComfyUI node_errors ---------------------------------------------------

_MESSAGES = {
    "required_input_missing": "Required input is missing",
    "value_bigger_than_max": "Value bigger than max",
    "value_smaller_than_min": "Value smaller than min",
    "value_not_in_list": "Value not in list",
    "return_type_mismatch": "Return type mismatch between linked nodes",
    "bad_linked_input": "Bad linked input",
    "invalid_input_type": "Failed to convert an input value",
    "custom_validation_failed": "Custom validation failed for node",
    "invalid_prompt": "Invalid prompt",
    "prompt_no_outputs": "Prompt has no outputs",
}


def comfy_error_type(problem: GraphProblem, graph: Graph) -> str:
    registry = graph.registry
    entry = graph.nodes.get(problem.node_id) if problem.node_id is not None else None
    nt = registry.get(entry.type) if entry is not None else None
    spec = nt.inputs.get(problem.input) if (nt is not None and problem.input) else None
    kind = problem.type
    if kind == "missing_input":
        return "required_input_missing"
    if kind == "type_mismatch":
        return "return_type_mismatch"
    if kind in ("unknown_output", "missing_node") and problem.input:
        return "bad_linked_input"
    if kind == "not_in_choices":
        return "value_not_in_list"
    if kind == "out_of_range":
        value = entry.inputs.get(problem.input) if entry is not None else None
        bounds = _bounds(spec) if spec is not None else {}
        lo = bounds.get("ge", bounds.get("gt"))
        try:
            if lo is not None and float(value) <= float(lo):
                return "value_smaller_than_min"
        except (TypeError, ValueError):
            pass
        return "value_bigger_than_max"
    if kind == "invalid_value" and spec is not None and spec.socket is None:
        if _extra(spec).get("model_kind") or spec.widget_type == "COMBO":
            return "value_not_in_list"
        value = entry.inputs.get(problem.input)
        if spec.adapter is not None and not is_link(value):
            try:
                spec.adapter.validate_python(value)
            except Exception:
                return "invalid_input_type"
        return "custom_validation_failed"
    if kind == "no_outputs":
        return "prompt_no_outputs"
    if problem.node_id is None or kind in ("unknown_node_type",):
        return "invalid_prompt"
    return "custom_validation_failed"


def node_errors(problems: list[GraphProblem], graph: Graph) -> tuple[dict, dict]:
    """(top-level error, node_errors) in ComfyUI's shape for HTTP 400 from ``/prompt``."""
    try:
        dag = graph_dag(graph)
        outs = set(output_nodes(graph))
    except Exception:
        dag, outs = None, set()
    errors: dict[str, dict] = {}
    graph_level = []
    for p in problems:
        ctype = comfy_error_type(p, graph)
        item = {"type": ctype, "message": _MESSAGES.get(ctype, ctype), "details": p.message,
                "extra_info": {}}
        if p.input:
            item["details"] = f"{p.input}: {p.message}"
            item["extra_info"]["input_name"] = p.input
            entry = graph.nodes.get(p.node_id) if p.node_id is not None else None
            if entry is not None and p.input in entry.inputs and not is_link(entry.inputs[p.input]):
                item["extra_info"]["received_value"] = entry.inputs[p.input]
        if p.node_id is None or p.node_id not in graph.nodes:
            graph_level.append(item)
            continue
        slot = errors.setdefault(p.node_id, {"errors": [], "dependent_outputs": [],
                                             "class_type": graph.nodes[p.node_id].type})
        slot["errors"].append(item)
    if dag is not None:
        import networkx as nx

        for node_id, slot in errors.items():
            dependents = ({node_id} | nx.descendants(dag, node_id)) if node_id in dag else {node_id}
            slot["dependent_outputs"] = sorted(dependents & outs)
    if graph_level and not errors:
        first = graph_level[0]
        top = {"type": first["type"], "message": first["message"], "details": first["details"], "extra_info": {}}
    else:
        details = "; ".join(f"{e['details']}" for slot in errors.values() for e in slot["errors"])
        top = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
               "details": details, "extra_info": {}}
    unknown = [p for p in problems if p.type == "unknown_node_type"]
    if unknown:
        top = {"type": "invalid_prompt",
               "message": f"Cannot execute because node {unknown[0].node_type} does not exist.",
               "details": f"Node ID '#{unknown[0].node_id}'", "extra_info": {}}
    return top, errors

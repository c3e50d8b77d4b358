"""ComfyUI's UI-format workflows (what the editor saves, and what ComfyUI embeds in PNGs as ``workflow``)
converted to its API format (``{"3": {"class_type": ..., "inputs": {...}}}``), as the editor's own
``graphToPrompt`` does before it queues a run. Generic: it knows nothing of diffusion; the widget order comes
from node descriptions in ComfyUI's ``/object_info`` shape (``input``, ``input_order``).

What the frontend does and this converter repeats:

- ``widgets_values`` are positional over the node's widgets in ``input_order`` (required, then optional); an
  input with ``control_after_generate`` (seeds) is followed by one extra value (``fixed``, ``randomize`` ...),
  an ``image_upload`` combo by the upload button's value. Values may also be a dict keyed by widget name.
- An input slot with ``widget: {"name": ...}`` is a widget converted to an input: a link into it wins over
  the widget's value.
- ``Reroute`` passes its input through; ``PrimitiveNode`` is not sent: the widgets it drives keep the value
  the editor copied into them (its own value is the fallback). ``Note``/``MarkdownNote`` are dropped.
- mode 2 (muted) nodes are not sent and links from them are removed; mode 4 (bypassed) nodes are not sent
  and a link from one is rerouted to the bypassed node's input of the same type as the consuming input
  (the input at the same index first, then in order), as ComfyUI does.
- Subgraphs (``definitions.subgraphs``, written by the 1.2x+ frontends): an instance node's type is the
  subgraph's id; its inner nodes are sent with ids ``"<instance id>:<inner id>"`` (nested: joined again);
  links from the subgraph's input node (-10) resolve to the instance's inputs, links into its output node (-20)
  are what the instance's outputs stand for.
- Links may be arrays ``[id, from, from_slot, to, to_slot, type]`` (0.4) or objects (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .graph import GraphFormatError

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_TYPES = ("Reroute", "PrimitiveNode", "Note", "MarkdownNote")
SUBGRAPH_INPUT_ID = -10
SUBGRAPH_OUTPUT_ID = -20
MUTED, BYPASSED = 2, 4


def is_ui_workflow(doc: Any) -> bool:
    """A UI-format workflow: a ``nodes`` list (ipgraph documents hold an object) with links or a version."""
    return isinstance(doc, dict) and isinstance(doc.get("nodes"), list) and (
        "links" in doc or "version" in doc or "last_node_id" in doc)


def widget_slots(info: dict) -> list[tuple[str, str]]:
    """The editor's widgets of one node description, in order: (input name, "value" | "control" | "upload")."""
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    slots: list[tuple[str, str]] = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        names = order.get(section) or list(specs)
        for name in names:
            spec = specs.get(name)
            if not isinstance(spec, (list, tuple)) or not spec:
                continue
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
            if not (is_combo or kind in WIDGET_TYPES) or opts.get("forceInput"):
                continue
            slots.append((name, "value"))
            if opts.get("control_after_generate"):
                slots.append((name, "control"))
            if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
                slots.append((name, "upload"))
    return slots


def map_widget_values(info: dict, values: Any, where: str, warnings: list[str]) -> dict[str, Any]:
    """``widgets_values`` (a list or a dict) → {input name: value} for one node."""
    slots = widget_slots(info)
    names = [n for n, kind in slots if kind == "value"]
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k in names}
    if not isinstance(values, list):
        return {}
    # Older editors wrote no control or upload value; pick the layout whose length matches.
    layouts = [slots, [s for s in slots if s[1] != "upload"], [s for s in slots if s[1] != "control"],
               [s for s in slots if s[1] == "value"]]
    layout = next((lay for lay in layouts if len(lay) == len(values)), slots)
    if len(values) != len(layout):
        warnings.append(f"{where}: {len(values)} widget value(s) for {len(layout)} widget(s); "
                        f"read in order: {', '.join(names) or 'none'}")
    return {name: value for (name, kind), value in zip(layout, values, strict=False) if kind == "value"}


@dataclass
class _Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any = None


def _links(raw: Any) -> dict[Any, _Link]:
    out: dict[Any, _Link] = {}
    for item in raw or []:
        if isinstance(item, list) and len(item) >= 5:
            out[item[0]] = _Link(item[1], int(item[2]), item[3], int(item[4]), item[5] if len(item) > 5 else None)
        elif isinstance(item, dict) and "id" in item:
            out[item["id"]] = _Link(item.get("origin_id"), int(item.get("origin_slot", 0)), item.get("target_id"),
                                    int(item.get("target_slot", 0)), item.get("type"))
    return out


@dataclass
class _Scope:
    """One graph level: the root workflow or one subgraph instance's interior."""

    nodes: dict[Any, dict]
    links: dict[Any, _Link]
    prefix: str = ""
    parent: _Scope | None = None
    instance: dict | None = None  # the subgraph node in ``parent`` this scope is the interior of
    definition: dict | None = None
    children: dict[Any, _Scope] = field(default_factory=dict)


_PRIMITIVE = "primitive"


class _Converter:
    def __init__(self, workflow: dict, object_info: dict) -> None:
        self.info = object_info
        self.warnings: list[str] = []
        defs = ((workflow.get("definitions") or {}).get("subgraphs") or [])
        self.subgraphs: dict[str, dict] = {}
        self._collect_definitions(defs)
        self.root = _Scope(self._node_map(workflow.get("nodes"), "the workflow"), _links(workflow.get("links")))

    def _collect_definitions(self, defs: list) -> None:
        for d in defs:
            if isinstance(d, dict) and isinstance(d.get("id"), str):
                self.subgraphs[d["id"]] = d
                self._collect_definitions((d.get("definitions") or {}).get("subgraphs") or [])

    @staticmethod
    def _node_map(raw: Any, where: str) -> dict[Any, dict]:
        if not isinstance(raw, list):
            raise GraphFormatError(f'{where}: "nodes" must be a list of nodes')
        out = {}
        for n in raw:
            if not isinstance(n, dict) or "id" not in n or not isinstance(n.get("type"), str):
                raise GraphFormatError(f'{where}: every node needs an "id" and a "type" string')
            out[n["id"]] = n
        return out

    # -- scopes -------------------------------------------------------------------------------------
    def _child(self, scope: _Scope, node: dict) -> _Scope:
        key = node["id"]
        if key not in scope.children:
            d = self.subgraphs[node["type"]]
            where = f"subgraph {d.get('name') or d['id']!r} (node {scope.prefix}{key})"
            scope.children[key] = _Scope(self._node_map(d.get("nodes") or [], where), _links(d.get("links")),
                                         prefix=f"{scope.prefix}{key}:", parent=scope, instance=node, definition=d)
        return scope.children[key]

    # -- resolving where a value comes from ---------------------------------------------------------
    def resolve_link(self, scope: _Scope, link_id: Any, want: Any, depth: int = 0):
        """The (exec id, slot) a link carries after reroutes, bypasses and subgraph borders; a
        ``(_PRIMITIVE, value)`` pair for a PrimitiveNode; None when nothing is connected."""
        if depth > 256:
            raise GraphFormatError("the workflow's links form a loop through reroute/bypassed nodes")
        link = scope.links.get(link_id)
        if link is None:
            return None
        if link.origin_id == SUBGRAPH_INPUT_ID:
            if scope.parent is None or scope.instance is None:
                return None
            slot = self._instance_input(scope, link.origin_slot)
            if slot is None or slot.get("link") is None:
                return None
            return self.resolve_link(scope.parent, slot["link"], want, depth + 1)
        return self.resolve_output(scope, link.origin_id, link.origin_slot, want, depth + 1)

    def _instance_input(self, scope: _Scope, index: int) -> dict | None:
        sg_inputs = (scope.definition or {}).get("inputs") or []
        inst_inputs = (scope.instance or {}).get("inputs") or []
        name = sg_inputs[index].get("name") if 0 <= index < len(sg_inputs) else None
        by_name = next((i for i in inst_inputs if name is not None and i.get("name") == name), None)
        if by_name is not None:
            return by_name
        return inst_inputs[index] if 0 <= index < len(inst_inputs) else None

    def resolve_output(self, scope: _Scope, node_id: Any, slot: int, want: Any, depth: int = 0):
        node = scope.nodes.get(node_id)
        if node is None:
            return None
        mode, ntype = node.get("mode", 0), node["type"]
        inputs = node.get("inputs") or []
        if mode == MUTED:
            return None
        if ntype == "PrimitiveNode":
            values = node.get("widgets_values")
            return (_PRIMITIVE, values[0]) if isinstance(values, list) and values else None
        if ntype == "Reroute":
            first = inputs[0] if inputs else None
            return self.resolve_link(scope, first.get("link"), want, depth + 1) if first else None
        if mode == BYPASSED:
            for index in [slot, *range(len(inputs))]:
                if 0 <= index < len(inputs) and inputs[index].get("type") == want:
                    link = inputs[index].get("link")
                    return self.resolve_link(scope, link, want, depth + 1) if link is not None else None
            return None
        if ntype in self.subgraphs:
            inner = self._child(scope, node)
            feed = next((lk for lk in inner.links.values()
                         if lk.target_id == SUBGRAPH_OUTPUT_ID and lk.target_slot == slot), None)
            if feed is None:
                return None
            feed_id = next(k for k, v in inner.links.items() if v is feed)
            return self.resolve_link(inner, feed_id, want, depth + 1)
        return (f"{scope.prefix}{node_id}", int(slot))

    # -- emitting -----------------------------------------------------------------------------------
    def convert(self) -> dict:
        prompt: dict[str, dict] = {}
        self._emit(self.root, prompt)
        for entry in prompt.values():  # links to nodes that are not sent are removed, as the editor does
            for name, value in list(entry["inputs"].items()):
                if _is_link(value) and value[0] not in prompt:
                    del entry["inputs"][name]
        return prompt

    def _emit(self, scope: _Scope, prompt: dict) -> None:
        for node_id, node in scope.nodes.items():
            ntype, mode = node["type"], node.get("mode", 0)
            if mode in (MUTED, BYPASSED) or ntype in VIRTUAL_TYPES:
                continue
            if ntype in self.subgraphs:
                self._emit(self._child(scope, node), prompt)
                continue
            exec_id = f"{scope.prefix}{node_id}"
            where = f"node {exec_id} ({ntype})"
            info = self.info.get(ntype)
            inputs: dict[str, Any] = {}
            if info is not None:
                inputs.update(map_widget_values(info, node.get("widgets_values"), where, self.warnings))
            elif node.get("widgets_values"):
                self.warnings.append(f"{where}: unknown node type; its widget values cannot be read")
            for slot in node.get("inputs") or []:
                if not isinstance(slot, dict):
                    continue
                widget = slot.get("widget") if isinstance(slot.get("widget"), dict) else None
                name = (widget or {}).get("name") or slot.get("name")
                if not name or slot.get("link") is None:
                    continue
                source = self.resolve_link(scope, slot["link"], slot.get("type"))
                if source is None:
                    if widget is None:
                        inputs.pop(name, None)
                elif source[0] == _PRIMITIVE:
                    inputs.setdefault(name, source[1])
                else:
                    inputs[name] = [source[0], source[1]]
            entry: dict[str, Any] = {"class_type": ntype, "inputs": inputs}
            title = node.get("title")
            if isinstance(title, str) and title:
                entry["_meta"] = {"title": title}
            prompt[exec_id] = entry


def ui_to_api(workflow: dict, object_info: dict) -> tuple[dict, list[str]]:
    """(API-format prompt, warnings) for a UI-format workflow, widget order taken from ``object_info``."""
    if not is_ui_workflow(workflow):
        raise GraphFormatError('a UI-format workflow is an object with a "nodes" list and a "links" list')
    converter = _Converter(workflow, object_info)
    legacy = [n for n in converter.root.nodes.values() if n["type"].startswith(("workflow>", "workflow/"))]
    if legacy:
        n = legacy[0]
        raise GraphFormatError(f"node {n['id']} ({n['type']}) is a legacy group node; open the workflow in the "
                               "editor and convert it to a subgraph, then save it again")
    return converter.convert(), converter.warnings


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))

"""Bundled ``graphs/*.json`` (ipgraph/1) shown as editor workflows (LiteGraph UI JSON), converted on the fly.

LiteGraph needs integer node ids, so nodes are numbered 1..N in document order; the ipgraph id becomes the node
title's suffix and ``properties.ipgraph_id``. Socket inputs become ``inputs`` entries; a widget input fed by a
link becomes an input with ``widget: {name}``. ``widgets_values`` follow :func:`server.comfy_api.widget_slots`
(the order the editor reads them). Positions come from ``ui.positions`` when present, otherwise nodes are laid
out in columns by topological depth.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import networkx as nx

from ipgraph.engine import Graph, Registry
from ipgraph.engine.graph import is_link
from ipgraph.engine.validate import graph_dag

from .comfy_api import widget_default, widget_slots

NODE_WIDTH = 320
COLUMN_GAP = 80
ROW_GAP = 40
SLOT_HEIGHT = 24


IMAGE_PREVIEW_HEIGHT = 180  # the editor shows the chosen image under an upload widget
# an output node that takes IMAGE shows its result under its widgets: still images are drawn on the canvas (the
# editor grows the node), but animated ones (SaveAnimatedWEBP/PNG: an <img> DOM widget) fill only the room the
# node already has, so that room is laid out here
OUTPUT_PREVIEW_HEIGHT = 260


def _node_size(nt, n_in: int, n_out: int, n_widgets: int, multiline: int, uploads: int = 0) -> list[int]:
    rows = max(n_in, n_out) + n_widgets
    return [NODE_WIDTH, 40 + SLOT_HEIGHT * rows + 90 * multiline + IMAGE_PREVIEW_HEIGHT * min(uploads, 1)]


def to_ui_workflow(graph: Graph, runtime: Any = None, name: str = "") -> dict:
    registry: Registry = graph.registry
    ids = {node_id: i + 1 for i, node_id in enumerate(graph.nodes)}
    positions = ((graph.ui or {}).get("positions") or {}) if isinstance(graph.ui, dict) else {}
    dag = graph_dag(graph)
    order = list(nx.topological_sort(dag)) if nx.is_directed_acyclic_graph(dag) else list(graph.nodes)

    nodes_out: dict[str, dict] = {}
    links: list[list] = []
    link_id = 0
    out_links: dict[tuple[str, str], list[int]] = {}

    for node_id in graph.nodes:
        entry = graph.nodes[node_id]
        nt = registry.get(entry.type)
        inputs_ui, widgets_values = [], []
        multiline = 0
        outputs_ui = []
        if nt is not None:
            for name_, spec in nt.inputs.items():
                value = entry.inputs.get(name_)
                if spec.socket is not None:
                    inputs_ui.append({"name": name_, "type": spec.socket, "link": None,
                                      **({} if spec.required else {"shape": 7})})
                elif is_link(value):
                    inputs_ui.append({"name": name_, "type": spec.widget_type, "link": None,
                                      "widget": {"name": name_}})
            for name_, kind in widget_slots(nt):
                spec = nt.inputs[name_]
                value = entry.inputs.get(name_)
                if kind == "value":
                    if value is None or is_link(value):
                        value = widget_default(spec, runtime)
                    widgets_values.append(value)
                    extra = spec.info.json_schema_extra if isinstance(spec.info.json_schema_extra, dict) else {}
                    multiline += 1 if extra.get("multiline") else 0
                elif kind == "control":
                    widgets_values.append("fixed")  # bundled graphs are reproducible: keep their seed
                elif kind == "upload":
                    widgets_values.append("image")
            outputs_ui = [{"name": o.name, "type": o.socket, "links": [], "slot_index": i}
                          for i, o in enumerate(nt.outputs.values())]
        n_widgets = len([1 for _ in widgets_values])
        uploads = sum(1 for _, kind in widget_slots(nt) if kind == "upload") if nt is not None else 0
        size = _node_size(nt, len(inputs_ui), len(outputs_ui), n_widgets, multiline, uploads)
        if nt is not None and nt.output_node and any(s.socket == "IMAGE" for s in nt.inputs.values()):
            size[1] += OUTPUT_PREVIEW_HEIGHT
        title = (nt.display_name if nt is not None and nt.display_name else entry.type)
        nodes_out[node_id] = {
            "id": ids[node_id], "type": entry.type, "pos": [0, 0], "size": size, "flags": {},
            "order": order.index(node_id) if node_id in order else 0, "mode": 0,
            "inputs": inputs_ui, "outputs": outputs_ui,
            "title": f"{title} ({node_id})" if not node_id.isdigit() else title,
            "properties": {"Node name for S&R": entry.type, "ipgraph_id": node_id},
            "widgets_values": widgets_values,
        }

    # links, now that every node's slots are known
    for node_id, entry in graph.nodes.items():
        target = nodes_out[node_id]
        for name_, value in entry.inputs.items():
            if not is_link(value) or value.node not in nodes_out:
                continue
            source = nodes_out[value.node]
            out_slot = next((i for i, o in enumerate(source["outputs"]) if o["name"] == value.output), None)
            in_slot = next((i for i, s in enumerate(target["inputs"]) if s["name"] == name_), None)
            if out_slot is None or in_slot is None:
                continue
            link_id += 1
            ltype = source["outputs"][out_slot]["type"]
            links.append([link_id, source["id"], out_slot, target["id"], in_slot, ltype])
            target["inputs"][in_slot]["link"] = link_id
            source["outputs"][out_slot]["links"].append(link_id)
            out_links.setdefault((value.node, value.output), []).append(link_id)

    # layout
    depth: dict[str, int] = {}
    for node_id in order:
        preds = list(dag.predecessors(node_id)) if node_id in dag else []
        depth[node_id] = 1 + max((depth.get(p, 0) for p in preds), default=-1)
    column_y: dict[int, float] = {}
    for node_id in order:
        node = nodes_out[node_id]
        pos = positions.get(node_id)
        if isinstance(pos, (list, tuple)) and len(pos) >= 2:
            node["pos"] = [float(pos[0]), float(pos[1])]
            continue
        col = depth.get(node_id, 0)
        y = column_y.get(col, 0.0)
        node["pos"] = [col * (NODE_WIDTH + COLUMN_GAP), y]
        column_y[col] = y + node["size"][1] + ROW_GAP

    saved = [n for n in order if isinstance(positions.get(n), (list, tuple)) and len(positions[n]) >= 2]
    _separate([nodes_out[n] for n in saved], [nodes_out[n] for n in order if n not in saved])
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "ipgraph:" + (name or json.dumps(graph.to_dict(), sort_keys=True)))),
        "revision": 0,
        "last_node_id": len(nodes_out),
        "last_link_id": link_id,
        "nodes": [nodes_out[n] for n in graph.nodes],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [40, 40]}, "ipgraph": {"source": name}},
        "version": 0.4,
    }


TITLE_HEIGHT = 30  # LiteGraph draws the title above ``pos``
GAP = 30


def _rect(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _overlap(a: dict, b: dict) -> bool:
    ax0, ay0, ax1, ay1 = _rect(a)
    bx0, by0, bx1, by1 = _rect(b)
    return ax0 < bx1 + GAP / 2 and bx0 < ax1 + GAP / 2 and ay0 < by1 + GAP / 2 and by0 < ay1 + GAP / 2


def overlapping(nodes: list[dict]) -> list[tuple[int, int]]:
    """Pairs of node ids whose boxes (title included, half a gap around each) intersect."""
    return [(a["id"], b["id"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlap(a, b)]


def _separate(saved: list[dict], laid_out: list[dict]) -> None:
    """Move nodes right or down, whichever is the shorter move, until no two overlap: saved positions were
    made for other node sizes, and the editor draws nodes exactly at their ``pos``. Nodes with a saved
    position are placed first (left to right), the ones laid out here move around them."""
    placed: list[dict] = []
    nodes = sorted(saved, key=lambda n: (n["pos"][0], n["pos"][1])) + laid_out
    for node in nodes:
        for _ in range(4 * len(nodes) + 4):
            hit = next((p for p in placed if _overlap(node, p)), None)
            if hit is None:
                break
            hx0, hy0, hx1, hy1 = _rect(hit)
            dx = hx1 + GAP - node["pos"][0]
            dy = hy1 + GAP + TITLE_HEIGHT - node["pos"][1]
            if dx <= dy:
                node["pos"] = [node["pos"][0] + dx, node["pos"][1]]
            else:
                node["pos"] = [node["pos"][0], node["pos"][1] + dy]
        placed.append(node)


def bundled_graphs(graphs_dir: Path) -> dict[str, Path]:
    """``name.json`` → path for every readable ipgraph/1 document in the graphs folder (top level only)."""
    out = {}
    if not graphs_dir.is_dir():
        return out
    for path in sorted(graphs_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except Exception:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("nodes"), dict):
            out[path.name] = path
    return out

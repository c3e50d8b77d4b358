"""The pack's example workflows, bundled as graphs/ipadapter_plus_*.json (API format, the pack's names, tiny
models), each run here; and their original UI-format files (tests/corpus/ipadapter_plus/) name no node type
ipgraph lacks. A graph that needs a ComfyUI core node (or input) another part of ipgraph has not registered yet
is skipped with "needs node X", so it runs as soon as that node exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipgraph.engine import REGISTRY
from ipgraph.engine.comfy import from_comfy_api

from ._api import missing_nodes
from .make_pack_graphs import CORPUS, EXAMPLES, GRAPHS, UI_ONLY, to_api

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", EXAMPLES)
def test_bundled_pack_graph_runs(engine, runtime, name):
    doc = json.loads((GRAPHS / f"ipadapter_plus_{name}.json").read_text())
    missing = missing_nodes(doc)
    if missing:
        pytest.skip(f"needs node {', '.join(missing)}")
    graph = from_comfy_api(doc)
    assert engine.validate(graph) == []
    result = engine.run(graph)
    images = [i for ui in result.ui.values() for i in ui.get("images", [])]
    assert images  # every example ends in SaveImage / PreviewImage


@pytest.mark.parametrize("name", EXAMPLES)
def test_corpus_ui_file_needs_no_missing_node_and_converts_to_the_bundled_graph(name):
    doc = json.loads((CORPUS / f"ipadapter_{name}.json").read_text())
    types = {n["type"] for n in doc["nodes"]} - UI_ONLY
    assert [t for t in sorted(types) if REGISTRY.comfy_class(t) is None] == []
    assert to_api(doc) == json.loads((GRAPHS / f"ipadapter_plus_{name}.json").read_text())
    assert Path(CORPUS).is_dir()

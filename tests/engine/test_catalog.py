"""The node catalogue (ipgraph/data/node_catalog.json) and the CLI's torch-free path built on it.

The catalogue must be in step with the registry; the node types rebuilt from it must describe, import and
validate documents exactly like the live ones (same graph, same warnings, same problems, same sentences), and
a full validation may only add what node types' own check hooks find; ``ipgraph validate`` on a broken graph and
``ipgraph nodes`` never import torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ipgraph.nodes  # noqa: F401  (the live registry)
from ipgraph.catalog import CATALOG_PATH, WRITE_COMMAND, catalog_registry, live_catalog, load_catalog, render
from ipgraph.engine import REGISTRY, Graph, GraphFormatError, Registry, validate
from ipgraph.engine.catalog import catalog_of, described_nodes, registry_from_catalog
from ipgraph.engine.comfy import graph_from_document, to_comfy_api
from ipgraph.server.comfy_api import object_info
from tests.hostile.corpus import cases, link, txt2img

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "tests" / "corpus" / "workflows"


def test_catalogue_is_in_step_with_the_registry():
    assert CATALOG_PATH.read_text(encoding="utf-8") == render(live_catalog()), (
        f"the node catalogue is out of step with the node registry: run `{WRITE_COMMAND}`")


def test_catalogue_types_describe_like_the_live_ones():
    rebuilt = registry_from_catalog(json.loads(render(catalog_of(REGISTRY))))
    assert rebuilt.types() == REGISTRY.types()
    assert rebuilt.describe() == REGISTRY.describe()
    assert described_nodes(load_catalog()) == REGISTRY.describe()  # what `ipgraph nodes --json` prints
    assert object_info(rebuilt) == object_info(REGISTRY)  # what UI-format workflows are read with
    assert catalog_of(rebuilt) == catalog_of(REGISTRY)  # aliases, renames, upgrades, cacheable
    with pytest.raises(RuntimeError, match="catalogue"):
        rebuilt["KSampler"].fn(None, None)


def _without_checks(registry: Registry) -> Registry:
    bare = Registry()
    for name in registry.types():
        bare.add(replace(registry[name], check=None, inputs={}, outputs={}))
    return bare


def _documents() -> list[tuple[str, object]]:
    """Every kind of document validate takes: the hostile corpus, the bundled graphs, ComfyUI's workflows in
    API and UI format, and broken variants of each kind."""
    docs = [(c.id, c.doc) for c in cases() if c.doc is not None and c.expect != "format"]
    docs += [(p.name, json.loads(p.read_text())) for p in sorted((ROOT / "graphs").rglob("*.json"))]
    docs += [(p.name, json.loads(p.read_text())) for p in sorted(WORKFLOWS.glob("*.json"))]
    docs.append(("broken-everything", {"nodes": {
        "a": {"type": "KSamplerr", "inputs": {}},
        "lat": {"type": "EmptyLatentImage", "inputs": {"width": 65, "height": "64px", "batch_size": 0}},
        "ks": {"type": "KSampler", "inputs": {"stepz": 3, "model": link("gone", "model"), "sampler_name": "banana",
                                             "positive": link("lat", "latent"), "latent_image": link("lat", "lat"),
                                             "cfg": True}},
        "s": {"type": "SaveImage", "inputs": {"images": link("a", "image")}}}}))
    # an old ipgraph/1 document: upgraded type, renamed inputs and outputs
    docs.append(("old-names", {"format": "ipgraph/1", "nodes": {
        "ck": {"type": "LoadCheckpoint", "inputs": {"name": "tiny-sd15.safetensors"}},
        "pos": {"type": "CLIPTextEncode", "inputs": {"clip": link("ck", "clip"), "text": "a"}},
        "cn": {"type": "ControlNetLoader", "inputs": {"name": "x.safetensors"}},
        "img": {"type": "LoadImage", "inputs": {"image": "scene.png"}},
        "apply": {"type": "ControlNetApply", "inputs": {
            "positive": link("pos", "conditioning"), "negative": link("pos", "conditioning"),
            "control_net": link("cn", "control_net"), "image": link("img", "image")}},
        "ks": {"type": "KSampler", "inputs": {"positive": link("apply", "positive")}}}}))
    # ComfyUI API format with ComfyUI's input names, an input the node lacks and a bad value
    api = to_comfy_api(Graph.from_dict(txt2img(**{"ks.steps": -1, "lat.width": 65})))
    api["ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors",
                                                                     "config_name": "v1.yaml"}}
    docs.append(("api-broken", api))
    for path in sorted(WORKFLOWS.glob("*.ui.json"))[:6]:  # UI format: widget values shifted by one
        ui = json.loads(path.read_text())
        for node in ui.get("nodes", []):
            if isinstance(node.get("widgets_values"), list) and node["widgets_values"]:
                node["widgets_values"] = node["widgets_values"][1:] + ["zzz"]
        docs.append((f"{path.name}-shifted", ui))
    return docs


def _check(doc, registry: Registry, runtime=None) -> tuple:
    warnings: list[str] = []
    try:
        graph = graph_from_document(doc, registry, lambda: object_info(registry, runtime), warnings)
    except GraphFormatError as exc:
        return ("format", str(exc)), warnings, []
    return graph.to_dict(), warnings, validate(graph, runtime)


def test_catalogue_validation_is_the_engines(tmp_path):
    """Catalogue types give the same graph, warnings and problems as the live types without their check hooks;
    the full validation (check hooks on, real runtime) only adds problems found by check hooks, on nodes the
    catalogue found nothing wrong with."""
    from ipgraph.nodes.core.runtime import Runtime

    runtime = Runtime.create(models_dir=tmp_path / "models", output_dir=tmp_path / "out",
                             input_dir=tmp_path / "in", device="cpu")
    fast_registry, bare = catalog_registry(), _without_checks(REGISTRY)
    docs = _documents()
    assert len(docs) > 250  # the corpora are really there
    kinds = set()
    for name, doc in docs:
        fast = _check(doc, fast_registry)
        assert fast == _check(doc, bare), name
        graph, warnings, full = _check(doc, REGISTRY, runtime)
        assert (graph, warnings) == fast[:2], name
        problems = fast[2]
        kinds |= {p.type for p in problems}
        assert [p for p in full if p in problems] == problems, name  # in the same order
        flagged = {p.node_id for p in problems}
        for extra in (p for p in full if p not in problems):
            entry = Graph.from_dict(graph).nodes.get(extra.node_id)
            assert entry is not None and REGISTRY[entry.type].check is not None, (name, str(extra))
            assert extra.node_id not in flagged and extra.type in ("invalid_value", "check_failed"), (name, str(extra))
    assert {"unknown_node_type", "unknown_input", "missing_input", "missing_node", "unknown_output",
            "type_mismatch", "out_of_range", "not_in_choices", "invalid_value", "cycle", "no_outputs"} <= kinds


# -- the command line, in a fresh interpreter --------------------------------------------------------------

RUN_CLI = """
import sys
from ipgraph.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "ipgraph.nodes") if m in sys.modules)
print("imported:", heavy, file=sys.stderr)
sys.exit(code)
"""


def cli(*args: str):
    return subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


BROKEN = {"nodes": {
    "a": {"type": "KSamplerr", "inputs": {}},
    "lat": {"type": "EmptyLatentImage", "inputs": {"width": 65, "height": 64, "batch_size": 1}},
    "ks": {"type": "KSampler", "inputs": {"stepz": 3}}}}


def test_validate_of_a_broken_graph_and_nodes_do_not_import_torch(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(BROKEN))
    api = tmp_path / "api.json"  # ComfyUI API format, ComfyUI class and input names
    api.write_text(json.dumps({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": 3}},
                               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    ui = tmp_path / "ui.json"  # UI format: read with object_info made from the catalogue
    ui.write_text((WORKFLOWS / "2_pass_txt2img__hiresfix_latent_workflow.ui.json").read_text()
                  .replace('"type": "KSampler"', '"type": "KSamplerr"'))
    typo = tmp_path / "typo.json"
    typo.write_text('{"nodes": {')
    for path, expected in [(bad, "node a (KSamplerr): there is no node type 'KSamplerr'  [unknown_node_type]"),
                           (api, "node 1 (CheckpointLoaderSimple), input 'ckpt_name': 3 is not accepted"),
                           (ui, "there is no node type 'KSamplerr'"), (typo, "not valid JSON")]:
        r = cli("validate", str(path))
        assert r.returncode == 1, r.stderr
        assert expected in r.stderr and "Traceback" not in r.stderr
        assert "imported: []" in r.stderr, r.stderr
    r = cli("nodes")
    assert r.returncode == 0 and "KSampler (sampling)" in r.stdout and "imported: []" in r.stderr, r.stderr
    r = cli("nodes", "--json")
    assert json.loads(r.stdout) == REGISTRY.describe() and "imported: []" in r.stderr
    r = cli("--help")
    assert r.returncode == 0 and "validate" in r.stdout and "imported: []" in r.stderr


def test_fast_report_is_the_full_report(tmp_path, capsys):
    """Every node of BROKEN has a structural problem, so no check hook runs: the catalogue's report (printed
    without importing torch) is the full validation's report, line for line, plus a note on what is left."""
    from ipgraph.cli import STRUCTURE_ONLY, main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(BROKEN))
    assert main(["validate", str(bad)]) == 1
    fast = capsys.readouterr().err
    # --registry names the live registry itself: the catalogue pass is skipped, the node families validate
    assert main(["validate", str(bad), "--registry", "ipgraph.engine:REGISTRY"]) == 1
    full = capsys.readouterr().err
    assert fast == full + STRUCTURE_ONLY + "\n"
    assert all(f"  - node {node_id} (" in full for node_id in BROKEN["nodes"])

"""UI-format workflows (what ComfyUI's editor saves): the converter to API format on hand-made workflows that
exercise each editor rule (the ComfyUI corpus in tests/corpus covers real files), then the CLI and server
intake: ``ipgraph run|validate workflow.json``, ``ipgraph run comfy.png``, ``POST /prompt`` with a UI workflow,
``POST /ipgraph/convert`` and the warnings about inputs a node does not have."""

from __future__ import annotations

import json

import pytest
from PIL import Image, PngImagePlugin

from ipgraph.engine import GraphFormatError
from ipgraph.engine.comfy_ui import is_ui_workflow, ui_to_api, widget_slots

# /object_info entries as ComfyUI describes these classes (only what the converter reads)
INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
        "steps": ["INT", {"default": 20}], "cfg": ["FLOAT", {}], "sampler_name": [["euler", "ddim"], {}],
        "scheduler": [["normal", "karras"], {}], "positive": ["CONDITIONING", {}],
        "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}], "denoise": ["FLOAT", {}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                     "negative", "latent_image", "denoise"]}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
                       "input_order": {"required": ["text", "clip"]}},
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors"], {}]}}},
    "LoadImage": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}},
    "Blur": {"input": {"required": {"image": ["IMAGE", {}], "radius": ["INT", {}]},
                       "optional": {"mask": ["MASK", {}], "amount": ["FLOAT", {"forceInput": True}]}}},
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}},
}


def node(id_, type_, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    return {"id": id_, "type": type_, "mode": mode, "widgets_values": widgets if widgets is not None else [],
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], **extra}


def inp(name, type_, link=None, widget=None):
    out = {"name": name, "type": type_, "link": link}
    if widget:
        out["widget"] = {"name": widget}
    return out


def wf(nodes, links, **extra):
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4, **extra}


def test_widget_slots_follow_object_info():
    assert widget_slots(INFO["KSampler"]) == [("seed", "value"), ("seed", "control"), ("steps", "value"),
                                              ("cfg", "value"), ("sampler_name", "value"),
                                              ("scheduler", "value"), ("denoise", "value")]
    assert widget_slots(INFO["LoadImage"]) == [("image", "value"), ("image", "upload")]
    assert widget_slots(INFO["Blur"]) == [("radius", "value")]  # forceInput is a socket


def test_widgets_control_after_generate_reroute_and_primitive():
    doc = wf([
        node(1, "Loader", ["a.safetensors"]),
        node(2, "Reroute", [], [inp("", "*", 1)]),
        node(3, "CLIPTextEncode", ["a bear"], [inp("clip", "CLIP", 2)]),
        node(4, "KSampler", [7, "randomize", 3, 6.5, "ddim", "karras", 0.5],
             [inp("model", "MODEL", 3), inp("positive", "CONDITIONING", 4), inp("seed", "INT", 5, widget="seed")]),
        node(5, "PrimitiveNode", [7, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [5]}]),
        node(6, "Note", ["just a note"]),
    ], [[1, 1, 1, 2, 0, "CLIP"], [2, 2, 0, 3, 0, "CLIP"], [3, 1, 0, 4, 0, "MODEL"],
        [4, 3, 0, 4, 1, "CONDITIONING"], [5, 5, 0, 4, 2, "INT"]])
    assert is_ui_workflow(doc)
    prompt, warnings = ui_to_api(doc, INFO)
    assert warnings == []
    assert sorted(prompt) == ["1", "3", "4"]
    assert prompt["3"]["inputs"] == {"text": "a bear", "clip": ["1", 1]}  # through the reroute
    assert prompt["4"]["inputs"] == {"seed": 7, "steps": 3, "cfg": 6.5, "sampler_name": "ddim",
                                     "scheduler": "karras", "denoise": 0.5, "model": ["1", 0],
                                     "positive": ["3", 0]}


def test_bypassed_and_muted_nodes():
    doc = wf([
        node(1, "LoadImage", ["x.png", "image"]),
        node(2, "Blur", [3], [inp("image", "IMAGE", 1), inp("mask", "MASK", None)], mode=4),  # bypassed
        node(3, "Save", ["out"], [inp("images", "IMAGE", 2)]),
        node(4, "Blur", [5], [inp("image", "IMAGE", 3)], mode=2),  # muted
        node(5, "Save", ["muted"], [inp("images", "IMAGE", 4)]),
    ], [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 1, 0, 4, 0, "IMAGE"], [4, 4, 0, 5, 0, "IMAGE"]])
    prompt, _ = ui_to_api(doc, INFO)
    assert sorted(prompt) == ["1", "3", "5"]
    assert prompt["1"]["inputs"] == {"image": "x.png"}
    assert prompt["3"]["inputs"] == {"images": ["1", 0], "filename_prefix": "out"}  # passed through the bypass
    assert prompt["5"]["inputs"] == {"filename_prefix": "muted"}  # the link from the muted node is removed


def test_dict_widgets_values_object_links_and_mismatch_warning():
    doc = {"version": 1, "state": {}, "nodes": [
        node(1, "LoadImage", {"image": "x.png"}),
        node(2, "Blur", [4, "extra"], [inp("image", "IMAGE", 7)]),
    ], "links": [{"id": 7, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"}]}
    prompt, warnings = ui_to_api(doc, INFO)
    assert prompt["1"]["inputs"] == {"image": "x.png"}
    assert prompt["2"]["inputs"] == {"radius": 4, "image": ["1", 0]}
    assert warnings and "node 2 (Blur): 2 widget value(s) for 1 widget(s)" in warnings[0]


def test_subgraph_instances_are_flattened():
    """An instance (type = subgraph id) stands for its interior; ids become "<instance>:<inner>"."""
    sub = {"id": "3f1c-sub", "name": "Encode twice", "version": 1, "state": {}, "revision": 0,
           "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]}, "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
           "inputs": [{"id": "i0", "name": "clip", "type": "CLIP", "linkIds": [11]}],
           "outputs": [{"id": "o0", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [12]}],
           "nodes": [node(5, "CLIPTextEncode", ["inside"], [inp("clip", "CLIP", 11)])],
           "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "CLIP"},
                     {"id": 12, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                      "type": "CONDITIONING"}]}
    doc = wf([
        node(1, "Loader", ["a.safetensors"]),
        node(9, "3f1c-sub", [], [inp("clip", "CLIP", 1)]),
        node(4, "KSampler", [1, "fixed", 2, 7.0, "euler", "normal", 1.0],
             [inp("model", "MODEL", 2), inp("positive", "CONDITIONING", 3)]),
    ], [[1, 1, 1, 9, 0, "CLIP"], [2, 1, 0, 4, 0, "MODEL"], [3, 9, 0, 4, 1, "CONDITIONING"]],
        definitions={"subgraphs": [sub]})
    prompt, _ = ui_to_api(doc, INFO)
    assert sorted(prompt) == ["1", "4", "9:5"]
    assert prompt["9:5"]["inputs"] == {"text": "inside", "clip": ["1", 1]}
    assert prompt["4"]["inputs"]["positive"] == ["9:5", 0]


def test_bad_workflows_name_the_node():
    with pytest.raises(GraphFormatError, match="legacy group node"):
        ui_to_api(wf([node(3, "workflow>My group")], []), INFO)
    with pytest.raises(GraphFormatError, match='"id" and a "type"'):
        ui_to_api(wf([{"id": 1}], []), INFO)


# -- CLI and server intake ------------------------------------------------------------------------

def _txt2img_ui(registry, runtime) -> dict:
    from pathlib import Path

    from ipgraph.engine import Graph
    from ipgraph.server.workflows import to_ui_workflow

    path = Path(__file__).resolve().parents[2] / "graphs" / "txt2img.json"
    graph = Graph.from_json(path.read_text(), registry)
    sampler = next(n for n, e in graph.nodes.items() if e.type == "KSampler")
    graph.nodes[sampler].inputs["steps"] = 2
    return to_ui_workflow(graph, runtime, name="txt2img.json")


@pytest.mark.slow
def test_cli_runs_ui_workflow_and_comfy_png(runtime, models_dir, tmp_path, capsys):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.cli import main
    from ipgraph.engine import REGISTRY

    ui = _txt2img_ui(REGISTRY, runtime)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(ui))
    args = ["--models-dir", str(models_dir), "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    assert main(["validate", str(path), "--models-dir", str(models_dir)]) == 0
    assert main(["run", str(path), *args]) == 0
    assert list((tmp_path / "out").glob("*.png"))
    # a PNG as ComfyUI saves it: the editor graph in "workflow" (no prompt chunk)
    png = tmp_path / "comfy.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("workflow", json.dumps(ui))
    Image.new("RGB", (8, 8)).save(png, pnginfo=meta)
    capsys.readouterr()
    assert main(["run", str(png), *args]) == 0
    assert "run 1:" in capsys.readouterr().out


def test_cli_reports_unknown_inputs_and_strict_fails(tmp_path, capsys):
    from ipgraph.cli import main

    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2, "valeu": 3}},
              "2": {"class_type": "SaveNumber", "inputs": {"value": ["1", 0], "filename_prefix": "t"}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    reg = ["--registry", "tests.server.fake_nodes:REGISTRY"]
    assert main(["validate", str(path), *reg]) == 0
    err = capsys.readouterr().err
    assert "warning: node 1 (Number): 'valeu' is not an input of Number; it was ignored" in err
    assert main(["validate", "--strict", str(path), *reg]) == 1
    assert "'valeu' is not an input of Number" in capsys.readouterr().err


def test_prompt_route_warns_and_converts(fake_server):
    c = fake_server.client()
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2, "valeu": 3}},
              "2": {"class_type": "SaveNumber", "inputs": {"value": ["1", 0], "filename_prefix": "t"}}}
    r = c.post("/api/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == ["node 1 (Number): 'valeu' is not an input of Number; it was ignored "
                                    "(its inputs are: value)"]
    ui = wf([node(1, "Number", [4]), node(2, "SaveNumber", ["ui"], [inp("value", "NUMBER", 1)])],
            [[1, 1, 0, 2, 0, "NUMBER"]])
    converted = c.post("/ipgraph/convert", json=ui)
    assert converted.status_code == 200, converted.text
    assert converted.json()["prompt"] == {
        "1": {"class_type": "Number", "inputs": {"value": 4}},
        "2": {"class_type": "SaveNumber", "inputs": {"filename_prefix": "ui", "value": ["1", 0]}}}
    r = c.post("/api/prompt", json={"prompt": ui})  # a UI workflow posted as the prompt runs too
    assert r.status_code == 200, r.text
    bad = c.post("/ipgraph/convert", json={"nodes": {}})
    assert bad.status_code == 400


# -- the editor's first screen (server side; tests/server/test_browser.py drives the editor itself) ---------

def test_first_screen_routes_assets_and_layout(real_server):
    from pathlib import Path

    from ipgraph.engine import Graph
    from ipgraph.server.workflows import bundled_graphs, overlapping, to_ui_workflow

    c = real_server.client()
    assert c.get("/api/extensions").json() == ["/extensions/ipgraph/ipgraph.js"]
    js = c.get("/extensions/ipgraph/ipgraph.js")
    assert js.status_code == 200 and "registerExtension" in js.text and js.headers["content-type"].startswith(
        "text/javascript")
    assert c.get("/extensions/ipgraph/other.js").status_code == 404
    first = c.get("/ipgraph/first_workflow").json()
    assert first["name"] == "txt2img.json"
    assert sorted(n["type"] for n in first["workflow"]["nodes"]) == sorted(
        ["LoadCheckpoint", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage"])
    # the images bundled graphs name are served and offered as inputs, as the run will read them
    view = c.get("/api/view", params={"filename": "ipa_bear_ref.png", "type": "input"})
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    choices = c.get("/api/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert "ipa_bear_ref.png" in choices
    # every bundled graph opens without overlapping nodes
    state = real_server.state
    for name, path in bundled_graphs(Path(state.config.graphs_dir)).items():
        wf = to_ui_workflow(Graph.from_json(path.read_text(), state.registry), state.runtime, name=name)
        assert overlapping(wf["nodes"]) == [], name

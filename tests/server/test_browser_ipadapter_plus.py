"""ComfyUI_IPAdapter_plus's own example workflows (UI format, tests/corpus/ipadapter_plus/) in the official ComfyUI
web editor against the real server: opened as a user opens a file, with no missing node, model or image; run
with the editor's Run button, so the editor's own graph→prompt conversion is what ``POST /prompt`` receives.

Three files that differ: ``ipadapter_simple`` (IPAdapterUnifiedLoader preset + IPAdapter, one sampler, a file
older than the IPAdapter node's weight_type widget), ``ipadapter_combine_embeds`` (IPAdapterModelLoader +
CLIPVisionLoader, ImageBatch of two references, four IPAdapterAdvanced nodes, one per combine method, four samplers
and five SaveImage nodes) and ``ipadapter_precise_weight_type`` (a PrimitiveNode seed shared by two KSamplers,
Note nodes, PreviewImage outputs, the "style transfer (precise)" weight types). All twelve pass; three keep the
run short (about 35 s with the server and browser start on a 2-core CPU).

The corpus files already name the tiny models and the bundled reference pictures (make_pack_graphs.map_names).
Their reference pictures are uploaded through ``POST /upload/image`` first, as a user would. For speed on CPU,
before the file is opened, its EmptyLatentImage becomes 64×64 and its KSamplers take 2 steps (the pack's files say
512×512, 30 steps); nothing else changes.

What the editor sends is checked against the file read with the PACK's widget order (pack_signatures.json, from
IPAdapterPlus.py's INPUT_TYPES) and ComfyUI's core widget order, so a wrong order or a missing widget in
ipgraph's /object_info shows as a wrong prompt, not only as a failed run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.ipadapter_plus.make_pack_graphs import CORE_WIDGETS, CORPUS, UI_ONLY

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ASSETS = ROOT / "graphs" / "assets"
PACK = json.loads((ROOT / "tests" / "ipadapter_plus" / "pack_signatures.json").read_text())["nodes"]
FILES = ("simple", "combine_embeds", "precise_weight_type")
OUTPUTS = ("SaveImage", "PreviewImage")

# the editor's Pinia stores that collect what a loaded workflow lacks (nodes, models, media)
STORES_JS = """() => {
  const s = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia._s;
  const list = v => (v == null ? [] : Array.isArray(v) ? v : (v.nodeTypes || [v]));
  return {nodes: list(s.get('missingNodesError')?.missingNodesError).map(t => t.type || String(t)),
          models: list(s.get('missingModel')?.missingModelCandidates).map(m => m.name || String(m)),
          media: list(s.get('missingMedia')?.missingMediaCandidates).map(m => m.name || String(m))};
}"""


FIT_JS = """() => {
  const c = window.app.canvas, ns = window.app.graph._nodes;
  const x0 = Math.min(...ns.map(n => n.pos[0])), y0 = Math.min(...ns.map(n => n.pos[1] - 30));
  const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
  const s = Math.min(1, (c.canvas.clientWidth - 140) / (x1 - x0), (c.canvas.clientHeight - 120) / (y1 - y0));
  c.ds.scale = s; c.ds.offset = [100 / s - x0, 70 / s - y0]; c.setDirty(true, true);
}"""


def _widget_names(node: dict) -> list[str]:
    """The node's widgets in the order its class declares them: ComfyUI core's, or the pack's INPUT_TYPES order
    without the sockets the file itself lists (``*`` = a frontend-only value such as control_after_generate)."""
    if node["type"] in CORE_WIDGETS:
        return CORE_WIDGETS[node["type"]]
    sig = PACK[node["type"]]
    sockets = {i["name"] for i in node.get("inputs", []) if "widget" not in i}
    return [n for n in sig["required"] + sig.get("optional", []) if n not in sockets]


def _expected_prompt(doc: dict) -> dict:
    """The API prompt the file means, read independently of ipgraph's registry (the widgets its file holds)."""
    nodes = {n["id"]: n for n in doc["nodes"]}
    links = {link[0]: link for link in doc["links"]}
    prompt = {}
    for n in doc["nodes"]:
        if n["type"] in UI_ONLY or n.get("mode", 0) in (2, 4):
            continue
        inputs = {k: v for k, v in zip(_widget_names(n), n.get("widgets_values") or [], strict=False) if k != "*"}
        for inp in n.get("inputs", []):
            link = links.get(inp.get("link"))
            if link is not None:
                src = nodes[link[1]]
                inputs[inp["name"]] = (src["widgets_values"][0] if src["type"] == "PrimitiveNode"
                                       else [str(link[1]), link[2]])
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def _shrink(doc: dict) -> dict:
    for n in doc["nodes"]:
        vals = n.get("widgets_values")
        if n["type"] == "EmptyLatentImage":
            vals[0] = vals[1] = 64
        elif n["type"] == "KSampler":
            vals[CORE_WIDGETS["KSampler"].index("steps")] = 2
    return doc


def _default(info: dict, class_type: str, name: str):
    spec = {**info[class_type]["input"].get("required", {}), **info[class_type]["input"].get("optional", {})}[name]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    return spec[0][0] if isinstance(spec[0], list) else None


@pytest.fixture(scope="module")
def editor(real_server, browser):
    """One editor page (fresh storage) for the module; records page errors and every request it makes."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    seen = SimpleNamespace(page=page, errors=[], requests=[])
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("request", lambda r: seen.requests.append(r.url))
    page.goto(real_server.url + "/")
    page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes.length > 0",
                           timeout=90_000)
    # node titles and widgets drawn even when a large graph is zoomed out to fit (for the screenshots)
    page.evaluate("() => window.app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1)")
    yield seen
    context.close()


@pytest.mark.parametrize("name", FILES)
def test_pack_example_opens_in_the_editor_without_missing_nodes_and_runs(real_server, editor, tmp_path, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page = editor.page
    client = real_server.client()
    info = client.get("/api/object_info").json()
    doc = _shrink(json.loads((CORPUS / f"ipadapter_{name}.json").read_text()))

    # the reference pictures the file's LoadImage nodes name, uploaded into the input folder
    for picture in sorted({n["widgets_values"][0] for n in doc["nodes"] if n["type"] == "LoadImage"}):
        r = client.post("/upload/image", files={"image": (picture, (ASSETS / picture).read_bytes(), "image/png")},
                        data={"type": "input", "overwrite": "true"})
        assert r.status_code == 200 and r.json()["name"] == picture, r.text
    expected = _expected_prompt(copy.deepcopy(doc))
    saves = sorted(k for k, v in expected.items() if v["class_type"] in OUTPUTS)

    # open the file as the Workflows menu's Open does
    path = tmp_path / f"ipadapter_{name}.json"
    path.write_text(json.dumps(doc))
    page.set_input_files("#comfy-file-input", str(path))
    page.wait_for_function(
        "ids => { const got = new Set(window.app.graph._nodes.map(n => String(n.id)));"
        " return window.app.graph._nodes.length === ids.length && ids.every(i => got.has(i)); }",
        arg=[str(n["id"]) for n in doc["nodes"]], timeout=30_000)
    page.wait_for_timeout(1000)  # the editor checks models and media after the load
    nodes = page.evaluate("() => window.app.graph._nodes.map(n => ({id: String(n.id), type: n.type,"
                          " registered: n.type in LiteGraph.registered_node_types}))")
    assert sorted((n["id"], n["type"]) for n in nodes) == sorted((str(n["id"]), n["type"]) for n in doc["nodes"])
    assert [n["type"] for n in nodes if not n["registered"]] == [], "missing nodes in the editor"
    assert page.evaluate(STORES_JS) == {"nodes": [], "models": [], "media": []}
    assert "missing" not in page.evaluate(
        "() => Array.from(document.querySelectorAll('[role=\"dialog\"]')).map(d => d.innerText).join(' ')").lower()

    # Run, with the editor's own button: what it POSTs to /prompt is the file read with the pack's widget order
    page.evaluate(FIT_JS)  # every node on screen, for the screenshot
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as answer:
        page.click('[data-testid="queue-button"]', timeout=10_000)
    response = answer.value
    assert response.status == 200, response.text()
    sent = response.request.post_data_json["prompt"]
    prompt_id = response.json()["prompt_id"]
    assert sorted(sent) == sorted(expected)
    for node_id, want in expected.items():
        got = sent[node_id]
        assert got["class_type"] == want["class_type"]
        assert {k: got["inputs"].get(k) for k in want["inputs"]} == want["inputs"], (node_id, want["class_type"])
        for extra in set(got["inputs"]) - set(want["inputs"]):  # widgets an older pack version's file lacks
            assert got["inputs"][extra] == _default(info, want["class_type"], extra), (node_id, extra)

    # the job succeeds: every SaveImage / PreviewImage node shows its picture, and the history has them all
    page.wait_for_function(
        "ids => ids.every(id => { const n = window.app.graph.getNodeById(Number(id));"
        " return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; })",
        arg=saves, timeout=120_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"browser-ipadapter-plus-{name}.png"))
    for _ in range(50):  # the history entry is written as the job ends, maybe just after the last image
        entry = client.get(f"/api/history/{prompt_id}").json().get(prompt_id)
        if entry is not None:
            break
        page.wait_for_timeout(100)
    assert entry is not None, f"no history for {prompt_id}"
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    assert sorted(k for k, v in entry["outputs"].items() if v.get("images")) == saves
    for node_id in saves:
        image = entry["outputs"][node_id]["images"][0]
        view = client.get("/api/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                               "type": image["type"]})
        assert view.status_code == 200 and view.content[:8] == b"\x89PNG\r\n\x1a\n"

    local = (real_server.url, f"ws://127.0.0.1:{real_server.port}", "data:", "blob:")
    assert [u for u in editor.requests if not u.startswith(local)] == [], "the editor reached outside the server"
    assert not [e for e in editor.errors if "ResizeObserver" not in e], editor.errors

"""The hostile-input corpus through all three entry points: the Python API, the CLI and the server.

Each case must give a structured error that names the node (and the input where there is one) in a sentence,
never a traceback; the server stays up and answers JSON; nothing is written outside the data and output folders.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from ipgraph.engine import Engine, Graph, GraphFormatError, NodeFailed
from tests.hostile.corpus import CKPT, Case, case_text, cases, write_bad_files

CASES = cases()
ALLOWED_TOP = {"models", "data", "input", "output", "docs", "temp"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, models_dir):
    """A models folder with the tiny models and the bad files, an input folder, a runtime and a server."""
    from ipgraph.nodes.core.runtime import Runtime
    from tests.server.conftest import LiveServer

    root = tmp_path_factory.mktemp("hostile")
    models = root / "models"
    for kind, names in {"checkpoints": [CKPT], "vae": ["tiny-sd15-vae.safetensors"],
                        "clip_vision": ["tiny-clip-vision.safetensors", "tiny-clip-vision-wide.safetensors"],
                        "ipadapter": ["tiny-ip-adapter_sd15.safetensors"]}.items():
        (models / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(models_dir / kind / name, models / kind / name)
    write_bad_files(models, root / "input")
    server = LiveServer(root / "data", models_dir=models, prepare_tiny_models=False)
    write_bad_files(models, server.config.input_dir)
    server.start()
    runtime = Runtime.create(models_dir=models, output_dir=root / "output", input_dir=root / "input",
                             device="cpu", dtype="float32", allow_absolute_paths=False)
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY

    yield {"root": root, "models": models, "runtime": runtime, "engine": Engine(REGISTRY, runtime), "server": server}
    server.stop()
    stray = [p for p in root.iterdir() if p.name not in ALLOWED_TOP]
    assert not stray, f"files written outside the data/output folders: {stray}"
    assert not Path("/tmp/ipgraph-hostile-escape").exists()
    assert not Path("/tmp/ipgraph-hostile-pickle-ran").exists()


def _check_problem(case: Case, problems) -> None:
    assert problems, f"{case.id}: expected a problem, the graph validated"
    text = " ".join(p.message for p in problems).lower()
    assert "traceback" not in text
    if case.node is not None:
        mine = [p for p in problems if p.node_id == case.node]
        assert mine, f"{case.id}: no problem names node {case.node!r}: {[str(p) for p in problems]}"
        if case.input is not None:
            from ipgraph.engine import REGISTRY

            node_type = REGISTRY.get(case.doc["nodes"][case.node]["type"]) if case.node in case.doc["nodes"] else None
            names = {case.input, node_type.renamed_inputs.get(case.input) if node_type else None}
            assert any(p.input in names for p in mine), [str(p) for p in mine]
    for word in case.words:
        assert word.lower() in text, f"{case.id}: {word!r} not in {text!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_python_api(world, case: Case):
    engine = world["engine"]
    if case.expect == "format":
        with pytest.raises(GraphFormatError) as info:
            Graph.from_json(case_text(case)) if "text" in case.extra else Graph.from_dict(case.doc)
        for word in case.words:
            assert word in str(info.value).lower()
        return
    graph = Graph.from_dict(case.doc)
    problems = engine.validate(graph)
    if case.expect == "valid":
        assert problems == []
    elif case.expect == "problem":
        _check_problem(case, problems)
    else:
        assert problems == [], [str(p) for p in problems]
        with pytest.raises(NodeFailed) as info:
            engine.run(graph)
        error = info.value.error
        assert "Traceback" not in error.message and error.message.strip()
        if case.node is not None:
            assert error.node_id == case.node, str(error)
        for word in case.words:
            assert word.lower() in error.message.lower(), error.message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(world, case: Case, capsys):
    from ipgraph.cli import main

    docs = world["root"] / "docs"
    docs.mkdir(exist_ok=True)
    path = docs / f"{case.id}.json"
    path.write_text(case_text(case), encoding="latin-1" if "not-utf8" in case.id else "utf-8")
    command = "run" if case.expect == "run" else "validate"
    args = [command, str(path), "--models-dir", str(world["models"]), "--input-dir", str(world["root"] / "input")]
    if command == "run":
        args += ["--output-dir", str(world["root"] / "output"), "--device", "cpu"]
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case.expect == "valid":
        assert code == 0, err
        return
    assert code == 1, err
    last = err.strip().splitlines()[-1] if case.expect == "run" else err.strip()
    assert last.startswith(("error:", "the graph has")), err
    if case.node is not None and case.expect != "format":
        assert f"node {case.node}" in err, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_server(world, case: Case):
    server = world["server"]
    with server.client() as c:
        body = '{"graph": ' + case_text(case) + "}"
        r = c.post("/ipgraph/validate", content=body.encode("utf-8", "surrogateescape"),
                   headers={"content-type": "application/json"})
        assert "Traceback" not in r.text
        data = r.json()
        if case.expect == "format":
            assert r.status_code == 400 and data["error"]["message"]
        elif case.expect in ("valid", "run"):
            assert r.status_code == 200 and data["valid"], data
        else:
            assert r.status_code == 200 and not data["valid"]
            nodes = {p["node_id"] for p in data["problems"]}
            assert case.node is None or case.node in nodes, data
        if case.expect in ("problem", "run") and case.extra.get("api", True):
            _via_prompt(c, case)
        assert c.get("/system_stats").status_code == 200  # still up


def _via_prompt(c, case: Case) -> None:
    """The same case as a ComfyUI API prompt: 400 with node_errors, or a failed job explained in /history."""
    from ipgraph.engine.comfy import to_comfy_api

    prompt = to_comfy_api(Graph.from_dict(case.doc))
    r = c.post("/prompt", json={"prompt": prompt})
    assert "Traceback" not in r.text
    if case.expect == "problem":
        assert r.status_code == 400, r.text
        data = r.json()
        assert data["error"]["message"]
        if case.node is not None and case.node in prompt:
            assert case.node in data["node_errors"] or data["error"]["details"], data
        return
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        entry = c.get(f"/history/{pid}").json().get(pid)
        if entry:
            status = entry["status"]
            assert status["status_str"] == "error"
            messages = json.dumps(status["messages"])
            assert "execution_error" in messages and "Traceback" not in messages
            return
        time.sleep(0.2)
    raise AssertionError(f"{case.id}: the job did not finish")

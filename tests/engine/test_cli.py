"""The ipgraph command on graphs of test nodes (subprocess: what a user types)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "tests" / "fakes" / "chain.json"
REG = ["--registry", "tests.fakes.nodes:REGISTRY"]


def ipgraph(*args: str):
    return subprocess.run([sys.executable, "-m", "ipgraph", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_run_with_set_prints_summary():
    r = ipgraph("run", str(CHAIN), *REG, "--set", "c.value=5", "--set", "s2.label=hello")
    assert r.returncode == 0, r.stderr
    assert "5 executed, 0 cached" in r.stdout
    assert "ran    slow (Slow)" in r.stderr


def test_validate_lists_every_problem(tmp_path):
    doc = json.loads(CHAIN.read_text())
    doc["nodes"]["c"]["inputs"]["value"] = 99999
    doc["nodes"]["a"]["type"] = "Nope"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = ipgraph("validate", str(bad), *REG)
    assert r.returncode == 1
    assert "node c (Const), input 'value': 99999 is not accepted" in r.stderr
    assert "node a (Nope): there is no node type 'Nope'  [unknown_node_type]" in r.stderr
    assert "Traceback" not in r.stderr
    ok = ipgraph("validate", str(CHAIN), *REG)
    assert ok.returncode == 0 and "valid (5 nodes)" in ok.stdout


def test_errors_are_sentences_not_tracebacks(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    r = ipgraph("run", str(broken), *REG)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = ipgraph("run", str(CHAIN), *REG, "--set", "nosuch.value=1")
    assert r.returncode == 1 and "has no node 'nosuch'" in r.stderr


def test_nodes_listing():
    r = ipgraph("nodes", *REG)
    assert r.returncode == 0 and "Sink [output] (test)" in r.stdout
    r = ipgraph("nodes", "--json", *REG)
    assert json.loads(r.stdout)["Const"]["inputs"][0]["name"] == "value"


def test_serve_takes_its_own_options():
    r = ipgraph("serve", "--help")
    assert r.returncode == 0 and "--port" in r.stdout and "--data-dir" in r.stdout


def test_bundled_graphs_are_listed_copied_and_found_by_name(tmp_path, models_dir):
    listed = ipgraph("graphs")
    assert listed.returncode == 0 and "txt2img" in listed.stdout.split()
    copied = ipgraph("graphs", "--copy", str(tmp_path / "examples"))
    assert copied.returncode == 0
    assert (tmp_path / "examples" / "txt2img.json").is_file()
    assert (tmp_path / "examples" / "assets" / "ipa_bear_ref.png").is_file()
    by_name = ipgraph("validate", "txt2img", "--models-dir", str(models_dir))
    assert by_name.returncode == 0 and "valid" in by_name.stdout
    missing = ipgraph("validate", "no_such_graph")
    assert missing.returncode == 1 and "ipgraph graphs" in missing.stderr

"""ipgraph installs one top-level import name, its package list matches its folders, and it has no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import tomllib

ROOT = Path(__file__).resolve().parents[2]
ROOMS = {"ipgraph": "ipgraph", "ipgraph.engine": "engine", "ipgraph.nodes": "nodes", "ipgraph.server": "server",
         "ipgraph.graphs": "graphs"}


def _modules() -> dict[str, Path]:
    """Every module of the package, by its import name."""
    out = {}
    for package, folder in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            if not all((ROOT / folder / Path(*rel.parts[:i]) / "__init__.py").exists() for i in range(len(rel.parts))):
                continue  # a script beside the package (graphs/assets/make_*.py), not a module
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def test_package_list_matches_the_folders():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert declared == on_disk


def test_only_ipgraph_is_importable_from_an_unrelated_directory(tmp_path):
    script = (
        "import importlib, sys\n"
        "import ipgraph.cli, ipgraph.nodes, ipgraph.server.app\n"
        "for name in ('engine', 'nodes', 'server', 'graphs', 'tests', 'bench'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    print('importable:', name)\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "print('loaded:', sorted(tops & {'engine', 'nodes', 'server', 'graphs', 'tests', 'bench'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded: []"


def test_no_import_cycles():
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph.add_node(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    assert graph.has_edge("ipgraph.nodes.tiny.sd", "ipgraph.nodes.models.single_file")  # the walk sees imports
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles}"

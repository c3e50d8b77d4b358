"""Shared fixtures: the tiny models (written once per test session) and a runtime/engine on them."""

from __future__ import annotations

import pytest
import torch

# The tiny models are dominated by per-op overhead: one thread is faster than two fighting for CI's 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder holding every tiny model, written by the project's own code (real formats)."""
    from ipgraph.nodes.tiny import write_all

    path = tmp_path_factory.mktemp("models")
    write_all(path)
    return path


@pytest.fixture
def runtime(models_dir, tmp_path):
    from ipgraph.nodes.core.runtime import Runtime

    return Runtime.create(models_dir=models_dir, output_dir=tmp_path / "output", input_dir=tmp_path / "input",
                          device="cpu", dtype="float32")


@pytest.fixture
def engine(runtime):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine

    return Engine(REGISTRY, runtime)

"""The tiny models of the shared session folder (tests/conftest.py), by name."""

import pytest

from ipgraph.nodes.tiny.sd import write_tiny_models


@pytest.fixture(scope="session")
def tiny_models(models_dir):
    return write_tiny_models(models_dir)  # already written: returns the paths without rewriting

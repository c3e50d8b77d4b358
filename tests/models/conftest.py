"""Tiny models written once per test session into a temporary models folder."""

import pytest
import torch

from nodes.models.tiny import write_tiny_models


@pytest.fixture(autouse=True)
def one_thread():
    """The test machines are small and shared: one CPU thread per test, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))

"""Training fixtures: the generated 8-image dataset, the frozen tiny models loaded once, a runtime on them."""

from __future__ import annotations

import pytest

from ipgraph.nodes.training import load_base, load_encoder, make_tiny_dataset, read_records


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """(data.json, images folder): 8 generated images, 64 px tall (some wider), with captions."""
    return make_tiny_dataset(tmp_path_factory.mktemp("train-data"), n=8, size=64)


@pytest.fixture(scope="session")
def records(dataset):
    return read_records(*dataset)


@pytest.fixture(scope="session")
def session_runtime(models_dir, tmp_path_factory):
    from ipgraph.nodes.core.runtime import Runtime

    out = tmp_path_factory.mktemp("train-out")
    return Runtime.create(models_dir=models_dir, output_dir=out / "output", input_dir=out / "input",
                          device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def sd15(session_runtime):
    return load_base(session_runtime, "tiny-sd15.safetensors")[0]


@pytest.fixture(scope="session")
def encoder(session_runtime):
    return load_encoder(session_runtime, "tiny-clip-vision.safetensors")

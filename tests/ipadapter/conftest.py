"""Shared fixtures: tiny SD1.5/SDXL UNets (helper-1's build_tiny), tiny encoders and adapter files on disk."""

from __future__ import annotations

import copy

import pytest

from ipgraph.nodes.tiny.ipadapter import tiny_clip_vision, write_tiny_clip_vision, write_tiny_ipadapters


@pytest.fixture(scope="session")
def unets():
    from ipgraph.nodes.tiny.sd import build_tiny

    return {"sd15": build_tiny("sd15")["unet"], "sdxl": build_tiny("sdxl")["unet"]}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, unets):
    d = tmp_path_factory.mktemp("models")
    paths = dict(write_tiny_clip_vision(d))
    paths.update(write_tiny_ipadapters(d, unets))
    return d, paths


@pytest.fixture(scope="session")
def encoder():
    return tiny_clip_vision()


@pytest.fixture()
def fresh_unet(unets):
    """A private copy, for tests that load diffusers' own IP-Adapter machinery into it."""
    return lambda arch: copy.deepcopy(unets[arch])

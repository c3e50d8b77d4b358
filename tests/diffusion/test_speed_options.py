"""Runtime speed options: channels-last UNet/VAE (``--channels-last``). Not bit-equal to the default layout (other
conv kernels); the random tiny model amplifies the last-bit differences over steps (mid SD1.5: 8e-5 after 10 steps,
bench/bench_speed.py), so this checks the layout and a relative closeness only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ipgraph.engine import REGISTRY, Engine, Graph

pytestmark = pytest.mark.slow
DOC = json.loads((Path(__file__).resolve().parents[2] / "graphs" / "txt2img.json").read_text())


def test_channels_last_runtime_matches_default_layout(models_dir, tmp_path):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.nodes.core.runtime import Runtime

    DOC["nodes"]["sampler"]["inputs"].update(steps=4, seed=3)
    out = {}
    for cl in (False, True):
        runtime = Runtime.create(models_dir=models_dir, output_dir=tmp_path / str(cl), device="cpu",
                                 dtype="float32", channels_last=cl)
        result = Engine(REGISTRY, runtime).run(Graph.from_dict(DOC, REGISTRY), outputs=["decode"])
        out[cl] = result
        unet = result.outputs["ckpt"].model.unet
        conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is cl
    lat = [out[cl].outputs["sampler"].LATENT.samples for cl in (False, True)]
    img = [out[cl].outputs["decode"].IMAGE for cl in (False, True)]
    assert (lat[0] - lat[1]).abs().max() <= 1e-2 * lat[0].abs().max()
    assert (img[0] - img[1]).abs().max() <= 2e-2
    assert lat[1].is_contiguous() and img[1].is_contiguous()  # results leave in the default layout

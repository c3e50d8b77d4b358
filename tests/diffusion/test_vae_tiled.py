"""VAEDecodeTiled: diffusers' tiled decode (enable_tiling, blended seams) with the node's tile size and overlap."""

from __future__ import annotations

import pytest
import torch

from ipgraph.engine import Graph

pytestmark = pytest.mark.slow


def test_tiled_decode_equals_diffusers_tiling_and_small_latents_decode_whole(engine):
    from ipgraph.nodes.diffusion.latent import vae_decode

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    lat = g.add("EmptyLatentImage", id="lat", width=192, height=128)
    g.add("VAEDecodeTiled", id="tiled", samples=lat.latent, vae=ck.vae, tile_size=64, overlap=32)
    g.add("VAEDecodeTiled", id="whole", samples=lat.latent, vae=ck.vae, tile_size=256, overlap=64)
    g.add("VAEDecode", id="plain", samples=lat.latent, vae=ck.vae)
    z = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    result = engine.run(g, outputs=["ckpt"])
    handle = result.outputs["ckpt"].vae
    from ipgraph.nodes.diffusion.latent import vae_decode_tiled

    tiled = vae_decode_tiled(handle, z, torch.device("cpu"), tile_size=64, overlap=32)
    module = handle.vae
    before = (module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor)
    module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor = 64, 8, 0.5
    try:
        with torch.no_grad():
            ref = module.tiled_decode(z / handle.scaling_factor).sample
    finally:
        module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor = before
    assert (module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor) == before
    assert torch.equal(tiled, (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
    whole = vae_decode(handle, z, torch.device("cpu"))
    assert 0 < (tiled - whole).abs().max() < 1  # seams: close to, not equal to, the whole decode
    assert torch.equal(vae_decode_tiled(handle, z, torch.device("cpu"), tile_size=256, overlap=64), whole)
    nodes = engine.run(g, outputs=["tiled", "whole", "plain"])
    assert nodes.outputs["tiled"].IMAGE.shape == (1, 128, 192, 3)
    assert torch.equal(nodes.outputs["whole"].IMAGE, nodes.outputs["plain"].IMAGE)

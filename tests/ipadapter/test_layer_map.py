"""ip_adapter.{2j+1} -> j-th cross-attention layer in diffusers' attn_processors order (down, up, mid)."""

from __future__ import annotations

import pytest
import torch

from ipgraph.nodes.core.types import SamplingState
from ipgraph.nodes.ipadapter import IPAdapterPatch, cross_attention_names, installed, load_ipadapter
from ipgraph.nodes.tiny.ipadapter import tiny_ipadapter_state

from ._oracle import load_into

SD15_EXPECTED = (
    [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    + [f"up_blocks.{b}.attentions.{a}" for b in (1, 2, 3) for a in range(3)]
    + ["mid_block.attentions.0"]
)
SDXL_EXPECTED = (  # (transformer, depth) in j order, as in the reference table
    [
        ("down_blocks.1.attentions.0", 2),
        ("down_blocks.1.attentions.1", 2),
        ("down_blocks.2.attentions.0", 10),
        ("down_blocks.2.attentions.1", 10),
        ("up_blocks.0.attentions.0", 10),
        ("up_blocks.0.attentions.1", 10),
        ("up_blocks.0.attentions.2", 10),
        ("up_blocks.1.attentions.0", 2),
        ("up_blocks.1.attentions.1", 2),
        ("up_blocks.1.attentions.2", 2),
        ("mid_block.attentions.0", 10),
    ]
)


def _expected(arch):
    if arch == "sd15":
        return [f"{t}.transformer_blocks.0.attn2.processor" for t in SD15_EXPECTED]
    return [f"{t}.transformer_blocks.{i}.attn2.processor" for t, n in SDXL_EXPECTED for i in range(n)]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_layer_mapping(arch, unets, fresh_unet, tmp_path):
    from safetensors.torch import save_file

    unet = unets[arch]
    names = cross_attention_names(unet)
    assert names == _expected(arch)
    # a file whose layer j weights are all j+1: which module does diffusers give them to, and which do we?
    state = tiny_ipadapter_state(unet, "base", seed=0)
    for key in state["ip_adapter"]:
        j = (int(key.split(".")[0]) - 1) // 2
        state["ip_adapter"][key] = torch.full_like(state["ip_adapter"][key], float(j + 1))
    oracle = load_into(fresh_unet(arch), [state])
    got = {
        n: int(p.to_k_ip[0].weight[0, 0]) - 1
        for n, p in oracle.attn_processors.items()
        if n.endswith("attn2.processor")
    }
    assert got == {n: j for j, n in enumerate(names)}

    path = tmp_path / "marked.safetensors"
    save_file({f"{part}.{k}": v for part, d in state.items() for k, v in d.items()}, str(path))
    adapter = load_ipadapter(path)
    tokens = torch.ones(4, unet.config.cross_attention_dim)
    patch = IPAdapterPatch(adapter, tokens, tokens)
    with installed(unet, [patch], SamplingState()):
        procs = unet.attn_processors
        for j, n in enumerate(names):
            k = procs[n].terms[0].k_cond  # = tokens @ W_j^T with W_j filled with j+1
            assert torch.allclose(k, torch.full_like(k, (j + 1) * unet.config.cross_attention_dim))

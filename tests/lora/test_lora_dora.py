"""DoRA: peft-format files vs diffusers' load_lora_weights + fuse_lora; kohya/LyCORIS files vs ComfyUI's math."""

from __future__ import annotations

import pytest
import torch

from ipgraph.nodes.lora.apply import lora_patches
from ipgraph.nodes.lora.files import load_lora
from ipgraph.nodes.lora.patch import (
    DoraTerm,
    LohaTerm,
    LoraTerm,
    WeightPatch,
    named_weights,
    weights_installed,
)

from .test_lora_oracle import TOL, lora_graph, oracle, samples

pytest.importorskip("peft")
pytestmark = pytest.mark.slow
PEFT, KOHYA = "tiny-sd15-dora-peft.safetensors", "tiny-sd15-dora-kohya.safetensors"


def comfy_weight_decompose(w, diff, dora_scale, strength):
    """ComfyUI's weight_decompose, written out: norm per input channel, strength outside."""
    calc = w + diff
    norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
    calc = calc * (dora_scale / norm)
    return w + strength * (calc - w)


def test_files_read_as_dora(models_dir):
    peft, kohya = load_lora(models_dir / "loras" / PEFT), load_lora(models_dir / "loras" / KOHYA)
    assert peft.format == "peft" and peft.parts == {"unet"} and not peft.skipped
    assert kohya.format == "kohya" and not kohya.skipped
    assert all(isinstance(t, DoraTerm) and t.style == "peft" for t in peft.terms.values())
    assert all(isinstance(t, DoraTerm) and t.style == "comfy" for t in kohya.terms.values())


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_peft_dora_matches_diffusers(engine, models_dir, strength):
    loras = [(PEFT, strength)]
    result = engine.run(lora_graph("tiny-sd15.safetensors", loras), outputs=["ks"])
    got = samples(result)
    expected = oracle(result, "sd15", loras, models_dir)
    plain = samples(engine.run(lora_graph("tiny-sd15.safetensors", []), outputs=["ks"]))
    diff = (got - expected).abs().max().item()
    print(f"DoRA peft strength {strength}: max |ipgraph - diffusers| = {diff:.2e}")
    assert (got - plain).abs().max().item() > 1e-2  # the DoRA does change the image
    assert diff <= TOL
    if strength == 1.0:  # and the magnitudes matter: the same factors as a plain LoRA give another image
        from safetensors.torch import load_file, save_file

        sd = load_file(models_dir / "loras" / PEFT)
        save_file({k: v for k, v in sd.items() if "magnitude" not in k},
                  str(models_dir / "loras" / "test-dora-as-lora.safetensors"))
        as_lora = samples(engine.run(lora_graph("tiny-sd15.safetensors", [("test-dora-as-lora.safetensors", 1.0)]),
                                     outputs=["ks"]))
        assert (as_lora - got).abs().max().item() > 1e-2


def test_kohya_dora_follows_comfyui_weight_decompose(engine, models_dir):
    lora = load_lora(models_dir / "loras" / KOHYA)
    ck = engine.run(lora_graph("tiny-sd15.safetensors", []), outputs=["ckpt"]).outputs["ckpt"]
    unet = ck.model.unet
    params = named_weights(unet)
    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
             "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"]
    for strength in (1.0, 0.5):
        patch, _ = lora_patches(lora, ck.model, None, strength, 0.0)
        for n in names:
            raw = {k: v.float() for k, v in _raw(models_dir, "lora_unet_" + n.replace(".", "_")).items()}
            w = params[n + ".weight"].data.clone()
            rank = raw["lora_down.weight"].shape[0]
            diff = raw["alpha"] / rank * raw["lora_up.weight"] @ raw["lora_down.weight"]
            expected = comfy_weight_decompose(w, diff, raw["dora_scale"], strength)
            with weights_installed(unet, [patch]):
                got = params[n + ".weight"].data.clone()
            assert torch.equal(params[n + ".weight"].data, w)
            assert raw["dora_scale"].shape == (1, w.shape[1])
            assert (got - expected).abs().max().item() <= 1e-6, (n, strength)
            assert (got - w).abs().max().item() > 1e-3


def _raw(models_dir, module):
    from safetensors.torch import load_file

    sd = load_file(models_dir / "loras" / KOHYA)
    return {k[len(module) + 1:]: v for k, v in sd.items() if k.startswith(module + ".")}


def test_kohya_dora_changes_the_image_and_a_b_a_is_exact(engine):
    base = samples(engine.run(lora_graph("tiny-sd15.safetensors", []), outputs=["ks"]))
    got = samples(engine.run(lora_graph("tiny-sd15.safetensors", [(KOHYA, 0.8)]), outputs=["ks"]))
    engine.cache.clear()
    again = samples(engine.run(lora_graph("tiny-sd15.safetensors", []), outputs=["ks"]))
    assert (got - base).abs().max().item() > 1e-2
    assert torch.equal(base, again)


def test_dora_math_both_conventions_and_around_loha():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, generator=g)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    lin = torch.nn.Linear(5, 6, bias=False)
    lin.weight.data = w.clone()

    def installed(term, s):
        with weights_installed(lin, [WeightPatch({"weight": term}, strength_patch=s)]):
            return lin.weight.data.clone()

    m_out = torch.rand(6, generator=g) + 0.5  # peft: per output row, strength inside
    v = w + 0.5 * (up @ down)
    assert torch.allclose(installed(DoraTerm(LoraTerm(up, down), m_out, "peft"), 0.5),
                          m_out[:, None] * v / v.norm(dim=1, keepdim=True), atol=1e-6)
    m_in = torch.rand(1, 5, generator=g) + 0.5  # ComfyUI: per input column, strength outside
    v = w + up @ down
    assert torch.allclose(installed(DoraTerm(LoraTerm(up, down), m_in), 0.3),
                          w + 0.3 * (m_in * v / v.norm(dim=0, keepdim=True) - w), atol=1e-6)
    m_wd_out = torch.rand(6, 1, generator=g) + 0.5  # LyCORIS wd_on_out: per output row, strength outside
    assert torch.allclose(installed(DoraTerm(LoraTerm(up, down), m_wd_out), 1.0),
                          m_wd_out * v / v.norm(dim=1, keepdim=True), atol=1e-6)
    a1, b1, a2, b2 = (torch.randn(s, generator=g) for s in [(6, 2), (2, 5), (6, 2), (2, 5)])
    v = w + (a1 @ b1) * (a2 @ b2)  # LoHa inside DoRA (ComfyUI passes dora_scale to LoHa/LoKr too)
    assert torch.allclose(installed(DoraTerm(LohaTerm(a1, b1, a2, b2), m_in), 1.0),
                          m_in * v / v.norm(dim=0, keepdim=True), atol=1e-6)
    assert installed(DoraTerm(LoraTerm(up, down), m_in), 0.0).equal(w)
    assert torch.equal(lin.weight.data, w)

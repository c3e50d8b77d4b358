"""Variant detection, .bin weights-only loading, plain-sentence errors and the pairing check."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from ipgraph.nodes.ipadapter import (
    IPAdapterFileError,
    check_pairing,
    describe_encoder,
    describe_unet,
    inspect_ipadapter,
    load_clip_vision,
    load_ipadapter,
)
from ipgraph.nodes.ipadapter.encoder import clip_vision_config_from_shapes
from ipgraph.nodes.ipadapter.files import EncoderInfo


@pytest.mark.parametrize(
    "name, variant, arch, dim, layers, enc_input, enc_width, tokens",
    [
        ("base_sd15", "base", "sd15", 32, 16, "image_embeds", 32, 4),
        ("base_sd15_bin", "base", "sd15", 32, 16, "image_embeds", 32, 4),
        ("plus_sd15", "plus", "sd15", 32, 16, "hidden_states", 64, 16),
        ("base_sdxl", "base", "sdxl", 96, 70, "image_embeds", 32, 4),
        ("plus_sdxl", "plus", "sdxl", 96, 70, "hidden_states", 64, 16),
    ],
)
def test_variant_detection(models_dir, name, variant, arch, dim, layers, enc_input, enc_width, tokens):
    _, paths = models_dir
    info = inspect_ipadapter(paths[name])
    assert (info.variant, info.arch, info.cross_attention_dim, info.num_layers) == (
        variant,
        arch,
        dim,
        layers,
    )
    assert (info.encoder_input, info.encoder_width, info.tokens) == (enc_input, enc_width, tokens)
    loaded = load_ipadapter(paths[name])
    assert loaded.info == info
    assert loaded.project(torch.zeros(2, *((50, 64) if enc_input == "hidden_states" else (32,)))).shape == (
        2,
        tokens,
        dim,
    )


def test_bin_equals_safetensors(models_dir):
    _, paths = models_dir
    a, b = load_ipadapter(paths["base_sd15"]), load_ipadapter(paths["base_sd15_bin"])
    assert all(torch.equal(x, y) for x, y in zip(a.to_k_ip + a.to_v_ip, b.to_k_ip + b.to_v_ip, strict=True))
    emb = torch.randn(1, 32)
    assert torch.equal(a.project(emb), b.project(emb))


def test_full_face_and_name_hints(tmp_path, unets):
    """full-face (proj.0/2/3, 257 tokens) from a real-layout file; 'light'/'face' names pick look-alike variants."""
    ip = {
        f"ip_adapter.{2 * j + 1}.to_{kv}_ip.weight": torch.zeros(w, 32)
        for j, w in enumerate(describe_unet(unets["sd15"]).layer_widths)
        for kv in "kv"
    }
    full = {
        "image_proj.proj.0.weight": torch.randn(64, 64),
        "image_proj.proj.0.bias": torch.zeros(64),
        "image_proj.proj.2.weight": torch.randn(32, 64),
        "image_proj.proj.2.bias": torch.zeros(32),
        "image_proj.proj.3.weight": torch.ones(32),
        "image_proj.proj.3.bias": torch.zeros(32),
    }
    save_file({**ip, **full}, str(tmp_path / "ip-adapter-full-face_sd15.safetensors"))
    info = load_ipadapter(tmp_path / "ip-adapter-full-face_sd15.safetensors").info
    assert (info.variant, info.tokens, info.encoder_input, info.encoder_width) == (
        "full-face",
        257,
        "hidden_states",
        64,
    )
    base = {
        "image_proj.proj.weight": torch.randn(128, 32),
        "image_proj.proj.bias": torch.zeros(128),
        "image_proj.norm.weight": torch.ones(32),
        "image_proj.norm.bias": torch.zeros(32),
    }
    save_file({**ip, **base}, str(tmp_path / "ip-adapter_sd15_light.safetensors"))
    assert inspect_ipadapter(tmp_path / "ip-adapter_sd15_light.safetensors").variant == "light"


def test_errors_are_plain_sentences(tmp_path, models_dir):
    _, paths = models_dir
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(IPAdapterFileError, match="could not be read"):
        load_ipadapter(tmp_path / "corrupt.safetensors")
    with pytest.raises(IPAdapterFileError, match="does not exist"):
        inspect_ipadapter(tmp_path / "missing.safetensors")
    save_file({"model.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(IPAdapterFileError, match="not an IP-Adapter file"):
        inspect_ipadapter(tmp_path / "other.safetensors")
    sd = load_file(str(paths["base_sd15"]))
    weird = {k.replace("image_proj.proj.", "image_proj.zzz."): v for k, v in sd.items()}
    save_file(weird, str(tmp_path / "weird.safetensors"))
    with pytest.raises(IPAdapterFileError, match="layout ipgraph does not know"):
        inspect_ipadapter(tmp_path / "weird.safetensors")
    del sd["ip_adapter.5.to_v_ip.weight"]
    save_file(sd, str(tmp_path / "damaged.safetensors"))
    with pytest.raises(IPAdapterFileError, match="damaged"):
        load_ipadapter(tmp_path / "damaged.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bin_is_weights_only(tmp_path, capsys):
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"image_proj": _Evil(), "ip_adapter": {}}, f)
    with pytest.raises(IPAdapterFileError):
        load_ipadapter(tmp_path / "evil.bin")
    assert "code ran" not in capsys.readouterr().out


def test_pairing_messages(models_dir, unets):
    d, paths = models_dir
    plus_xl = inspect_ipadapter(paths["plus_sdxl"])
    wide = describe_encoder(load_clip_vision(paths["clip_vision_wide"]))
    msgs = check_pairing(plus_xl, wide, describe_unet(unets["sd15"]))
    assert msgs == [
        "this adapter needs an image encoder with hidden width 64 but the CLIP vision model given is "
        "hidden width 96, projection 48.",
        "this adapter is for SDXL (70 cross-attention layers, context 96) but the model is SD1.5 (16, 32).",
    ]
    assert (
        check_pairing(
            plus_xl, describe_encoder(load_clip_vision(paths["clip_vision"])), describe_unet(unets["sdxl"])
        )
        == []
    )
    # real widths: a ViT-H plus adapter given bigG, and the SDXL-on-SD1.5 sentence of the brief
    real_plus = plus_xl.__class__(**{**plus_xl.__dict__, "encoder_width": 1280, "cross_attention_dim": 2048})
    (msg,) = check_pairing(real_plus, EncoderInfo(1664, 1280, 224))
    assert msg == (
        "this adapter needs a ViT-H image encoder (hidden width 1280, projection 1024) but the CLIP vision "
        "model given is ViT-bigG (1664/1280)."
    )
    real_unet = describe_unet(unets["sd15"]).__class__("sd15", 16, 768, ())
    assert check_pairing(real_plus, unet=real_unet) == [
        "this adapter is for SDXL (70 cross-attention layers, context 2048) but the model is SD1.5 (16, 768)."
    ]


def test_encoder_config_from_shapes(models_dir):
    """A bare transformers-layout file (no metadata) gives the same config as the one written in metadata."""
    _, paths = models_dir
    sd = load_file(str(paths["clip_vision"]))
    cfg = clip_vision_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    ref = load_clip_vision(paths["clip_vision"]).config
    for k in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "hidden_act",
    ):
        assert getattr(cfg, k) == getattr(ref, k), k
    folder = load_clip_vision(paths["clip_vision_folder"])
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(folder(x).image_embeds, load_clip_vision(paths["clip_vision"])(x).image_embeds)

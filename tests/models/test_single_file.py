import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ipgraph.nodes.models.single_file import (
    CheckpointError,
    detect_arch,
    inspect_checkpoint,
    load_checkpoint,
    load_vae,
    save_checkpoint,
    unet_to_original,
    vae_to_original,
)
from ipgraph.nodes.tiny.sd import build_tiny, write_tiny_models


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _norm(value, n, per_block):
    """Config values compare equal whether written as a scalar, tuple or list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n if per_block else value


def assert_same_model(ckpt, parts):
    assert_same_weights(ckpt.unet, parts["unet"])
    assert_same_weights(ckpt.vae, parts["vae"])
    encoders = [parts["text_encoder"]] + ([parts["text_encoder_2"]] if "text_encoder_2" in parts else [])
    assert len(ckpt.text_encoders) == len(encoders) == len(ckpt.tokenizers)
    for got, want in zip(ckpt.text_encoders, encoders, strict=True):
        assert type(got) is type(want)
        assert_same_weights(got, want)
        for field in (
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "hidden_act",
            "projection_dim",
        ):
            assert getattr(got.config, field) == getattr(want.config, field), field
    for field in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "attention_head_dim",
        "in_channels",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "addition_embed_type",
        "sample_size",
        "use_linear_projection",
        "projection_class_embeddings_input_dim",
        "layers_per_block",
        "addition_time_embed_dim",
    ):
        n = len(parts["unet"].config.block_out_channels)
        per_block = field in ("attention_head_dim", "transformer_layers_per_block")
        got, want = (_norm(c.config[field], n, per_block) for c in (ckpt.unet, parts["unet"]))
        assert got == want, field
    assert ckpt.vae.config.scaling_factor == parts["vae"].config.scaling_factor
    assert (
        ckpt.scheduler_config["beta_schedule"] == "scaled_linear"
        and ckpt.scheduler_config["steps_offset"] == 1
    )


@pytest.mark.parametrize("kind", ["sd15", "sd15-inpaint", "sdxl"])
def test_single_file_round_trip(tiny_models, kind):
    ckpt = load_checkpoint(tiny_models[kind])
    assert ckpt.arch == kind.split("-")[0]
    assert_same_model(ckpt, build_tiny(kind))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_folder_round_trip(tiny_models, kind):
    ckpt = load_checkpoint(tiny_models[f"{kind}-diffusers"])
    assert ckpt.arch == kind
    assert_same_model(ckpt, build_tiny(kind))
    assert ckpt.tokenizers[-1].pad_token == ("!" if kind == "sdxl" else "<|endoftext|>")


def test_sdxl_unet_output_matches(tiny_models):
    """The loaded SDXL UNet computes what the original computes (added time/pooled conditioning included)."""
    got, want = load_checkpoint(tiny_models["sdxl"]).unet, build_tiny("sdxl")["unet"]
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    cond = {
        "text_embeds": torch.randn(1, 32, generator=g),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    with torch.no_grad():
        a = got(x, 500, text, added_cond_kwargs=cond).sample
        b = want(x, 500, text, added_cond_kwargs=cond).sample
    assert torch.equal(a, b)


REAL_SD15 = dict(
    unet=dict(widths=(320, 640, 1280, 1280), cross_dim=768, heads=8, sample_size=64),
    clip_l=(768, 12, 12),
    vae=(128, 256, 512, 512),
)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_layout_is_inferred(arch):
    """Real SD1.5/SDXL sizes (built on the meta device, no memory): configs come back from shapes alone."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ipgraph.nodes.models.single_file import (
        SD15_CLIP_PREFIX,
        SDXL_CLIP_PREFIX,
        SDXL_OPENCLIP_PREFIX,
        UNET_PREFIX,
        VAE_PREFIX,
        clip_to_original,
        convert_original,
        open_clip_to_original,
    )
    from ipgraph.nodes.tiny.sd import (
        SDXL_VAE_SCALING,
        clip_text_config,
        sd15_unet_config,
        sdxl_unet_config,
        vae_config,
    )

    clip_l = clip_text_config(768, 12, 12, "quick_gelu", 768)
    with init_empty_weights():
        if arch == "sd15":
            unet_cfg = sd15_unet_config(widths=(320, 640, 1280, 1280), cross_dim=768, heads=8, sample_size=64)
            encoders = [CLIPTextModel(clip_l)]
        else:
            unet_cfg = sdxl_unet_config(
                widths=(320, 640, 1280), cross_dim=2048, pooled_dim=1280, time_dim=256, sample_size=128
            )
            unet_cfg["attention_head_dim"] = (5, 10, 20)
            encoders = [
                CLIPTextModel(clip_l),
                CLIPTextModelWithProjection(clip_text_config(1280, 32, 20, "gelu", 1280)),
            ]
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_config(widths=(128, 256, 512, 512), layers=2))
    tensors = {UNET_PREFIX + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    if arch == "sd15":
        tensors |= {SD15_CLIP_PREFIX + k: v for k, v in clip_to_original(encoders[0]).items()}
    else:
        tensors |= {SDXL_CLIP_PREFIX + k: v for k, v in clip_to_original(encoders[0]).items()}
        tensors |= {SDXL_OPENCLIP_PREFIX + k: v for k, v in open_clip_to_original(encoders[1]).items()}
    conv = convert_original(tensors, {})  # no ipgraph metadata: the real models' head conventions apply
    assert conv.arch == arch
    cfg = conv.unet[0]
    for field in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "cross_attention_dim",
        "use_linear_projection",
        "layers_per_block",
        "sample_size",
    ):
        assert _norm(cfg[field], 0, False) == _norm(unet.config[field], 0, False), field
    n = len(cfg["block_out_channels"])
    for field in ("attention_head_dim", "transformer_layers_per_block"):
        assert _norm(cfg[field], n, True) == _norm(unet.config[field], n, True), field
    if arch == "sdxl":
        assert cfg["addition_time_embed_dim"] == 256 and cfg["projection_class_embeddings_input_dim"] == 2816
    assert (
        list(conv.vae[0]["block_out_channels"]) == [128, 256, 512, 512]
        and conv.vae[0]["layers_per_block"] == 2
    )
    assert conv.vae[0]["scaling_factor"] == (SDXL_VAE_SCALING if arch == "sdxl" else 0.18215)
    for (cls, te_cfg, _sd), want in zip(conv.text_encoders, encoders, strict=True):
        assert cls is type(want)
        for field in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "projection_dim",
        ):
            assert getattr(te_cfg, field) == getattr(want.config, field), field


def test_cross_attention_layer_counts(tiny_models):
    for kind, count in (("sd15", 16), ("sdxl", 70)):
        unet = load_checkpoint(tiny_models[kind]).unet
        assert sum(name.endswith("attn2") for name, _ in unet.named_modules()) == count


def test_text_encoders_agree_between_file_and_folder(tiny_models):
    a, b = load_checkpoint(tiny_models["sdxl"]), load_checkpoint(tiny_models["sdxl-diffusers"])
    for i in range(2):
        ids = a.tokenizers[i](
            "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        oa = a.text_encoders[i](ids, output_hidden_states=True)
        ob = b.text_encoders[i](ids, output_hidden_states=True)
        assert torch.equal(oa.hidden_states[-2], ob.hidden_states[-2])
        assert torch.equal(oa[0], ob[0])


def test_diffusers_reads_our_single_file(tiny_models):
    """Independent check of the writer: diffusers' own single-file loader gets the same weights."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(
        str(tiny_models["sdxl"]), config=str(tiny_models["sdxl-diffusers"]), local_files_only=True
    )
    parts = build_tiny("sdxl")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(pipe, name), parts[name])


def test_original_layout_key_names(tiny_models):
    parts = build_tiny("sd15")
    unet = unet_to_original(parts["unet"].state_dict(), parts["unet"].config)
    for k in (
        "input_blocks.0.0.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.0.op.weight",
        "middle_block.1.proj_in.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.11.0.skip_connection.weight",
        "time_embed.0.weight",
    ):
        assert k in unet, k
    vae = vae_to_original(parts["vae"].state_dict(), parts["vae"].config)
    assert vae["encoder.mid.attn_1.q.weight"].ndim == 4 and "decoder.up.3.upsample.conv.weight" in vae
    assert "encoder.conv_in.weight" in vae


def test_detect_arch_from_keys_not_names(tiny_models, tmp_path):
    misleading = tmp_path / "sdxl-model.safetensors"
    shutil.copy(tiny_models["sd15"], misleading)
    assert detect_arch(misleading) == "sd15"
    assert detect_arch(tiny_models["sdxl"]) == "sdxl"
    assert inspect_checkpoint(tiny_models["sd15-inpaint"]).in_channels == 9
    assert inspect_checkpoint(tiny_models["sd15"]).in_channels == 4
    assert detect_arch(tiny_models["sdxl-diffusers"]) == "sdxl"
    assert inspect_checkpoint(tiny_models["sdxl-vae"]).kind == "vae"


def test_corrupt_truncated_and_unknown_files(tiny_models, tmp_path):
    data = tiny_models["sd15"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 10)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"some.layer.weight": torch.zeros(2, 2)}, str(unknown))
    for bad in (truncated, garbage, unknown, tmp_path / "missing.safetensors", tmp_path / "model.onnx"):
        if bad.suffix == ".onnx":
            bad.write_bytes(b"x")
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        assert bad.name in str(err.value)
    with pytest.raises(CheckpointError):
        detect_arch(truncated)


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/ipgraph-pickle-ran", "w"))


def test_pickles_load_weights_only(tiny_models, tmp_path):
    from safetensors.torch import load_file

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": load_file(str(tiny_models["sd15"]))}, plain)
    assert_same_weights(load_checkpoint(plain).unet, build_tiny("sd15")["unet"])

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"x": _Evil()}}))
    with pytest.raises(CheckpointError, match="more than plain tensors"):
        load_checkpoint(evil)
    import os

    assert not os.path.exists("/tmp/ipgraph-pickle-ran")


def test_load_vae_formats(tiny_models):
    want = build_tiny("sdxl")["vae"]
    original = load_vae(tiny_models["sdxl-vae"])
    assert_same_weights(original, want)
    assert original.config.scaling_factor == 0.13025
    diffusers_named = load_vae(tiny_models["sdxl-diffusers"] / "vae" / "diffusion_pytorch_model.safetensors")
    assert_same_weights(diffusers_named, want)
    assert diffusers_named.config.scaling_factor == 0.13025  # from the config.json beside it
    assert_same_weights(load_vae(tiny_models["sdxl-diffusers"]), want)
    assert_same_weights(load_vae(tiny_models["sd15"]), build_tiny("sd15")["vae"])  # VAE of a full checkpoint


def test_written_bytes_are_deterministic_and_writes_idempotent(tiny_models, tmp_path):
    parts = build_tiny("sd15")
    again = tmp_path / "again.safetensors"
    save_checkpoint(again, parts["unet"], parts["vae"], (parts["text_encoder"],))
    assert again.read_bytes() == tiny_models["sd15"].read_bytes()
    mtimes = {k: p.stat().st_mtime_ns for k, p in tiny_models.items()}
    write_tiny_models(tiny_models["sd15"].parent.parent)
    assert mtimes == {k: p.stat().st_mtime_ns for k, p in tiny_models.items()}


@pytest.mark.slow
def test_tiny_sd15_runs_deterministically_in_a_diffusers_pipeline():
    """The tiny parts form a working diffusers pipeline (speed is measured in bench/, not asserted here)."""
    from ipgraph.nodes.tiny.sd import _pipeline

    pipe = _pipeline("sd15", build_tiny("sd15"))
    pipe.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe("a cat", num_inference_steps=20, height=64, width=64, output_type="pt",
                    generator=generator).images

    first = run()
    assert first.shape == (1, 3, 64, 64) and torch.equal(first, run())

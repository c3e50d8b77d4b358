"""Small deterministic random-weight models in the REAL SD1.5 / SDXL diffusers architectures.

No real weights can be downloaded here, so tests and the demo use these. They keep the real block layout
(SD1.5: 16 cross-attention layers, SDXL: 70, so h94-layout IP-Adapter files index the same layers) and
are written in the same file formats users download (original single-file layout and diffusers folders),
then loaded through the same code path as real files. Widths are multiples of 32 with one attention head so
that a 20-step 64 px image takes about half a second on one CPU core. The "mid" SD1.5 (~100M
parameters, 8 heads as in the real model) is for benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..models.configs import SD15_VAE_SCALING, SDXL_VAE_SCALING, scheduler_config
from ..models.single_file import save_checkpoint, save_vae
from ..models.tokenizer import MAX_LENGTH, VOCAB_SIZE, clip_tokenizer
from .common import atomic_write, seeded

# Bump when anything below changes what gets written: write_tiny_models then regenerates the files.
GENERATOR_VERSION = 1
KINDS = ("sd15", "sd15-inpaint", "sdxl", "sd15-mid")

def clip_text_config(hidden: int, layers: int, heads: int, act: str, projection_dim: int) -> CLIPTextConfig:
    """CLIP text config with the real vocabulary, 77 positions and CLIP's special token ids."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        hidden_act=act,
        projection_dim=projection_dim,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def sd15_unet_config(widths=(32, 64, 64, 64), cross_dim=32, heads=1, in_channels=4, sample_size=8) -> dict:
    """SD1.5 UNet layout: CrossAttnDown x3 + Down, 2 layers per block -> 16 cross-attention layers."""
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(widths),
        layers_per_block=2,
        cross_attention_dim=cross_dim,
        attention_head_dim=heads,  # diffusers' legacy name: this is the number of heads
        norm_num_groups=32,
    )


def sdxl_unet_config(widths=(32, 64, 64), cross_dim=96, pooled_dim=32, time_dim=8, sample_size=8) -> dict:
    """SDXL UNet layout: Down + CrossAttnDown x2 with depths 2/10 (mid 10) -> 70 cross-attention layers."""
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(widths),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=cross_dim,
        attention_head_dim=(1, 1, 1),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
        norm_num_groups=32,
    )


def vae_config(widths=(32, 32, 64, 64), scaling_factor=SD15_VAE_SCALING, layers=1) -> dict:
    """AutoencoderKL with 4 blocks (downsample 8) and 4 latent channels, like SD's VAE but narrow."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def build_tiny(kind: str = "sd15") -> dict:
    """Build the diffusers/transformers objects of a tiny model in memory (fresh objects each call).

    kind: "sd15", "sd15-inpaint" (9 input channels), "sdxl", or "sd15-mid" (~100M parameters, for
    benchmarks). Returns dict(unet, vae, text_encoder, tokenizer, [text_encoder_2, tokenizer_2],
    scheduler_config). Same weights on every call and every run.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {KINDS}")
    if kind == "sdxl":
        te1 = clip_text_config(32, 2, 1, "quick_gelu", 32)
        te2 = clip_text_config(64, 2, 1, "gelu", 32)  # different hidden size; projection != hidden
        unet_cfg = sdxl_unet_config(
            cross_dim=te1.hidden_size + te2.hidden_size, pooled_dim=te2.projection_dim
        )
        tok1, tok2 = clip_tokenizer(), clip_tokenizer("!")
        return dict(
            unet=seeded(10, lambda: UNet2DConditionModel(**unet_cfg)),
            vae=seeded(11, lambda: AutoencoderKL(**vae_config(scaling_factor=SDXL_VAE_SCALING))),
            text_encoder=seeded(12, lambda: CLIPTextModel(te1)),
            tokenizer=tok1,
            text_encoder_2=seeded(13, lambda: CLIPTextModelWithProjection(te2)),
            tokenizer_2=tok2,
            scheduler_config=scheduler_config("sdxl"),
        )
    if kind == "sd15-mid":
        te = clip_text_config(256, 6, 4, "quick_gelu", 256)
        unet_cfg = sd15_unet_config(widths=(96, 192, 384, 384), cross_dim=256, heads=8, sample_size=64)
        vae_cfg = vae_config(widths=(32, 64, 128, 128), layers=2)
    else:
        te = clip_text_config(32, 2, 1, "quick_gelu", 32)
        unet_cfg = sd15_unet_config(in_channels=9 if kind == "sd15-inpaint" else 4)
        vae_cfg = vae_config()
    return dict(
        unet=seeded(0, lambda: UNet2DConditionModel(**unet_cfg)),
        vae=seeded(1, lambda: AutoencoderKL(**vae_cfg)),
        text_encoder=seeded(2, lambda: CLIPTextModel(te)),
        tokenizer=clip_tokenizer(),
        scheduler_config=scheduler_config("sd15"),
    )


def _pipeline(kind: str, parts: dict):
    """A diffusers pipeline object holding the parts, used only to save a standard diffusers folder."""
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if kind == "sdxl":
        return StableDiffusionXLPipeline(
            vae=parts["vae"],
            text_encoder=parts["text_encoder"],
            text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"],
            tokenizer_2=parts["tokenizer_2"],
            unet=parts["unet"],
            scheduler=EulerDiscreteScheduler.from_config(parts["scheduler_config"]),
        )
    return StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=PNDMScheduler.from_config(parts["scheduler_config"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_model_paths(models_dir: Path, include_mid: bool = False) -> dict[str, Path]:
    """Where write_tiny_models puts each file, by name."""
    ck, vae = Path(models_dir) / "checkpoints", Path(models_dir) / "vae"
    paths = {
        "sd15": ck / "tiny-sd15.safetensors",
        "sd15-inpaint": ck / "tiny-sd15-inpaint.safetensors",
        "sdxl": ck / "tiny-sdxl.safetensors",
        "sd15-diffusers": ck / "tiny-sd15-diffusers",
        "sdxl-diffusers": ck / "tiny-sdxl-diffusers",
        "sd15-vae": vae / "tiny-sd15-vae.safetensors",
        "sdxl-vae": vae / "tiny-sdxl-vae.safetensors",
    }
    if include_mid:
        paths["sd15-mid"] = ck / "mid-sd15.safetensors"
    return paths


def write_tiny_models(models_dir: Path, include_mid: bool = False) -> dict[str, Path]:
    """Write the tiny models into a ComfyUI-like models folder; returns name -> path.

    Idempotent: files already written by this GENERATOR_VERSION are skipped (a marker file in
    ``checkpoints/`` records the version; a different version rewrites everything). Output bytes are the
    same on every run. ``include_mid`` also writes the ~100M-parameter benchmark model (~400 MB).
    """
    models_dir = Path(models_dir)
    paths = tiny_model_paths(models_dir, include_mid)
    marker = models_dir / "checkpoints" / ".ipgraph-tiny-models.json"
    stamp = {"generator_version": GENERATOR_VERSION}
    fresh = marker.exists() and json.loads(marker.read_text() or "{}") == stamp
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)

    def needed(name: str) -> bool:
        return not (fresh and paths[name].exists())

    built: dict[str, dict] = {}

    def parts(kind: str) -> dict:
        if kind not in built:
            built[kind] = build_tiny(kind)
        return built[kind]

    for kind in ("sd15", "sd15-inpaint", "sdxl", "sd15-mid"):
        if kind in paths and needed(kind):
            atomic_write(paths[kind], lambda tmp, k=kind: save_checkpoint(tmp, **_components(parts(k))))
    for arch in ("sd15", "sdxl"):
        if needed(f"{arch}-vae"):
            atomic_write(paths[f"{arch}-vae"], lambda tmp, a=arch: save_vae(tmp, parts(a)["vae"]))
        if needed(f"{arch}-diffusers"):
            atomic_write(
                paths[f"{arch}-diffusers"],
                lambda tmp, a=arch: _pipeline(a, parts(a)).save_pretrained(tmp, safe_serialization=True),
            )
    if not fresh:
        atomic_write(marker, lambda tmp: tmp.write_text(json.dumps(stamp)))
    return paths


def _components(parts: dict) -> dict:
    encoders = (parts["text_encoder"],) + ((parts["text_encoder_2"],) if "text_encoder_2" in parts else ())
    return dict(unet=parts["unet"], vae=parts["vae"], text_encoders=encoders)


def ensure_tiny_models(models_dir: Path, include_mid: bool = False) -> dict[str, Path]:
    """Create the tiny models if missing or stale (cheap when they are already there)."""
    return write_tiny_models(models_dir, include_mid)

"""Small deterministic random-weight CLIP vision encoders and IP-Adapters in the REAL file layouts.

No real weights can be downloaded here, so tests and the demo use these. They are written exactly as users
receive the real files (transformers-layout CLIP vision safetensors, a diffusers ``image_encoder`` folder,
h94 ``image_proj.*``/``ip_adapter.*`` safetensors and a nested ``.bin``) and are read back through the same
code as real files. Sizes: 224 px input, patch 32 (7×7+1 = 50 tokens), one head, widths multiples of 32.

Two encoders of different widths exist so pairing errors can be exercised: ``tiny-clip-vision`` (hidden 64,
projection 32; the adapters are made for it) and ``tiny-clip-vision-wide`` (hidden 96, projection 48).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..ipadapter.projection import diffusers_to_h94
from .common import atomic_write, seeded

TINY_ENCODER = dict(hidden_size=64, intermediate_size=128, projection_dim=32, num_hidden_layers=2)
TINY_ENCODER_WIDE = dict(hidden_size=96, intermediate_size=192, projection_dim=48, num_hidden_layers=2)
_COMMON = dict(num_attention_heads=1, image_size=224, patch_size=32, hidden_act="gelu", layer_norm_eps=1e-5)


def tiny_clip_vision(wide: bool = False):
    """The tiny ``CLIPVisionModelWithProjection`` in memory (same weights every call)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(**(TINY_ENCODER_WIDE if wide else TINY_ENCODER), **_COMMON)
    return (
        seeded(101 if wide else 100, lambda: CLIPVisionModelWithProjection(cfg))
    )


def _save_encoder_file(model, dest: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    keep = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", *_COMMON)
    config = {k: getattr(model.config, k) for k in keep}
    atomic_write(dest, lambda tmp: save_file(sd, str(tmp), metadata={"config": json.dumps(config)}))


def write_tiny_clip_vision(models_dir: str | Path) -> dict[str, Path]:
    """Write ``clip_vision/tiny-clip-vision.safetensors``, ``tiny-clip-vision-wide.safetensors`` and the
    diffusers-style folder ``clip_vision/tiny-clip-vision-image_encoder/``; returns name -> path."""
    cv = Path(models_dir) / "clip_vision"
    paths = {
        "clip_vision": cv / "tiny-clip-vision.safetensors",
        "clip_vision_wide": cv / "tiny-clip-vision-wide.safetensors",
        "clip_vision_folder": cv / "tiny-clip-vision-image_encoder",
    }
    model = tiny_clip_vision()
    _save_encoder_file(model, paths["clip_vision"])
    _save_encoder_file(tiny_clip_vision(wide=True), paths["clip_vision_wide"])
    atomic_write(
        paths["clip_vision_folder"], lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True)
    )
    return paths


def tiny_ipadapter_state(unet, variant: str, seed: int, wide: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """An h94-layout ``{"image_proj": ..., "ip_adapter": ...}`` sized for ``unet`` and the tiny encoder
    (``wide``: the wide one, the project's ViT-bigG stand-in). ``variant``: base, plus or full-face."""
    from diffusers.models.embeddings import (
        ImageProjection,
        IPAdapterFullImageProjection,
        IPAdapterPlusImageProjection,
    )

    from ..ipadapter.files import describe_unet

    info = describe_unet(unet)
    dim = info.cross_attention_dim
    enc = TINY_ENCODER_WIDE if wide else TINY_ENCODER

    def make():
        if variant == "base":
            proj = ImageProjection(
                cross_attention_dim=dim,
                image_embed_dim=enc["projection_dim"],
                num_image_text_embeds=4,
            )
        elif variant == "full-face":
            proj = IPAdapterFullImageProjection(cross_attention_dim=dim, image_embed_dim=enc["hidden_size"])
        elif variant == "plus":
            proj = IPAdapterPlusImageProjection(
                embed_dims=enc["hidden_size"],
                output_dims=dim,
                hidden_dims=64,
                heads=1,
                num_queries=16,
            )
        else:
            raise ValueError(f"tiny adapters are base, plus or full-face, not {variant!r}")
        # LayerNorm weights start at exactly 1/0; randomise them so a wrong key mapping cannot go unnoticed
        for name, p in proj.named_parameters():
            if p.ndim == 1:
                p.data.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        ip = {}
        for j, width in enumerate(info.layer_widths):
            for kind in ("to_k_ip", "to_v_ip"):
                ip[f"{2 * j + 1}.{kind}.weight"] = (
                    torch.nn.Linear(dim, width, bias=False).weight.detach().clone()
                )
        return proj, ip

    proj, ip = seeded(seed, make)
    image_proj = {k: v.detach().contiguous() for k, v in diffusers_to_h94(variant, proj.state_dict()).items()}
    return {"image_proj": image_proj, "ip_adapter": ip}


def write_tiny_ipadapters(models_dir: str | Path, unets: dict) -> dict[str, Path]:
    """Write ``ipadapter/tiny-ip-adapter_{arch}.safetensors`` and ``tiny-ip-adapter-plus_{arch}.safetensors`` for
    each ``arch -> UNet2DConditionModel`` given, plus ``tiny-ip-adapter_sd15.bin`` (nested dict, the same
    weights as the sd15 base file) when sd15 is given; returns name -> path."""
    from safetensors.torch import save_file

    folder = Path(models_dir) / "ipadapter"
    paths: dict[str, Path] = {}
    for arch, unet in unets.items():
        for v_idx, variant in enumerate(("base", "plus")):
            state = tiny_ipadapter_state(unet, variant, seed=200 + 10 * v_idx + (5 if arch == "sdxl" else 0))
            flat = {f"{part}.{k}": t for part, d in state.items() for k, t in d.items()}
            stem = "tiny-ip-adapter" if variant == "base" else "tiny-ip-adapter-plus"
            dest = folder / f"{stem}_{arch}.safetensors"
            atomic_write(dest, lambda tmp, flat=flat: save_file(flat, str(tmp)))
            paths[f"{variant}_{arch}"] = dest
            if arch == "sd15" and variant == "base":
                bin_dest = folder / "tiny-ip-adapter_sd15.bin"
                atomic_write(bin_dest, lambda tmp, state=state: torch.save(state, str(tmp)))
                paths["base_sd15_bin"] = bin_dest
    return paths


# Unified-loader preset files: (file stem, variant, wide encoder, archs, seed). The file names follow the h94
# ones only for the look-alike layouts that names separate (light, plus-face, composition); everything else
# (base model, encoder width) is read from the weights.
PRESET_FILES = (
    ("tiny-ip-adapter_sd15_light", "base", False, ("sd15",), 230),
    ("tiny-ip-adapter_vit-G", "base", True, ("sd15", "sdxl"), 232),
    ("tiny-ip-adapter-plus-face", "plus", False, ("sd15", "sdxl"), 240),
    ("tiny-ip-adapter-full-face", "full-face", False, ("sd15",), 250),
    ("tiny-ip-adapter-plus-composition", "plus", False, ("sd15", "sdxl"), 260),
)


def write_tiny_preset_ipadapters(models_dir: str | Path, unets: dict) -> dict[str, Path]:
    """Write the light, ViT-bigG-encoder, plus-face, full-face and composition tiny adapters (safetensors), so
    every IPAdapterUnifiedLoader preset has a file to find; returns name -> path."""
    from safetensors.torch import save_file

    folder = Path(models_dir) / "ipadapter"
    paths: dict[str, Path] = {}
    for stem, variant, wide, archs, seed in PRESET_FILES:
        for arch in archs:
            if arch not in unets:
                continue
            name = f"{stem}.safetensors" if stem.endswith("_light") else f"{stem}_{arch}.safetensors"
            dest = folder / name
            if dest.exists():
                paths[name] = dest
                continue
            state = tiny_ipadapter_state(unets[arch], variant, seed=seed + (5 if arch == "sdxl" else 0), wide=wide)
            flat = {f"{part}.{k}": t for part, d in state.items() for k, t in d.items()}
            atomic_write(dest, lambda tmp, flat=flat: save_file(flat, str(tmp)))
            paths[name] = dest
    return paths

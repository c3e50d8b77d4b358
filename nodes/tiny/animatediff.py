"""Tiny random AnimateDiff motion modules in both layouts users download.

The same weights are written three ways (original-layout ``.ckpt`` pickle of tensors, its ``.safetensors``
conversion, and a diffusers ``MotionAdapter`` folder), so a test can prove the layouts load to the same module.
Widths follow the tiny UNets (SD1.5 32/64/64/64, SDXL 32/64/64); heads and groups are the published modules'
(8, 32). Files:

* ``tiny-mm-sd15-v2.ckpt`` / ``.safetensors`` / ``-diffusers/``: v2 layout (mid-block motion module), 32 frames;
* ``tiny-mm-sd15-v3.safetensors``: v3 layout (no mid block) with an 8-frame positional table (context windows);
* ``tiny-mm-sdxl-beta.safetensors``: the SDXL beta layout (3 blocks), for the SD1.5/SDXL mismatch check.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import MotionAdapter
from safetensors.torch import save_file

from .common import atomic_write, seeded

FOLDER = "animatediff_models"
_SPECS = {  # name -> (widths, mid block, max frames, seed)
    "sd15-v2": ((32, 64, 64, 64), True, 32, 60),
    "sd15-v3": ((32, 64, 64, 64), False, 8, 61),
    "sdxl-beta": ((32, 64, 64), False, 32, 62),
}


def build_tiny_motion_adapter(kind: str) -> MotionAdapter:
    widths, mid, frames, seed = _SPECS[kind]

    def make():
        adapter = MotionAdapter(block_out_channels=widths, motion_layers_per_block=2,
                                motion_transformer_layers_per_block=1, motion_num_attention_heads=8,
                                motion_norm_num_groups=32, motion_max_seq_length=frames, use_motion_mid_block=mid)
        # diffusers zero-initialises proj_out (a fresh module is the identity); random weights make motion visible
        for name, p in adapter.named_parameters():
            if "proj_out" in name:
                p.data.normal_(0, 0.02)
        return adapter

    return seeded(seed, make)


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter names -> guoyww/AnimateDiff's (the inverse of diffusers' converter)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(.*motion_modules\.\d+\.)(.*)", key)
        head, tail = m.group(1), m.group(2)
        tail = (tail.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
                .replace(".norm1.", ".norms.0.").replace(".norm2.", ".norms.1.").replace(".norm3.", ".ff_norm."))
        if tail.endswith("pos_embed.pe"):
            for j in (0, 1):
                out[f"{head}temporal_transformer.{tail.replace('pos_embed.pe', f'attention_blocks.{j}.pos_encoder.pe')}"] = \
                    value.clone()
            continue
        out[f"{head}temporal_transformer.{tail}"] = value
    return out


def write_tiny_motion_modules(models_dir: Path) -> dict[str, Path]:
    """Write the tiny motion modules into ``models_dir/animatediff_models`` (files already there are kept)."""
    folder = Path(models_dir) / FOLDER
    paths = {
        "sd15-v2.ckpt": folder / "tiny-mm-sd15-v2.ckpt",
        "sd15-v2.safetensors": folder / "tiny-mm-sd15-v2.safetensors",
        "sd15-v2-diffusers": folder / "tiny-mm-sd15-v2-diffusers",
        "sd15-v3": folder / "tiny-mm-sd15-v3.safetensors",
        "sdxl-beta": folder / "tiny-mm-sdxl-beta.safetensors",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    adapters = {kind: build_tiny_motion_adapter(kind) for kind in _SPECS}
    original = {kind: {k: v.contiguous() for k, v in to_original_layout(a.state_dict()).items()}
                for kind, a in adapters.items()}
    atomic_write(paths["sd15-v2.ckpt"], lambda tmp: torch.save(original["sd15-v2"], tmp))
    atomic_write(paths["sd15-v2.safetensors"], lambda tmp: save_file(original["sd15-v2"], str(tmp)))
    atomic_write(paths["sd15-v2-diffusers"], lambda tmp: adapters["sd15-v2"].save_pretrained(tmp))
    atomic_write(paths["sd15-v3"], lambda tmp: save_file(original["sd15-v3"], str(tmp)))
    atomic_write(paths["sdxl-beta"], lambda tmp: save_file(original["sdxl-beta"], str(tmp)))
    return paths

"""Tiny random-weight ControlNets for the tests and the demo graphs, in both real file formats.

A ControlNet is built from the tiny UNet the same way real ones start life (diffusers'
``ControlNetModel.from_unet``). Training would move the zero-initialised layers (the hint encoder's last
convolution and the "zero convs" that emit the residuals) away from zero; left at zero the ControlNet would
have no effect at all and the tests could not see it. So those layers get small random values under a fixed
seed: the same bytes on every run.

Each architecture is written twice: a single-file ``.safetensors`` in the ORIGINAL layout (``control_model.*``
keys, as lllyasviel's files) and a diffusers folder (``config.json`` + weights), so both loader paths are used.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Bump when anything below changes what gets written: files of an older version are rewritten.
GENERATOR_VERSION = 1
ARCHS = ("sd15", "sdxl")
# The hint encoder of real ControlNets has 4 widths (16, 32, 96, 256): the original layout then puts its last
# convolution at input_hint_block.14. The tiny one keeps 4 widths (same layout) but narrower.
HINT_CHANNELS = (16, 16, 32, 32)


def build_tiny_controlnet(arch: str = "sd15"):
    """A ControlNetModel for ``build_tiny(arch)``'s UNet (fresh object; same weights on every call)."""
    from diffusers import ControlNetModel

    from .sd import build_tiny

    if arch not in ARCHS:
        raise ValueError(f"unknown ControlNet architecture {arch!r}; expected one of {ARCHS}")
    unet = build_tiny(arch)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(100 + ARCHS.index(arch))
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
        zero_layers = [net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block]
        for layer in zero_layers:  # what training would have done: give the zero layers weights
            torch.nn.init.normal_(layer.weight, std=0.05)
            torch.nn.init.normal_(layer.bias, std=0.02)
    return net.eval().requires_grad_(False)


def tiny_controlnet_paths(models_dir: Path) -> dict[str, Path]:
    folder = Path(models_dir) / "controlnet"
    out = {}
    for arch in ARCHS:
        out[f"{arch}"] = folder / f"tiny-controlnet-{arch}.safetensors"
        out[f"{arch}-diffusers"] = folder / f"tiny-controlnet-{arch}-diffusers"
    return out


def write_tiny_controlnets(models_dir: Path) -> dict[str, Path]:
    """Write (or confirm) the tiny ControlNets into ``models_dir/controlnet``; returns name -> path."""
    import json

    from ..controlnet.model import save_controlnet
    from .common import atomic_write

    paths = tiny_controlnet_paths(models_dir)
    folder = Path(models_dir) / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".ipgraph-tiny-controlnets.json"
    stamp = {"generator_version": GENERATOR_VERSION}
    fresh = marker.exists() and json.loads(marker.read_text() or "{}") == stamp
    for arch in ARCHS:
        if fresh and paths[arch].exists() and paths[f"{arch}-diffusers"].exists():
            continue
        net = build_tiny_controlnet(arch)
        atomic_write(paths[arch], lambda tmp, n=net: save_controlnet(tmp, n))
        atomic_write(paths[f"{arch}-diffusers"], lambda tmp, n=net: n.save_pretrained(tmp, safe_serialization=True))
    if not fresh:
        atomic_write(marker, lambda tmp: tmp.write_text(json.dumps(stamp)))
    return paths

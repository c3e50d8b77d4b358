"""A tiny random-weight Real-ESRGAN x4 (BasicSR's RRDBNet, the layout of RealESRGAN_x4plus.pth: the state dict
under ``params_ema``, keys conv_first / body.N.rdbK.convJ / conv_body / conv_up1 / conv_up2 / conv_hr /
conv_last), written as a weights-only ``.pth`` for the upscale-model tests."""

from __future__ import annotations

from pathlib import Path

import torch

from .common import atomic_write, seeded

TINY_ESRGAN = "tiny-RealESRGAN_x4.pth"


def esrgan_state_dict(nf: int = 32, gc: int = 32, blocks: int = 1) -> dict[str, torch.Tensor]:
    def conv(out_ch: int, in_ch: int, prefix: str, sd: dict) -> None:
        sd[f"{prefix}.weight"] = torch.randn(out_ch, in_ch, 3, 3) * (0.5 / (in_ch * 9) ** 0.5)
        sd[f"{prefix}.bias"] = torch.randn(out_ch) * 0.01

    def make():
        sd: dict[str, torch.Tensor] = {}
        conv(nf, 3, "conv_first", sd)
        for b in range(blocks):
            for r in (1, 2, 3):
                for j in range(5):
                    conv(nf if j == 4 else gc, nf + j * gc, f"body.{b}.rdb{r}.conv{j + 1}", sd)
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            conv(nf, nf, name, sd)
        conv(3, nf, "conv_last", sd)
        return sd

    return seeded(31, make)


def write_tiny_upscale_models(models_dir: Path) -> dict[str, Path]:
    dest = Path(models_dir) / "upscale_models" / TINY_ESRGAN
    if not dest.exists():
        atomic_write(dest, lambda tmp: torch.save({"params_ema": esrgan_state_dict()}, tmp))
    return {"esrgan": dest}

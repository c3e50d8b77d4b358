"""Reading AnimateDiff motion modules from the files users download, and telling their version apart.

Layouts (both hold the same tensors; names differ):

* original (guoyww/AnimateDiff ``mm_sd_v15.ckpt``, ``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, ``mm_sdxl_v10_beta.ckpt``
  and their ``.safetensors`` conversions): ``{down,up}_blocks.i.motion_modules.j.temporal_transformer.
  {norm, proj_in, transformer_blocks.k.{attention_blocks.{0,1}, norms.{0,1}, ff, ff_norm}, proj_out}``, with a
  sinusoidal ``pos_encoder.pe`` ``[1, L, C]`` per attention block. Pickles are read ONLY through
  ``torch.load(weights_only=True)``.
* diffusers ``MotionAdapter``: a folder (``config.json`` + weights) or a single weights file with the names
  diffusers' ``convert_animatediff_checkpoint_to_diffusers`` produces (``attn1/attn2``, ``norm1..3``, ``pos_embed.pe``).

Everything is read from keys and shapes, never from the file name:

* block widths: ``down_blocks.i.motion_modules.0.*norm.weight``; 4 blocks = SD1.5, 3 blocks = SDXL (the beta);
* motion layers per block / transformer layers per motion layer: the indices present;
* maximum frames L: the positional table ``pe`` (24 for v1, 32 for v2/v3/SDXL);
* version: a ``mid_block`` motion module = v2; none and L = 24 = v1; none and L = 32 = v3 (or the SDXL beta).

Not recoverable from shapes: the number of attention heads (``to_q`` is square) and the GroupNorm groups. Every
published motion module uses 8 heads and 32 groups (diffusers' defaults), so those are used; a diffusers folder's
own ``config.json`` wins where present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from safetensors.torch import load_file

from ..core.runtime import file_fingerprint

HEADS = 8
NORM_GROUPS = 32
ARCH_BLOCKS = {4: "sd15", 3: "sdxl"}
ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


class MotionModuleError(ValueError):
    """A file that is not a usable motion module; the message is a plain sentence."""


@dataclass(frozen=True)
class MotionModuleInfo:
    """What a motion module is, read from its keys and shapes."""

    path: str
    layout: str  # original | diffusers
    arch: str  # sd15 | sdxl
    version: str  # v1 | v2 | v3 | sdxl-beta
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    transformer_layers: int
    mid_block: bool
    max_frames: int  # length of the positional table: the longest clip one pass can see

    @property
    def arch_name(self) -> str:
        return ARCH_NAMES[self.arch]

    def adapter_config(self) -> dict:
        """``MotionAdapter(**config)`` for these weights (what ``from_single_file(config=...)`` needs)."""
        return dict(block_out_channels=list(self.block_out_channels), motion_layers_per_block=self.layers_per_block,
                    motion_transformer_layers_per_block=self.transformer_layers,
                    motion_mid_block_layers_per_block=1, motion_transformer_layers_per_mid_block=self.transformer_layers,
                    motion_num_attention_heads=HEADS, motion_norm_num_groups=NORM_GROUPS,
                    motion_max_seq_length=self.max_frames, use_motion_mid_block=self.mid_block)


@dataclass(frozen=True, eq=False)
class MotionModule:
    """A loaded motion module: diffusers' ``MotionAdapter`` (shared read-only) and what it is."""

    adapter: MotionAdapter
    info: MotionModuleInfo

    def cache_nbytes(self) -> int:
        return 0  # held by the model manager


def read_state(path: Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; pickles only through the weights-only loader. ``lazy``: memory-map the file
    (a zip-format pickle's tensors are then read only when touched: inspection reads keys and shapes only)."""
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        data = None
        if lazy:
            try:
                data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) pickle format cannot be memory-mapped
                data = None
        if data is None:
            with open(path, "rb") as f:
                data = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled code refused by weights_only
        raise MotionModuleError(f"{path.name} could not be read as a weights file ({type(exc).__name__}).") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MotionModuleError(f"{path.name} holds no flat table of tensors, so it is not a motion module.")
    return data


def to_diffusers_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename original-layout keys to diffusers' (diffusers' own converter); returns (state, layout)."""
    if any(".temporal_transformer." in k for k in state):
        pe = {k: v for k, v in state.items() if k.endswith("attention_blocks.0.pos_encoder.pe")}
        converted = convert_animatediff_checkpoint_to_diffusers(state)
        for k, v in pe.items():  # keep the positional table: its length is the module's frame limit
            converted[k.replace(".temporal_transformer", "").replace(".attention_blocks.0.pos_encoder", ".pos_embed")] = v
        return converted, "original"
    return dict(state), "diffusers"


def describe(path: str | Path, state: dict[str, torch.Tensor], layout: str, config: dict | None = None
             ) -> MotionModuleInfo:
    """Architecture and version from a diffusers-layout state dict (``config`` = a folder's config.json)."""
    name = Path(path).name
    widths, layers, depth = {}, set(), set()
    for key, value in state.items():
        m = re.match(r"down_blocks\.(\d+)\.motion_modules\.(\d+)\.(norm\.weight|transformer_blocks\.(\d+)\.)", key)
        if m:
            if m.group(3) == "norm.weight":
                widths[int(m.group(1))] = int(value.shape[0])
            layers.add(int(m.group(2)))
            if m.group(4) is not None:
                depth.add(int(m.group(4)))
    if not widths or not any(k.startswith("up_blocks.") for k in state):
        raise MotionModuleError(f"{name} has no AnimateDiff motion-module weights (no down_blocks.*.motion_modules.* "
                                "tensors): it is not a motion module.")
    blocks = len(widths)
    if blocks not in ARCH_BLOCKS or sorted(widths) != list(range(blocks)):
        raise MotionModuleError(f"{name} has motion modules in {blocks} down blocks; AnimateDiff modules have 4 "
                                "(SD1.5) or 3 (SDXL).")
    arch = ARCH_BLOCKS[blocks]
    mid = any(k.startswith("mid_block.motion_modules.") for k in state)
    pe = next((v for k, v in state.items() if k.endswith("pos_embed.pe")), None)
    if config is not None:
        frames = int(config.get("motion_max_seq_length", 32))
    elif pe is not None:
        frames = int(pe.shape[1])
    else:
        frames = 32
    version = "sdxl-beta" if arch == "sdxl" else ("v2" if mid else ("v1" if frames == 24 else "v3"))
    return MotionModuleInfo(str(path), layout, arch, version, tuple(widths[i] for i in range(blocks)),
                            max(layers) + 1, max(depth) + 1 if depth else 1, mid, frames)


_INSPECTED: dict[str, MotionModuleInfo | str] = {}  # file fingerprint -> what it is, or why it is not usable


def inspect_motion_module(path: str | Path) -> MotionModuleInfo:
    """Read a file or folder's keys and shapes and say what it is (raises MotionModuleError).

    Validation asks this before every run; the answer is kept per file fingerprint (path, size, mtime), so an
    unchanged file is read once (a 1.7 GB mm_sd_v15_v2.ckpt, or the tiny one, costs a full unpickling per read)."""
    path = Path(path)
    try:
        key = file_fingerprint(path)
    except OSError:
        key = None
    known = _INSPECTED.get(key) if key is not None else None
    if known is None:
        try:
            known = _inspect_uncached(path)
        except MotionModuleError as exc:
            known = str(exc)
        if key is not None:
            if len(_INSPECTED) >= 64:
                _INSPECTED.pop(next(iter(_INSPECTED)))
            _INSPECTED[key] = known
    if isinstance(known, str):
        raise MotionModuleError(known)
    return known


def _inspect_uncached(path: Path) -> MotionModuleInfo:
    if path.is_dir():
        config = _folder_config(path)
        state = read_state(_folder_weights(path), lazy=True)
        return describe(path, state, "diffusers", config)
    state, layout = to_diffusers_layout(read_state(path, lazy=True))
    return describe(path, state, layout)


def load_motion_module(path: str | Path, dtype: torch.dtype = torch.float32) -> MotionModule:
    """Build diffusers' MotionAdapter from the file's own shapes and load its weights (strict, bar ``pe``)."""
    path = Path(path)
    if path.is_dir():
        config = _folder_config(path)
        state = read_state(_folder_weights(path))
        info = describe(path, state, "diffusers", config)
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        state, layout = to_diffusers_layout(read_state(path))
        info = describe(path, state, layout)
        kwargs = info.adapter_config()
    try:
        adapter = MotionAdapter(**kwargs)
        missing, unexpected = adapter.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise MotionModuleError(f"{path.name} does not fit a MotionAdapter of its own shapes: "
                                f"{str(exc).splitlines()[0]}") from None
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]  # sinusoidal: rebuilt identically
    if missing or unexpected:
        raise MotionModuleError(f"{path.name} is not a complete motion module ({len(missing)} tensors missing, "
                                f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[0]}).")
    torch.nn.Module.to(adapter, dtype=dtype).eval().requires_grad_(False)  # ModelMixin.to warns needlessly
    return MotionModule(adapter, info)


def _folder_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise MotionModuleError(f"{path.name} is a folder without a readable config.json, so it is not a "
                                "diffusers MotionAdapter.") from None


def _folder_weights(path: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise MotionModuleError(f"{path.name} has no diffusion_pytorch_model.safetensors weights.")


def check_fits_unet(info: MotionModuleInfo, unet) -> str | None:
    """A sentence when the motion module cannot serve this UNet (None when it can)."""
    widths = tuple(int(c) for c in unet.config.block_out_channels)
    unet_arch = "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd15"
    if info.arch != unet_arch:
        return (f"this motion module ({info.version}) is for {info.arch_name} but the model is "
                f"{ARCH_NAMES[unet_arch]}; use an {ARCH_NAMES[unet_arch]} motion module.")
    if widths != info.block_out_channels:
        return (f"this motion module's blocks are {list(info.block_out_channels)} wide but the model's are "
                f"{list(widths)}: it was made for a different UNet.")
    return None

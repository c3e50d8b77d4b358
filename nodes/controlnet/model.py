"""ControlNet model code: files (original single-file layout and diffusers folders), the loaded handle, and the
per-step residuals KSampler adds to the UNet (the nodes are in ``nodes.py``).

The math is diffusers' StableDiffusion(XL)ControlNetPipeline, step for step, so the oracle tests can compare
latents: at each step every ControlNet sees the same (CFG-doubled, scheduler-scaled) latent input as the UNet,
the TEXT embeddings only, the hint image in [0, 1] at latent size x 8, and ``conditioning_scale = strength x
keep`` where keep follows diffusers' control_guidance_start/end rule (:meth:`SamplingState.active`). Several
ControlNets (chained ControlNetApply nodes) sum their residuals in application order, as MultiControlNetModel
does. Guess mode is not offered.

IP-Adapter image tokens never reach a ControlNet: IP-Adapter lives in the UNet's attention processors (the
MODEL handle's patches), while a ControlNet is a separate module that KSampler calls with the text embeddings.

Nothing is mutated: ControlNetApply returns new Conditioning objects carrying a :class:`Control`; the loaded
ControlNet is shared read-only by every graph.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from ..core.types import SD15, SDXL, Conditioning, SamplingState
from ..models.single_file import CheckpointError, _instantiate, _read_tensors, unet_to_original

PREFIX = "control_model."  # original (lllyasviel / ldm) layout
META_KEY = "ipgraph"
ARCH_NAMES = {SD15: "SD1.5", SDXL: "SDXL"}


# ------------------------------------------------------------------------------------------------- files
def controlnet_to_original(sd: dict, config) -> dict:
    """diffusers ControlNetModel state dict -> original names (without ``control_model.``).

    The inverse of diffusers' ``convert_controlnet_checkpoint``: the UNet-like part (time embedding, conv_in,
    down and mid blocks) uses the UNet renaming; the hint encoder is ``input_hint_block.{0,2,4,...}``, the
    residual convolutions ``zero_convs.{i}.0`` and ``middle_block_out.0``.
    """
    unet_part, rest = {}, {}
    for key, value in sd.items():
        unet_like = key.startswith(("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block."))
        (unet_part if unet_like else rest)[key] = value
    layout = SimpleNamespace(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                             up_block_types=["UpBlock2D"] * len(config.block_out_channels))
    out = unet_to_original(unet_part, layout)
    n_blocks = len(config.conditioning_embedding_out_channels) * 2 - 2
    for key, value in rest.items():
        if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(weight|bias)", key):
            out[f"input_hint_block.0.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(weight|bias)", key):
            out[f"input_hint_block.{2 * (n_blocks + 1)}.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
            out[f"middle_block_out.0.{m[1]}"] = value
        else:
            raise ValueError(f"no original-layout name for ControlNet weight {key!r}")
    return out


def _hints(config) -> dict:
    """What the weights cannot show: head counts and the SDXL time-embedding width."""
    heads = config.num_attention_heads or config.attention_head_dim
    n = len(config.block_out_channels)
    return {"controlnet_attention_heads": list(heads) if isinstance(heads, (list, tuple)) else [heads] * n,
            "addition_time_embed_dim": config.addition_time_embed_dim}


def save_controlnet(path: Path, net) -> None:
    """Write a ControlNetModel as a single ``.safetensors`` file in the original layout (``control_model.*``)."""
    from safetensors.torch import save_file

    tensors = {PREFIX + k: v.detach().cpu().contiguous().clone()
               for k, v in controlnet_to_original(net.state_dict(), net.config).items()}
    save_file(tensors, str(path), metadata={"format": "pt", META_KEY: json.dumps(_hints(net.config), sort_keys=True)})


def is_controlnet_keys(keys) -> bool:
    return any(k.startswith((PREFIX + "input_hint_block.", "input_hint_block.", "controlnet_cond_embedding."))
               for k in keys)


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def to_diffusers_names(tensors: dict, source) -> dict:
    """Original-layout tensors (with or without ``control_model.``) -> diffusers names; diffusers names pass."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if "controlnet_cond_embedding.conv_in.weight" in tensors:
        return dict(tensors)
    sd = {k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)} or dict(tensors)
    ops = [int(m[1]) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))]
    if not ops or "input_hint_block.0.weight" not in sd:
        raise CheckpointError(f"{source} is not a ControlNet in the original layout (no hint encoder found).")
    out = convert_controlnet_checkpoint(sd, {"layers_per_block": min(ops) - 1})
    for a, b in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for kind in ("weight", "bias"):  # SDXL's added-condition MLP, which the diffusers converter leaves out
            if f"{a}.{kind}" in sd:
                out[f"{b}.{kind}"] = sd[f"{a}.{kind}"]
    missing = sorted(k for k, v in out.items() if v is None)
    if missing:
        raise CheckpointError(f"{source}: the ControlNet weights are incomplete (missing {missing[:3]}).")
    return out


def infer_controlnet_config(sd: dict, hints: dict) -> dict:
    """ControlNetModel config from diffusers-named weights (plus head counts the writer recorded, if any)."""
    n = _count(sd, r"down_blocks\.(\d+)\.")
    widths = [sd[f"down_blocks.{b}.resnets.0.conv2.weight"].shape[0] for b in range(n)]
    depth = [_count(sd, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.") for b in range(n)]
    proj_in = next(v for k, v in sd.items() if k.endswith("attentions.0.proj_in.weight"))
    n_hint = _count(sd, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_widths = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in range(1, n_hint, 2)]
    sdxl = "add_embedding.linear_1.weight" in sd
    heads = hints.get("controlnet_attention_heads") or ([max(1, w // 64) for w in widths] if sdxl else [8] * n)
    cfg = dict(
        in_channels=sd["conv_in.weight"].shape[1],
        conditioning_channels=sd["controlnet_cond_embedding.conv_in.weight"].shape[1],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        block_out_channels=widths,
        layers_per_block=_count(sd, r"down_blocks\.0\.resnets\.(\d+)\."),
        transformer_layers_per_block=[max(d, 1) for d in depth],
        cross_attention_dim=next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")),
        attention_head_dim=heads,
        use_linear_projection=proj_in.ndim == 2,
        conditioning_embedding_out_channels=hint_widths,
    )
    if sdxl:  # the real SDXL time embedding is 256 wide; the split cannot be read from the weights
        cfg.update(addition_embed_type="text_time",
                   addition_time_embed_dim=hints.get("addition_time_embed_dim") or 256,
                   projection_class_embeddings_input_dim=sd["add_embedding.linear_1.weight"].shape[1])
    return cfg


def load_controlnet(path: Path, dtype: torch.dtype = torch.float32):
    """Load a ControlNet: single file (original or diffusers names; ``.safetensors`` or a weights-only
    pickle) or a diffusers folder. The architecture comes from the weights/config, never the name."""
    from diffusers import ControlNetModel

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is not a diffusers ControlNet folder (no config.json).")
        try:
            net = ControlNetModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        except Exception as exc:
            raise CheckpointError(f"{path}: the ControlNet could not be loaded ({str(exc).splitlines()[0]}).") from exc
        return net.eval().requires_grad_(False)
    tensors, meta = _read_tensors(path)
    if not is_controlnet_keys(tensors):
        raise CheckpointError(f"{path} is not a ControlNet file (no hint encoder weights); checkpoints are loaded "
                              "with LoadCheckpoint.")
    hints = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    try:
        sd = to_diffusers_names(tensors, path)
        if (path.parent / "config.json").exists():  # a diffusers weight file beside its config
            cfg = {k: v for k, v in json.loads((path.parent / "config.json").read_text()).items()
                   if not k.startswith("_")}
        else:
            cfg = infer_controlnet_config(sd, hints)
    except (KeyError, ValueError, StopIteration, IndexError) as exc:
        raise CheckpointError(f"{path}: the ControlNet weights are incomplete or malformed ({exc!r}).") from exc
    return _instantiate(lambda: ControlNetModel(**cfg), sd, "ControlNet", path, dtype)


def arch_of(net) -> str:
    return SDXL if net.config.addition_embed_type == "text_time" else SD15


@dataclass(frozen=True, eq=False)
class ControlNetHandle:
    """A loaded ControlNet (diffusers ``ControlNetModel``, owned by the model manager; read-only)."""

    net: Any
    arch: str
    source: str

    @property
    def cross_attention_dim(self) -> int:
        return int(self.net.config.cross_attention_dim)

    def cache_nbytes(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class Control:
    """One ControlNet application, carried by a Conditioning: hint ``[B,3,H,W]`` in [0, 1] (CPU float32),
    strength, the fraction range [start, end] of the schedule and an optional spatial mask ``[B,H,W]``."""

    handle: ControlNetHandle
    hint: torch.Tensor
    strength: float
    start: float
    end: float
    mask: torch.Tensor | None = None
    to_uncond: bool = False  # ComfyUI's control_apply_to_uncond: attached to positive, acts on negative too

    @property
    def model(self):
        """The torch module, so KSampler moves it to the device for sampling."""
        return self.handle.net


# ----------------------------------------------------------------------------------------- sampling side
def prepare_hint(hint: torch.Tensor, latent_hw: tuple[int, int], batch: int) -> torch.Tensor:
    """diffusers' ``prepare_image``: hint at latent size x 8, one per image of the batch (before CFG)."""
    size = (latent_hw[0] * 8, latent_hw[1] * 8)
    if tuple(hint.shape[-2:]) != size:
        hint = F.interpolate(hint, size=size, mode="nearest-exact")
    if hint.shape[0] == 1:
        return hint.repeat_interleave(batch, dim=0)
    if hint.shape[0] != batch:
        raise ValueError(f"the ControlNet hint has {hint.shape[0]} images but the latent batch has {batch}; "
                         "give one hint or one per image")
    return hint


def _mask_residual(res: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = F.interpolate(mask[:, None].to(res), size=res.shape[-2:], mode="bilinear", align_corners=False)
    if m.shape[0] != res.shape[0]:
        m = m.repeat(res.shape[0] // m.shape[0], 1, 1, 1) if res.shape[0] % m.shape[0] == 0 else m[:1]
    return res * m


def _unique(controls) -> list[Control]:
    seen, out = set(), []
    for c in controls:
        if id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


def control_residuals(positive: Conditioning, negative: Conditioning, state: SamplingState, model_input, t,
                      embeds, added, device, dtype):
    """Sum of the active ControlNets' (down residuals, mid residual) for this step, or (None, None).

    A control attached to both conditionings (what ControlNetApplyAdvanced does, and the legacy ControlNetApply
    through ``to_uncond``) runs once on the whole CFG batch,
    exactly as diffusers runs it; one attached to a single side runs on that half and adds zeros to the other.
    """
    batch, cfg = state.batch_size, state.do_cfg
    pos_ids = {id(c) for c in positive.controls}
    neg_ids = {id(c) for c in negative.controls + tuple(c for c in positive.controls if c.to_uncond)} if cfg else set()
    controls = _unique(positive.controls + (negative.controls if cfg else ()))
    down = mid = None
    for control in controls:
        if not state.active(control.start, control.end):
            continue  # diffusers scales its residuals by 0 here: adding zeros changes nothing
        net = control.handle.net
        if net.config.cross_attention_dim != embeds.shape[-1]:
            raise ValueError(f"the ControlNet {Path(control.handle.source).name} does not fit this model's text "
                             f"embeddings (width {net.config.cross_attention_dim} vs {embeds.shape[-1]})")
        if not cfg or (id(control) in pos_ids and id(control) in neg_ids):
            rows, copies = slice(None), 2 if cfg else 1
        else:
            rows, copies = (slice(batch, 2 * batch) if id(control) in pos_ids else slice(0, batch)), 1
        key = ("controlnet_hint", id(control), copies)
        if key not in state.extra:
            hint = prepare_hint(control.hint, state.latent_hw, batch).to(device=device, dtype=net.dtype)
            state.extra[key] = torch.cat([hint] * copies) if copies > 1 else hint
        sub_added = None if added is None else {k: v[rows] for k, v in added.items()}
        d, m = net(model_input[rows, : net.config.in_channels], t, encoder_hidden_states=embeds[rows],
                   controlnet_cond=state.extra[key], conditioning_scale=control.strength, added_cond_kwargs=sub_added,
                   guess_mode=False, return_dict=False)
        if control.mask is not None:
            d, m = [_mask_residual(r, control.mask) for r in d], _mask_residual(m, control.mask)
        if rows != slice(None):  # zeros for the half this control is not attached to
            d, m = [_pad_half(r, rows, batch) for r in d], _pad_half(m, rows, batch)
        if down is None:
            down, mid = list(d), m
        else:
            down, mid = [a + b for a, b in zip(down, d, strict=True)], mid + m
    if down is None:
        return None, None
    return down, mid


def _pad_half(res: torch.Tensor, rows: slice, batch: int) -> torch.Tensor:
    zeros = torch.zeros_like(res)
    return torch.cat([zeros, res]) if rows.start == batch else torch.cat([res, zeros])

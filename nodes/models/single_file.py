"""Read and write Stable Diffusion checkpoints: single-file original layout and diffusers folders.

Writer: the exact inverse of diffusers' single-file converters (``diffusers.loaders.single_file_utils``), so
tiny models are stored exactly as real SD1.5/SDXL files are (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*`` / ``conditioner.embedders.{0,1}.*``).

Reader: detects the architecture from key names and shapes (never the file name), infers the diffusers
configs from the weight shapes, converts with diffusers' converters and loads with nothing fetched.
Attention head counts cannot be read from weights: files written here record them in the safetensors
metadata (``ipgraph`` entry); other files get the real models' convention (SD1.5: 8 heads, SDXL and CLIP:
64-wide heads). Pickle files are opened only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..core.types import SD15, SDXL
from .configs import SD15_VAE_SCALING, SDXL_VAE_SCALING, scheduler_config
from .pickles import PickleFileError, load_weights_only
from .tensorfile import TensorFileError, assign, empty_module, read_safetensors
from .tokenizer import clip_tokenizer

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
META_KEY = "ipgraph"


class CheckpointError(Exception):
    """A model file that cannot be used: corrupt, truncated, unsafe or of an unknown architecture."""


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    arch: str  # SD15 | SDXL
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple
    tokenizers: tuple
    scheduler_config: dict
    source: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What a cheap header read tells: ``kind`` is "checkpoint", "vae" or "diffusers"."""

    arch: str | None  # SD15 | SDXL; None for a VAE file that does not say
    kind: str
    in_channels: int | None  # UNet input channels (9 = inpainting); None for a VAE


# --------------------------------------------------------------------------------------------- writer
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _map_keys(sd: dict, rules: list[tuple[str, str, dict | None]]) -> dict:
    """Rename keys by module prefix; ``rules`` are (diffusers prefix, original prefix, child renames)."""
    out = {}
    for key, value in sd.items():
        for src, dst, renames in rules:
            if key == src or key.startswith(src + "."):
                rest = key[len(src) :]
                for a, b in (renames or {}).items():
                    if rest.startswith("." + a + "."):
                        rest = "." + b + rest[len(a) + 1 :]
                        break
                out[dst + rest] = value
                break
        else:
            raise ValueError(f"no original-layout name for {key!r}")
    return out


def unet_to_original(sd: dict, config) -> dict:
    """diffusers UNet2DConditionModel state dict -> original ``model.diffusion_model`` names (no prefix)."""
    rules = [
        ("time_embedding.linear_1", "time_embed.0", None),
        ("time_embedding.linear_2", "time_embed.2", None),
        ("add_embedding.linear_1", "label_emb.0.0", None),
        ("add_embedding.linear_2", "label_emb.0.2", None),
        ("conv_in", "input_blocks.0.0", None),
        ("conv_norm_out", "out.0", None),
        ("conv_out", "out.2", None),
        ("mid_block.resnets.0", "middle_block.0", _RESNET_TO_LDM),
        ("mid_block.attentions.0", "middle_block.1", None),
        ("mid_block.resnets.1", "middle_block.2", _RESNET_TO_LDM),
    ]
    n_blocks, lpb = len(config.block_out_channels), config.layers_per_block
    n = 1
    for b in range(n_blocks):
        for layer in range(lpb):
            rules += [
                (f"down_blocks.{b}.resnets.{layer}", f"input_blocks.{n}.0", _RESNET_TO_LDM),
                (f"down_blocks.{b}.attentions.{layer}", f"input_blocks.{n}.1", None),
            ]
            n += 1
        if b != n_blocks - 1:
            rules.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{n}.0.op", None))
            n += 1
    n = 0
    for b in range(n_blocks):
        has_attn = "CrossAttn" in config.up_block_types[b]
        for layer in range(lpb + 1):
            rules += [
                (f"up_blocks.{b}.resnets.{layer}", f"output_blocks.{n}.0", _RESNET_TO_LDM),
                (f"up_blocks.{b}.attentions.{layer}", f"output_blocks.{n}.1", None),
            ]
            if layer == lpb and b != n_blocks - 1:
                rules.append(
                    (
                        f"up_blocks.{b}.upsamplers.0.conv",
                        f"output_blocks.{n}.{2 if has_attn else 1}.conv",
                        None,
                    )
                )
            n += 1
    return _map_keys(sd, rules)


def vae_to_original(sd: dict, config) -> dict:
    """diffusers AutoencoderKL state dict -> original VAE names (as in standalone VAE files)."""
    rules = [
        (f"{p}.{a}", f"{p}.{b}", None)
        for p in ("encoder", "decoder")
        for a, b in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"))
    ]
    rules += [("quant_conv", "quant_conv", None), ("post_quant_conv", "post_quant_conv", None)]
    shortcut = {"conv_shortcut": "nin_shortcut"}
    n = len(config.block_out_channels)
    for p in ("encoder", "decoder"):
        rules += [
            (f"{p}.mid_block.resnets.0", f"{p}.mid.block_1", shortcut),
            (f"{p}.mid_block.resnets.1", f"{p}.mid.block_2", shortcut),
            (f"{p}.mid_block.attentions.0", f"{p}.mid.attn_1", _VAE_ATTN_TO_LDM),
        ]
    for i in range(n):
        rules += [
            (f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", None),
            (f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", None),
            (f"decoder.up_blocks.{i}.resnets", f"decoder.up.{n - 1 - i}.block", None),
            (f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv", None),
        ]
    out = _map_keys(sd, rules)
    out = {re.sub(r"(block\.\d+)\.conv_shortcut\.", r"\1.nin_shortcut.", k): v for k, v in out.items()}
    for k, v in out.items():  # original attention uses 1x1 convolutions
        if (
            ".attn_1." in k
            and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
            and v.ndim == 2
        ):
            out[k] = v[:, :, None, None]
    return out


def _text_model_keys(model) -> dict:
    """State dict with ``text_model.`` names whether or not transformers flattened CLIPTextModel."""
    sd = model.state_dict()
    if hasattr(model, "text_model"):
        return dict(sd)
    return {"text_model." + k: v for k, v in sd.items()}


def clip_to_original(model) -> dict:
    """CLIPTextModel (OpenAI CLIP-L) -> ``cond_stage_model.transformer.`` names (no prefix)."""
    return {k: v for k, v in _text_model_keys(model).items() if not k.endswith("position_ids")}


def open_clip_to_original(model) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP names (``conditioner.embedders.1.model.``, no prefix):
    q/k/v fused into ``in_proj``, ``text_projection`` stored transposed."""
    out = {}
    sd = _text_model_keys(model)
    fixed = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for k, v in sd.items():
        if k in fixed:
            out[fixed[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k):
            i, mod, kind = m.groups()
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if mod.endswith("q_proj"):
                    parts = [sd[f"text_model.encoder.layers.{i}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                    out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts, 0)
            else:
                out[f"transformer.resblocks.{i}.{layer_names[mod]}.{kind}"] = v
        elif not k.endswith("position_ids"):
            raise ValueError(f"no OpenCLIP name for {k!r}")
    return out


def _config_hints(unet, vae, text_encoders) -> dict:
    heads = unet.config.num_attention_heads or unet.config.attention_head_dim
    n = len(unet.config.block_out_channels)
    return {
        "unet_attention_heads": list(heads) if isinstance(heads, (list, tuple)) else [heads] * n,
        "unet_sample_size": unet.config.sample_size,
        "text_encoder_heads": [te.config.num_attention_heads for te in text_encoders],
        "vae_scaling_factor": vae.config.scaling_factor,
    }


def _save(path: Path, tensors: dict, meta: dict) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", META_KEY: json.dumps(meta, sort_keys=True)})
    _sort_header_metadata(Path(path))


def _sort_header_metadata(path: Path) -> None:
    """safetensors writes metadata entries in hash order; sort them so equal models give equal bytes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) == len(raw.rstrip(b" ")):
            f.seek(8)
            f.write(text.ljust(size))


def save_checkpoint(path: Path, unet, vae, text_encoders: tuple) -> None:
    """Write a single-file checkpoint in the original SD layout: one text encoder -> SD1.5, two -> SDXL."""
    tensors = {UNET_PREFIX + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()}
    if len(text_encoders) == 1:
        tensors |= {SD15_CLIP_PREFIX + k: v for k, v in clip_to_original(text_encoders[0]).items()}
    else:
        tensors |= {SDXL_CLIP_PREFIX + k: v for k, v in clip_to_original(text_encoders[0]).items()}
        tensors |= {SDXL_OPENCLIP_PREFIX + k: v for k, v in open_clip_to_original(text_encoders[1]).items()}
    _save(Path(path), tensors, _config_hints(unet, vae, text_encoders))


def save_vae(path: Path, vae) -> None:
    """Write a standalone VAE file in the original layout (no ``first_stage_model.`` prefix)."""
    _save(
        Path(path),
        vae_to_original(vae.state_dict(), vae.config),
        {"vae_scaling_factor": vae.config.scaling_factor},
    )


# --------------------------------------------------------------------------------------------- reader
def _header(path: Path) -> tuple[dict[str, tuple], dict]:
    """Key -> shape and metadata, from the safetensors header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, (f.metadata() or {})
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be corrupt or truncated."
        ) from e


def _classify(shapes: dict[str, tuple], path) -> CheckpointInfo:
    keys = shapes.keys()
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        if any(k.startswith(SDXL_OPENCLIP_PREFIX) for k in keys):
            return CheckpointInfo(SDXL, "checkpoint", conv_in[1])
        if any(k.startswith(SD15_CLIP_PREFIX) for k in keys):
            return CheckpointInfo(SD15, "checkpoint", conv_in[1])
        if any(k.startswith("cond_stage_model.model.") for k in keys):
            raise CheckpointError(
                f"{path} is a Stable Diffusion 2.x checkpoint; only SD1.5 and SDXL are supported."
            )
        raise CheckpointError(
            f"{path} has a UNet but no SD1.5 or SDXL text encoder; its architecture is unknown."
        )
    if any(k.startswith(("encoder.down.", "encoder.down_blocks.", VAE_PREFIX + "encoder.")) for k in keys):
        return CheckpointInfo(None, "vae", None)
    raise CheckpointError(f"{path} is not an SD1.5 or SDXL checkpoint (no known UNet or VAE weights found).")


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Cheap architecture check for validation: reads only a safetensors header or a folder's configs."""
    path = Path(path)
    if path.is_dir():
        cfg = _read_json(path / "unet" / "config.json", path)
        arch = SDXL if cfg.get("addition_embed_type") == "text_time" else SD15
        return CheckpointInfo(arch, "diffusers", int(cfg.get("in_channels", 4)))
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path}: only .safetensors files and diffusers folders can be inspected cheaply."
        )
    shapes, meta = _header(path)
    info = _classify(shapes, path)
    if info.kind == "vae" and META_KEY in meta:
        factor = json.loads(meta[META_KEY]).get("vae_scaling_factor")
        arch = SDXL if factor == SDXL_VAE_SCALING else SD15 if factor == SD15_VAE_SCALING else None
        info = CheckpointInfo(arch, "vae", None)
    return info


def detect_arch(path: Path) -> str:
    """ "sd15" or "sdxl" from key names and shapes (header only); CheckpointError if neither."""
    info = inspect_checkpoint(path)
    if info.arch is None:
        raise CheckpointError(
            f"{path} is a VAE file; its architecture (SD1.5 or SDXL) cannot be told from weights."
        )
    return info.arch


def _read_json(path: Path, source) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{source} is missing {Path(path).name}; it is not a complete diffusers folder."
        ) from None
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}).") from e


def _read_tensors(path: Path, dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """All tensors and the metadata of a file: safetensors (views of the mapped file, floating tensors of another
    dtype converted one by one), or a pickle opened weights-only (memory-mapped when it is a zip)."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if suffix == ".safetensors":
        _header(path)  # safetensors' own header check, for its messages
        try:
            return read_safetensors(path, dtype)
        except (TensorFileError, OSError) as e:
            raise CheckpointError(f"{path} could not be read ({e}); it may be corrupt or truncated.") from e
    if suffix in PICKLE_SUFFIXES:
        try:
            obj = load_weights_only(path, "checkpoint", mmap=True)
        except PickleFileError as e:
            raise CheckpointError(str(e)) from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} does not hold a dictionary of tensors.")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    raise CheckpointError(
        f"{path}: unsupported file type {suffix!r} (expected .safetensors or a diffusers folder)."
    )


def _count(keys, pattern: str) -> int:
    """Number of distinct integers captured by ``pattern`` (a regex with one group) over ``keys``."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def _read_hints(meta: dict) -> dict:
    """Config values the writer recorded because weights cannot show them (head counts, scaling)."""
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


def infer_unet_config(sd: dict, arch: str, meta: dict | None = None) -> dict:
    """UNet2DConditionModel config from diffusers-named weights (block widths, depths, cross-attention...)."""
    meta = meta or {}
    n = _count(sd, r"down_blocks\.(\d+)\.")
    widths = [sd[f"down_blocks.{b}.resnets.0.conv2.weight"].shape[0] for b in range(n)]
    depth = [_count(sd, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.") for b in range(n)]
    cross = next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in sd.items() if k.endswith("attentions.0.proj_in.weight"))
    heads = meta.get("unet_attention_heads") or (
        [max(1, w // 64) for w in widths] if arch == SDXL else [8] * n
    )
    cfg = dict(
        sample_size=meta.get("unet_sample_size", 128 if arch == SDXL else 64),
        in_channels=sd["conv_in.weight"].shape[1],
        out_channels=sd["conv_out.weight"].shape[0],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        up_block_types=[
            "CrossAttnUpBlock2D" if _count(sd, rf"up_blocks\.{b}\.attentions\.(\d+)\.") else "UpBlock2D"
            for b in range(n)
        ],
        block_out_channels=widths,
        layers_per_block=_count(sd, r"down_blocks\.0\.resnets\.(\d+)\."),
        transformer_layers_per_block=[max(d, 1) for d in depth],
        cross_attention_dim=cross,
        attention_head_dim=heads,
        use_linear_projection=proj_in.ndim == 2,
    )
    if "add_embedding.linear_1.weight" in sd:
        cfg.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=sd["add_embedding.linear_1.weight"].shape[1],
        )
    return cfg


def infer_vae_config(sd: dict, scaling_factor: float) -> dict:
    """AutoencoderKL config from diffusers-named weights."""
    n = _count(sd, r"encoder\.down_blocks\.(\d+)\.")
    return dict(
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=[sd[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(n)],
        layers_per_block=_count(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        latent_channels=sd["decoder.conv_in.weight"].shape[1],
        scaling_factor=scaling_factor,
    )


def infer_clip_config(sd: dict, heads: int | None, act: str) -> CLIPTextConfig:
    """CLIPTextConfig from ``text_model.*`` weights; ``act``: quick_gelu (OpenAI CLIP-L) or gelu (OpenCLIP)."""
    vocab, hidden = sd["text_model.embeddings.token_embedding.weight"].shape
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(sd, r"text_model\.encoder\.layers\.(\d+)\."),
        num_attention_heads=heads or max(1, hidden // 64),
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        projection_dim=sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else hidden,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def _instantiate(make, sd: dict, what: str, path, dtype):
    """Build a module without random init, then take the weights as they are (strict, by assignment)."""
    model = empty_module(make)
    if isinstance(model, CLIPTextModel) and not hasattr(model, "text_model"):  # transformers >= 5.6 layout
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    try:
        return assign(model, sd, dtype)
    except ValueError as e:  # WeightsMismatch, or a size mismatch
        raise CheckpointError(
            f"{path}: the {what} weights do not fit the inferred architecture ({e})."
        ) from None


@dataclass
class Converted:
    """A single-file checkpoint turned into diffusers-named state dicts plus the configs that fit them."""

    arch: str
    unet: tuple[dict, dict]  # (config, state dict)
    vae: tuple[dict, dict]
    text_encoders: list[tuple[type, CLIPTextConfig, dict]]


def convert_original(tensors: dict, meta: dict, source="checkpoint") -> Converted:
    """Detect the architecture, convert original-layout tensors to diffusers names, infer the configs.

    Works on any tensors with shapes (also ``meta``-device ones), so full-size layouts can be checked cheaply.
    """
    info = _classify({k: tuple(v.shape) for k, v in tensors.items()}, source)
    if info.kind != "checkpoint":
        raise CheckpointError(f"{source} holds only a VAE; load it with a VAE loader, not as a checkpoint.")
    arch, hints = info.arch, _read_hints(meta)
    te_heads = hints.get("text_encoder_heads") or [None, None]
    try:
        first_op = min(
            int(m.group(1))
            for k in tensors
            if (
                m := re.match(
                    r"model\.diffusion_model\.input_blocks"
                    r"\.(\d+)\.0\.op\.",
                    k,
                )
            )
        )
        unet_sd = convert_ldm_unet_checkpoint(
            tensors,
            {"layers_per_block": first_op - 1, "addition_embed_type": "text_time" if arch == SDXL else None},
        )
        n_vae = _count(tensors, r"first_stage_model\.encoder\.down\.(\d+)\.")
        vae_sd = convert_ldm_vae_checkpoint(
            tensors, {"down_block_types": [0] * n_vae, "up_block_types": [0] * n_vae}
        )
        encoders = [(CLIPTextModel, convert_ldm_clip_checkpoint(tensors), te_heads[0], "quick_gelu")]
        if arch == SDXL:
            encoders.append(
                (
                    CLIPTextModelWithProjection,
                    convert_open_clip_checkpoint(None, tensors, prefix=SDXL_OPENCLIP_PREFIX),
                    te_heads[1],
                    "gelu",
                )
            )
        text_encoders = []
        for cls, sd, heads, act in encoders:
            sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
            text_encoders.append((cls, infer_clip_config(sd, heads, act), sd))
        unet_cfg = infer_unet_config(unet_sd, arch, hints)
        if arch == SDXL:  # the added-condition input is [pooled text embedding, 6 sinusoidal time ids]
            pooled = text_encoders[1][1].projection_dim
            unet_cfg["addition_time_embed_dim"] = (
                unet_cfg["projection_class_embeddings_input_dim"] - pooled
            ) // 6
        scaling = hints.get("vae_scaling_factor") or (SDXL_VAE_SCALING if arch == SDXL else SD15_VAE_SCALING)
        vae_cfg = infer_vae_config(vae_sd, scaling)
    except (KeyError, ValueError, StopIteration, IndexError) as e:
        raise CheckpointError(f"{source}: the {arch} weights are incomplete or malformed ({e!r}).") from e
    return Converted(arch, (unet_cfg, unet_sd), (vae_cfg, vae_sd), text_encoders)


def _load_single_file(path: Path, dtype) -> LoadedCheckpoint:
    tensors, meta = _read_tensors(path, dtype)
    conv = convert_original(tensors, meta, path)
    del tensors
    unet = _instantiate(lambda: UNet2DConditionModel(**conv.unet[0]), conv.unet[1], "UNet", path, dtype)
    vae = _instantiate(lambda: AutoencoderKL(**conv.vae[0]), conv.vae[1], "VAE", path, dtype)
    encoders = tuple(
        _instantiate(lambda c=cls, f=cfg: c(f), sd, "text encoder", path, dtype)
        for cls, cfg, sd in conv.text_encoders
    )
    tokenizers = (clip_tokenizer(),) if conv.arch == SD15 else (clip_tokenizer(), clip_tokenizer("!"))
    return LoadedCheckpoint(
        conv.arch, unet, vae, encoders, tokenizers, scheduler_config(conv.arch), str(path)
    )


def _from_pretrained(load, folder: Path, what: str):
    try:
        return load().eval().requires_grad_(False)
    except Exception as e:
        raise CheckpointError(f"{folder}: the {what} could not be loaded ({str(e).splitlines()[0]}).") from e


def _load_folder(folder: Path, dtype) -> LoadedCheckpoint:
    from transformers import CLIPTokenizer

    info = inspect_checkpoint(folder)
    sched = {
        k: v
        for k, v in _read_json(folder / "scheduler" / "scheduler_config.json", folder).items()
        if k != "_diffusers_version"
    }
    unet = _from_pretrained(
        lambda: UNet2DConditionModel.from_pretrained(
            folder / "unet", local_files_only=True, torch_dtype=dtype
        ),
        folder,
        "UNet",
    )
    vae = _from_pretrained(
        lambda: AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=dtype),
        folder,
        "VAE",
    )
    names = [("text_encoder", "tokenizer", CLIPTextModel, "<|endoftext|>")]
    if info.arch == SDXL:
        names.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection, "!"))
    encoders, tokenizers = [], []
    for te, tok, cls, pad in names:
        encoders.append(
            _from_pretrained(
                lambda c=cls, t=te: c.from_pretrained(folder / t, local_files_only=True, dtype=dtype),
                folder,
                te,
            )
        )
        tokenizers.append(
            CLIPTokenizer.from_pretrained(folder / tok, local_files_only=True)
            if (folder / tok).is_dir()
            else clip_tokenizer(pad)
        )
    return LoadedCheckpoint(info.arch, unet, vae, tuple(encoders), tuple(tokenizers), sched, str(folder))


def load_checkpoint(path: Path, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """Load an SD1.5 or SDXL checkpoint (single-file ``.safetensors``, a weights-only pickle, or a
    diffusers folder) with its components in eval mode, gradients off, on ``device`` in ``dtype``."""
    path = Path(path)
    ckpt = _load_folder(path, dtype) if path.is_dir() else _load_single_file(path, dtype)
    if str(device) != "cpu":
        for m in (ckpt.unet, ckpt.vae, *ckpt.text_encoders):
            m.to(device)
    return ckpt


def load_vae(
    path: Path, device="cpu", dtype: torch.dtype = torch.float32, arch: str | None = None
) -> AutoencoderKL:
    """Load a standalone VAE: original-layout file, diffusers-named file (e.g. sdxl-vae-fp16-fix's
    ``diffusion_pytorch_model.safetensors``), a diffusers VAE folder, or the VAE inside a full checkpoint.

    The scaling factor comes from the file's config/metadata when it has one, else from ``arch``
    (SD1.5 0.18215, SDXL 0.13025), else SD1.5's.
    """
    path = Path(path)
    if path.is_dir():
        sub = path / "vae" if (path / "vae" / "config.json").exists() else path
        return _from_pretrained(
            lambda: AutoencoderKL.from_pretrained(sub, local_files_only=True, torch_dtype=dtype), path, "VAE"
        ).to(device)
    tensors, meta = _read_tensors(path, dtype)
    factor = _read_hints(meta).get("vae_scaling_factor")
    if factor is None and (path.parent / "config.json").exists():
        factor = _read_json(path.parent / "config.json", path).get("scaling_factor")
    if factor is None:
        factor = SDXL_VAE_SCALING if arch == SDXL else SD15_VAE_SCALING
    try:
        if any(k.startswith("encoder.down_blocks.") for k in tensors):
            sd = tensors
        else:
            n = _count(tensors, r"(?:first_stage_model\.)?encoder\.down\.(\d+)\.")
            if not n:
                raise CheckpointError(f"{path} holds no VAE weights.")
            sd = convert_ldm_vae_checkpoint(tensors, {"down_block_types": [0] * n, "up_block_types": [0] * n})
        cfg = infer_vae_config(sd, factor)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: the VAE weights are incomplete or malformed ({e!r}).") from e
    return _instantiate(lambda: AutoencoderKL(**cfg), sd, "VAE", path, dtype).to(device)

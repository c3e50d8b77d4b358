"""CLIP vision side of IP-Adapter: loading an encoder file, preprocessing IMAGE tensors, encoding, negatives.

Why PIL for resizing: diffusers' oracle preprocesses with ``CLIPImageProcessor`` (PIL bicubic on uint8
pixels), and torch's bicubic differs from PIL's by more than float noise; using PIL here makes ipgraph's
pixel values match the oracle's.

Unconditional ("negative") embeds follow diffusers' ``prepare_ip_adapter_image_embeds`` (and the training
recipe): base/light -> zeros in place of ``image_embeds`` (projected afterwards like the positive), plus and
full-face -> the encoder's penultimate hidden states for an all-zero pixel tensor in NORMALIZED space (a
mean-grey image, not black).

Encoder files: a diffusers ``image_encoder`` folder (config.json + weights) or a single transformers-layout
``.safetensors`` file as users download them (e.g. ``CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``). A single
file carries no config, so it is recovered as follows: a JSON config in the safetensors metadata under
``"config"`` when present (ipgraph's tiny files write one), otherwise from tensor shapes: hidden size and patch
size from ``patch_embedding``, image size from the number of position embeddings
(``patch·sqrt(positions−1)``), layers from ``encoder.layers.N``, MLP width from ``fc1``, projection from
``visual_projection``. The head count cannot be read from shapes: known widths use their published counts
(768 -> 12, 1024 -> 16 (ViT-L), 1280 -> 16 (ViT-H, 80 per head), 1664 -> 16 (bigG, 104 per head)); other
widths use one head per 64 channels when divisible, else a single head. Activation: ``gelu`` (open_clip
ViT-H/bigG), except ``quick_gelu`` for the OpenAI widths 768/1024.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_MODES = ("center", "none", "pad")
COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average")
_KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def _to_pil(image: torch.Tensor) -> Image.Image:
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr, 3, axis=-1))


def preprocess(image: torch.Tensor, size: int = 224, crop: str = "center") -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` 0..1 -> CLIP pixel values ``[B,3,size,size]``.

    crop: ``center`` (CLIPImageProcessor: shortest side -> size, bicubic, centre crop), ``none`` (squash the
    whole image to size×size), ``pad`` (pad to a square with black, centred, then resize).
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}")
    if image.ndim == 3:
        image = image[None]
    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    out = []
    for img in image:
        pil = _to_pil(img)
        w, h = pil.size
        if crop == "pad":
            side = max(w, h)
            canvas = Image.new("RGB", (side, side))
            canvas.paste(pil, ((side - w) // 2, (side - h) // 2))
            pil = canvas.resize((size, size), Image.BICUBIC)
        elif crop == "none":
            pil = pil.resize((size, size), Image.BICUBIC)
        else:
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(size * long / short)
            nw, nh = (size, new_long) if w <= h else (new_long, size)
            pil = pil.resize((nw, nh), Image.BICUBIC)
            top, left = int((nh - size) / 2.0), int((nw - size) / 2.0)
            pil = pil.crop((left, top, left + size, top + size))
        arr = np.asarray(pil, dtype=np.float32) / 255.0
        out.append(torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy()))
    return torch.stack(out)


def encode(clip_vision_model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder: ``(image_embeds [B,E], penultimate hidden states [B,tokens,W])``."""
    p = next(clip_vision_model.parameters())
    with torch.no_grad():
        out = clip_vision_model(pixel_values.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
    return out.image_embeds, out.hidden_states[-2]


def embeds_for(info, image_embeds: torch.Tensor, penultimate: torch.Tensor) -> torch.Tensor:
    """The encoder output an adapter consumes (``info.encoder_input``)."""
    return image_embeds if info.encoder_input == "image_embeds" else penultimate


def unconditional_embeds(clip_vision_model, info, cond_embeds: torch.Tensor) -> torch.Tensor:
    """Raw negative embeds matching ``cond_embeds`` (one per reference image), as diffusers makes them."""
    if info.encoder_input == "image_embeds":
        return torch.zeros_like(cond_embeds)
    size = int(clip_vision_model.config.image_size)
    zeros = torch.zeros(cond_embeds.shape[0], 3, size, size)
    return encode(clip_vision_model, zeros)[1].to(cond_embeds.dtype)


def combine_embeds(embeds: torch.Tensor, method: str = "concat") -> torch.Tensor:
    """Combine the raw embeds of several reference images (dim 0) before projection.

    concat keeps them (their tokens are concatenated in attention); add = sum; subtract = first minus the
    mean of the others; average = mean; norm average = mean of ``e / ‖e‖`` with the norm over the images
    (dim 0), as ComfyUI_IPAdapter_plus computes it.
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"combine method must be one of {', '.join(COMBINE_METHODS)}")
    if method == "concat" or embeds.shape[0] == 1:
        return embeds
    if method == "add":
        return embeds.sum(0, keepdim=True)
    if method == "subtract":
        return embeds[:1] - embeds[1:].mean(0, keepdim=True)
    if method == "average":
        return embeds.mean(0, keepdim=True)
    return (embeds / torch.norm(embeds, dim=0, keepdim=True)).mean(0, keepdim=True)


def clip_vision_config_from_shapes(shapes: dict[str, tuple]):
    """A ``CLIPVisionConfig`` from transformers-layout tensor shapes (see module docstring for the rules)."""
    from transformers import CLIPVisionConfig

    pre = "vision_model."
    patch = shapes[pre + "embeddings.patch_embedding.weight"]
    hidden, patch_size = int(patch[0]), int(patch[2])
    positions = int(shapes[pre + "embeddings.position_embedding.weight"][0])
    layers = 1 + max(
        int(m.group(1)) for k in shapes if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))
    )
    heads = _KNOWN_HEADS.get(hidden, hidden // 64 if hidden % 64 == 0 else 1)
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=int(shapes[pre + "encoder.layers.0.mlp.fc1.weight"][0]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=patch_size * math.isqrt(positions - 1),
        patch_size=patch_size,
        projection_dim=int(shapes["visual_projection.weight"][0]),
        hidden_act="quick_gelu" if hidden in (768, 1024) else "gelu",
        layer_norm_eps=1e-5,
    )


def load_clip_vision(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a ``CLIPVisionModelWithProjection`` from a single safetensors file or a diffusers folder (CPU, eval).

    Single files are mapped (``tensorfile.read_safetensors``) and the model is built with empty weights that
    take the file's tensors by assignment: no copy, and no random initialisation of a ViT-H only to overwrite it.
    ``dtype``: floating weights are converted as they are read (one tensor at a time).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..models.tensorfile import assign, empty_module, read_header, read_safetensors

    path = Path(path)
    if path.is_dir():
        model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
        return (model if dtype == torch.float32 else model.to(dtype)).eval().requires_grad_(False)
    wanted = ("vision_model.", "visual_projection.")
    _, meta, _ = read_header(path)
    sd, _ = read_safetensors(path, dtype, keep=lambda k: k.startswith(wanted) and not k.endswith("position_ids"))
    if "config" in meta:
        config = CLIPVisionConfig(**json.loads(meta["config"]))
    else:
        config = clip_vision_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    model = empty_module(lambda: CLIPVisionModelWithProjection(config))
    return assign(model, sd, dtype)

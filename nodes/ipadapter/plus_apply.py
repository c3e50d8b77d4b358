"""The one implementation behind every ComfyUI_IPAdapter_plus apply node: reference -> raw embeds -> patch.

Why one function: IPAdapter (simple), Advanced, Batch, Tiled, Embeds, StyleComposition, MS, Precise*,
ClipVisionEnhancer and FromParams differ only in which arguments they fix; the pack funnels them all through
``ipadapter_execute``, and ipgraph funnels them through :func:`make_patch` (IPAdapterApply too), so the same
numbers come out whichever node a user picks.

Order of operations (ipgraph's, diffusers-compatible, documented in nodes.py/patch.py):

1. raw CLIP embeds of the reference (``encode_reference``: chunks of ``encode_batch_size`` images; optional
   ClipVision Enhancer tiles), negatives from ``image_negative``, the given embeds, or diffusers' default;
2. negatives resized to one per reference; ``combine_embeds`` across references unless unfolded (then the
   first negative only);
3. per-layer weights from the weight type (+ ``layer_weights`` text, + precise swaps, + composition image);
   a list of weights is per latent when unfolded, else its first value;
4. one projection call over ``[negatives; positives]`` (diffusers' batch layout) -> an :class:`IPAdapterPatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .clip_vision import ClipVision
from .embeds import ImageEmbeds, _fit, default_negative, embeds_mismatch, encoder_mismatch
from .encoder import combine_embeds, embeds_for, encode, preprocess
from .files import IPAdapterWeights, check_pairing, describe_unet
from .imageprep import merge_hidden_states, merge_image_embeds, split_tiles
from .patch import IPAdapterPatch
from .weights import (
    PRECISE_TYPES,
    alt_layers,
    layer_weights,
    mad_scientist_weights,
    swapped_layers,
)


@dataclass(frozen=True, eq=False)
class IPAdapterPipeline:
    """What IPAdapterUnifiedLoader puts on its IPADAPTER output: the adapter and its matching encoder."""

    adapter: IPAdapterWeights
    clip_vision: ClipVision | None
    preset: str = ""

    @property
    def info(self):
        return self.adapter.info

    def project(self, embeds):
        return self.adapter.project(embeds)

    @property
    def to_k_ip(self):
        return self.adapter.to_k_ip

    @property
    def to_v_ip(self):
        return self.adapter.to_v_ip

    def cache_nbytes(self) -> int:
        return 0


def unpack(ipadapter, clip_vision: ClipVision | None = None) -> tuple[IPAdapterWeights, ClipVision | None]:
    """(adapter, encoder): a connected clip_vision wins over the one a unified loader carries (as in the pack)."""
    if isinstance(ipadapter, IPAdapterPipeline):
        return ipadapter.adapter, clip_vision if clip_vision is not None else ipadapter.clip_vision
    if not isinstance(ipadapter, IPAdapterWeights):
        raise ValueError(f"input ipadapter: expected an IPADAPTER (IPAdapterModelLoader or "
                         f"IPAdapterUnifiedLoader), got {type(ipadapter).__name__}")
    return ipadapter, clip_vision


def need_encoder(cv: ClipVision | None, what: str = "the reference image") -> ClipVision:
    if cv is None:
        raise ValueError(f"input clip_vision: {what} must be encoded and no CLIP vision model is connected; "
                         "connect a CLIPVisionLoader or load the adapter with IPAdapterUnifiedLoader")
    return cv


def _check_image(image, input_name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"input {input_name}: the image batch is empty or not an IMAGE [B,H,W,C] ({shape})")


def _encode_raw(cv: ClipVision, image: torch.Tensor, mask: torch.Tensor | None, batch_size: int):
    """(image_embeds, penultimate) of ``image`` in chunks of ``batch_size`` (0 = all at once); ``mask``
    (already 224², [1 or B, S, S]) multiplies the normalised pixel values, as the pack's encoder does."""
    size = cv.info.image_size
    chunks = torch.split(image, batch_size if batch_size > 0 else image.shape[0])
    embeds, hidden = [], []
    start = 0
    for chunk in chunks:
        pixels = preprocess(chunk, size=size, crop="center")
        if mask is not None:
            m = _fit(mask, image.shape[0])[start:start + chunk.shape[0]]
            pixels = pixels * m[:, None].to(pixels.dtype)
        start += chunk.shape[0]
        e, h = encode(cv.model, pixels)
        embeds.append(e.float().cpu())
        hidden.append(h.float().cpu())
    return torch.cat(embeds), torch.cat(hidden)


def encode_reference(adapter: IPAdapterWeights, cv: ClipVision, image: torch.Tensor, input_name: str = "image",
                     *, batch_size: int = 0, tiles: int = 1, ratio: float = 1.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Raw embeds of ``image`` in the form ``adapter`` consumes.

    ClipVision Enhancer (``tiles`` = k > 1): each image is also cut into k×k tiles that are encoded and merged
    back (imageprep.merge_*); with several images the result is ``ratio·full + (1−ratio)·tiles``, with one image
    the two are kept as two references ``[ratio·full, tiles]`` (to be concatenated or combined later).
    """
    _check_image(image, input_name)
    problem = encoder_mismatch(adapter, cv)
    if problem:
        raise ValueError(f"input clip_vision: {problem}")
    full_e, full_h = _encode_raw(cv, image, mask, batch_size)
    full = embeds_for(adapter.info, full_e, full_h)
    tiles = min(int(tiles), 16)
    if tiles <= 1:
        return full
    parts = split_tiles(image, tiles)
    te, th = zip(*(_encode_raw(cv, p, mask, batch_size) for p in parts), strict=True)
    if adapter.info.encoder_input == "image_embeds":
        split = merge_image_embeds(torch.cat(te), tiles)
    else:
        split = merge_hidden_states(torch.cat(th), tiles)
    if full.shape[0] > 1:
        return full * ratio + split * (1 - ratio)
    return torch.cat([full * ratio, split])


def resize_mask_for_encoder(mask: torch.Tensor, size: int) -> torch.Tensor:
    """IPAdapterEncoder's mask: centre square crop, then bicubic (antialiased) resize to the encoder size."""
    if mask.ndim == 2:
        mask = mask[None]
    if tuple(mask.shape[1:]) == (size, size):
        return mask.float()
    side = min(mask.shape[1:])
    h, w = mask.shape[1:]
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    m = mask[:, top:top + side, left:left + side, None].permute(0, 3, 1, 2).float()
    return F.interpolate(m, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[:, 0]


def negative_for(adapter: IPAdapterWeights, cv: ClipVision | None, cond: torch.Tensor) -> torch.Tensor:
    """diffusers' default negative (zeros / encoder on a zero image); needs the encoder for plus adapters."""
    neg = default_negative(adapter, cv, cond)
    if neg is None:
        raise ValueError(f"input clip_vision: {Path(adapter.info.path).name} (a {adapter.info.variant} adapter) "
                         "makes its negative with the image encoder and none is connected; connect clip_vision "
                         "or a neg_embed")
    return neg


def embeds_tensor(embeds, adapter: IPAdapterWeights, input_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond, uncond or None) of an EMBEDS value, refused with a sentence when it cannot feed ``adapter``."""
    if isinstance(embeds, torch.Tensor):
        embeds = ImageEmbeds(embeds.float(), None, "image_embeds" if embeds.ndim == 2 else "hidden_states")
    if not isinstance(embeds, ImageEmbeds):
        raise ValueError(f"input {input_name}: expected EMBEDS, got {type(embeds).__name__}")
    problem = embeds_mismatch(embeds, adapter)
    if problem:
        raise ValueError(f"input {input_name}: {problem}")
    return embeds.cond.float(), None if embeds.uncond is None else embeds.uncond.float()


def check_model(model, adapter: IPAdapterWeights) -> None:
    problems = check_pairing(adapter.info, unet=describe_unet(model.unet))
    if problems:
        raise ValueError(f"input ipadapter: {Path(adapter.info.path).name} does not fit the model "
                         f"{Path(model.source).name}: {problems[0]} Load an adapter made for it.")


def _project(adapter: IPAdapterWeights, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if batch_size <= 0:
        return adapter.project(x).float().cpu()
    return torch.cat([adapter.project(c).float().cpu() for c in torch.split(x, batch_size)])


def make_patch(model, adapter: IPAdapterWeights, cond: torch.Tensor, uncond: torch.Tensor, *,
               weight=1.0, weight_type: str = "linear", weight_composition: float | None = None,
               combine: str = "concat", start_at: float = 0.0, end_at: float = 1.0,
               embeds_scaling: str = "V only", mask: torch.Tensor | None = None, unfold_batch: bool = False,
               layer_weights_text: str = "", layers: tuple[float, ...] | None = None,
               comp: torch.Tensor | None = None, encode_batch_size: int = 0,
               mask_interpolation: str = "bilinear") -> IPAdapterPatch:
    """Steps 2-4 of the module docstring. ``layers`` (absolute per-layer weights) overrides the weight type."""
    cond, uncond = cond.float(), _fit(uncond.float(), cond.shape[0])
    if combine != "concat" and cond.shape[0] > 1 and not unfold_batch:
        cond = combine_embeds(cond, combine)
        if comp is not None:
            comp = combine_embeds(comp.float(), combine)
        uncond = uncond[:1]
    frames = None
    if isinstance(weight, (list, tuple)):
        if unfold_batch and len(weight) > 1:
            frames, w = tuple(float(x) for x in weight), 1.0
        else:
            w = float(weight[0])
    else:
        w = float(weight)
    arch = model.arch
    if layers is None:
        if layer_weights_text and layer_weights_text.strip():
            layers = mad_scientist_weights(layer_weights_text, w, arch)
        elif weight_type != "linear":
            layers = layer_weights(weight_type, w, arch, weight_composition)
    swap = swapped_layers(weight_type, arch) if weight_type in PRECISE_TYPES else None
    tokens = _project(adapter, torch.cat([uncond, cond]), encode_batch_size)
    comp_tokens = None if comp is None else _project(adapter, comp.float(), encode_batch_size)
    return IPAdapterPatch(adapter, tokens[uncond.shape[0]:], tokens[:uncond.shape[0]], weight=w,
                          layer_weights=layers, start_at=start_at, end_at=end_at, mask=mask,
                          embeds_scaling=embeds_scaling, mask_interpolation=mask_interpolation,
                          unfold_batch=unfold_batch, frame_weights=frames, swap_layers=swap,
                          alt_cond_tokens=comp_tokens, alt_layers=None if comp is None else alt_layers(arch))

"""One IP-Adapter application (``IPAdapterPatch``) and installing a list of them on a UNet for one sampling run.

Why a description plus a context manager: loaded UNets are shared read-only by every branch of every graph,
so the IPAdapterApply node only *describes* its change (a frozen patch carried by a new ModelHandle) and
KSampler installs the patches for the duration of sampling with :func:`installed`, which always puts the
original processors back (exceptions included). Image tokens arrive already projected, so projection is
cached by the engine like any node output; the per-layer image K/V are computed once per install.

Effective weight of layer j: ``layer_weights[j]`` when given (absolute values, e.g. from
:func:`weights.layer_weights` or :func:`weights.instantstyle_weights`), otherwise ``weight`` for every layer.

Embeds scaling (w = the layer's weight, C = the layer's width):

* ``V only``: ``w · Attn(Q, K, V)`` (diffusers' and the paper's λ).
* ``K+V``: ``Attn(Q, w·K, w·V)``.
* ``K+V w/ C penalty``: w ← w·C/1280, then K+V.
* ``K+mean(V) w/ C penalty``: w ← w·C/1280, ``K ← w·K``, ``V ← (V − mean_tok V) + w·mean_tok V``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.patches import patch_installer
from .attention import DecoupledAttnProcessor, LayerTerm
from .files import IPAdapterWeights, cross_attention_names

EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
MASK_INTERPOLATION = ("bilinear", "bicubic", "nearest")


class IPAdapterPatchError(ValueError):
    """A patch that cannot be installed on the given UNet; the message is a plain sentence."""


def _as_tokens(t: torch.Tensor, name: str) -> torch.Tensor:
    """``[T, D]`` or ``[n_images, T, D]`` -> ``[1, n_images·T, D]`` (several images = concatenated tokens)."""
    if t.ndim == 2:
        return t[None]
    if t.ndim == 3:
        return t.reshape(1, -1, t.shape[-1])
    raise IPAdapterPatchError(f"{name} must be [tokens, dim] or [images, tokens, dim], not {list(t.shape)}.")


def _per_image_tokens(t: torch.Tensor, name: str) -> torch.Tensor:
    """``[n_images, T, D]`` kept as batch rows (IPAdapterBatch: one image per latent / video frame)."""
    if t.ndim == 2:
        return t[None]
    if t.ndim == 3:
        return t
    raise IPAdapterPatchError(f"{name} must be [tokens, dim] or [images, tokens, dim], not {list(t.shape)}.")


@dataclass(frozen=True, eq=False)
class IPAdapterPatch:
    """One application of one adapter: weights, projected tokens, weights per layer, range and mask."""

    adapter: IPAdapterWeights
    cond_tokens: torch.Tensor  # [T, D] or [n_images, T, D], already projected
    uncond_tokens: torch.Tensor  # same layout (the negative image / zero-embeds tokens)
    weight: float = 1.0
    layer_weights: tuple[float, ...] | None = None
    start_at: float = 0.0
    end_at: float = 1.0
    mask: torch.Tensor | None = None  # [B or 1, H, W] float 0..1, soft allowed
    embeds_scaling: str = "V only"
    mask_interpolation: str = "bilinear"  # "bicubic" on binary masks reproduces diffusers' ip_adapter_masks
    per_image: bool = False  # [n_images, T, D] tokens: image i guides batch image (video frame) i, the last repeats

    def __post_init__(self):
        if self.embeds_scaling not in EMBEDS_SCALING:
            raise IPAdapterPatchError(f"embeds_scaling must be one of {', '.join(EMBEDS_SCALING)}.")
        if self.mask_interpolation not in MASK_INTERPOLATION:
            raise IPAdapterPatchError(f"mask_interpolation must be one of {', '.join(MASK_INTERPOLATION)}.")
        dim = self.adapter.info.cross_attention_dim
        for name in ("cond_tokens", "uncond_tokens"):
            t = getattr(self, name)
            if t.shape[-1] != dim:
                raise IPAdapterPatchError(f"{name} have width {t.shape[-1]} but the adapter expects {dim}.")
        if self.layer_weights is not None and len(self.layer_weights) != self.adapter.info.num_layers:
            raise IPAdapterPatchError(
                f"{len(self.layer_weights)} layer weights were given for an adapter with "
                f"{self.adapter.info.num_layers} cross-attention layers."
            )
        if self.mask is not None and self.mask.ndim == 2:
            object.__setattr__(self, "mask", self.mask[None])
        if self.mask is not None and self.mask.ndim != 3:
            raise IPAdapterPatchError(f"mask must be [B, H, W] or [H, W], not {list(self.mask.shape)}.")

    def weight_at(self, j: int) -> float:
        return float(self.layer_weights[j]) if self.layer_weights is not None else float(self.weight)

    def cache_nbytes(self) -> int:
        ts = [self.cond_tokens, self.uncond_tokens] + ([self.mask] if self.mask is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)


def _layer_term(patch: IPAdapterPatch, j: int, device, dtype) -> LayerTerm | None:
    """Precompute the image K/V of ``patch`` at layer j; None when the term can never act."""
    w = patch.weight_at(j)
    if w == 0.0 or patch.start_at > patch.end_at:
        return None
    mask = patch.mask
    if mask is not None and not bool(mask.any()):
        return None
    wk = patch.adapter.to_k_ip[j].to(device=device, dtype=dtype)
    wv = patch.adapter.to_v_ip[j].to(device=device, dtype=dtype)
    tokens = _per_image_tokens if patch.per_image else _as_tokens
    cond = tokens(patch.cond_tokens, "cond_tokens").to(device=device, dtype=dtype)
    uncond = tokens(patch.uncond_tokens, "uncond_tokens").to(device=device, dtype=dtype)
    with torch.no_grad():
        kc, vc, ku, vu = F.linear(cond, wk), F.linear(cond, wv), F.linear(uncond, wk), F.linear(uncond, wv)
    out_scale = w
    if patch.embeds_scaling != "V only":
        if "C penalty" in patch.embeds_scaling:
            w = w * wk.shape[0] / 1280
        kc, ku = kc * w, ku * w
        if patch.embeds_scaling.startswith("K+mean(V)"):
            vc = vc - vc.mean(1, keepdim=True) * (1 - w)
            vu = vu - vu.mean(1, keepdim=True) * (1 - w)
        else:
            vc, vu = vc * w, vu * w
        out_scale = 1.0
    return LayerTerm(
        k_cond=kc,
        v_cond=vc,
        k_uncond=ku,
        v_uncond=vu,
        out_scale=out_scale,
        start_at=float(patch.start_at),
        end_at=float(patch.end_at),
        mask=None if mask is None else mask.to(device=device, dtype=torch.float32),
        mask_interpolation=patch.mask_interpolation,
    )


@patch_installer(IPAdapterPatch)
@contextmanager
def installed(unet, patches, state):
    """Swap the UNet's attn2 processors for decoupled ones while the block runs; restore the originals after.

    ``state`` is the sampling run's :class:`ipgraph.nodes.core.types.SamplingState`; the processors read it at every call
    (step range, CFG layout, latent size for masks). ``patches`` holds IPAdapterPatch objects only (filter
    a handle's other patches out first). Not re-entrant on one UNet: two samplers sharing a UNet at the same
    time must be serialised by the caller.
    """
    patches = list(patches)
    if not patches:
        yield unet
        return
    names = cross_attention_names(unet)
    for p in patches:
        if p.adapter.info.num_layers != len(names):
            raise IPAdapterPatchError(
                f"this adapter is for {p.adapter.info.arch_name} ({p.adapter.info.num_layers} cross-attention "
                f"layers) but the model has {len(names)} cross-attention layers."
            )
        for j, name in enumerate(names):
            width = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
            if p.adapter.to_k_ip[j].shape[0] != width:
                raise IPAdapterPatchError(
                    f"this adapter's layer {j} is {p.adapter.to_k_ip[j].shape[0]} wide but the model's is {width}: "
                    "it was made for a different UNet."
                )
    original = dict(unet.attn_processors)
    param = next(unet.parameters())
    replacement = dict(original)
    for j, name in enumerate(names):
        terms = [t for p in patches if (t := _layer_term(p, j, param.device, param.dtype)) is not None]
        if terms:
            replacement[name] = DecoupledAttnProcessor(original[name], terms, state)
    unet.set_attn_processor(replacement)
    try:
        yield unet
    finally:
        unet.set_attn_processor(dict(original))

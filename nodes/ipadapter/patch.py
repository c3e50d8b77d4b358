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

Batch options (ComfyUI_IPAdapter_plus's "Batch" nodes and precise types; all default off):

* ``unfold_batch``: the n reference images are NOT concatenated; image i conditions latent i (the last one
  repeats when there are more latents, extra images are dropped).
* ``frame_weights``: one weight per latent (same fit rule); layer j of latent i gets
  ``weight_at(j) · frame_weights[i]`` (the embeds-scaling rule above then applies per latent).
* ``swap_layers[j]``: at layer j the negative half attends to the reference tokens and the positive half to
  zero tokens (the precise weight types).
* ``alt_cond_tokens`` / ``alt_layers[j]``: at layer j the positive tokens are ``alt_cond_tokens`` (the
  composition image of IPAdapterStyleComposition).
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
    unfold_batch: bool = False
    frame_weights: tuple[float, ...] | None = None
    swap_layers: tuple[bool, ...] | None = None
    alt_cond_tokens: torch.Tensor | None = None
    alt_layers: tuple[bool, ...] | None = None

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

    def tokens(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """Tokens as the attention uses them: ``[n, T, D]`` per latent when unfolded, else concatenated."""
        if self.unfold_batch:
            return t[None] if t.ndim == 2 else t
        return _as_tokens(t, name)

    def weight_at(self, j: int) -> float:
        return float(self.layer_weights[j]) if self.layer_weights is not None else float(self.weight)

    def cache_nbytes(self) -> int:
        ts = [self.cond_tokens, self.uncond_tokens] + ([self.mask] if self.mask is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)


def _layer_term(patch: IPAdapterPatch, j: int, device, dtype) -> LayerTerm | None:
    """Precompute the image K/V of ``patch`` at layer j; None when the term can never act."""
    w = patch.weight_at(j)
    frames = None if patch.frame_weights is None else torch.tensor(patch.frame_weights, dtype=torch.float32) * w
    if w == 0.0 or patch.start_at > patch.end_at or (frames is not None and not bool(frames.any())):
        return None
    mask = patch.mask
    if mask is not None and not bool(mask.any()):
        return None
    wk = patch.adapter.to_k_ip[j].to(device=device, dtype=dtype)
    wv = patch.adapter.to_v_ip[j].to(device=device, dtype=dtype)
    cond_src = patch.cond_tokens
    if patch.alt_layers is not None and patch.alt_cond_tokens is not None and patch.alt_layers[j]:
        cond_src = patch.alt_cond_tokens
    cond = patch.tokens(cond_src, "cond_tokens").to(device=device, dtype=dtype)
    uncond = patch.tokens(patch.uncond_tokens, "uncond_tokens").to(device=device, dtype=dtype)
    if patch.swap_layers is not None and patch.swap_layers[j]:
        cond, uncond = torch.zeros_like(cond), cond
    with torch.no_grad():
        kc, vc, ku, vu = F.linear(cond, wk), F.linear(cond, wv), F.linear(uncond, wk), F.linear(uncond, wv)
    if frames is not None:  # per-latent weights: the scaling is applied per row once the batch is known
        return LayerTerm(k_cond=kc, v_cond=vc, k_uncond=ku, v_uncond=vu, out_scale=1.0,
                         start_at=float(patch.start_at), end_at=float(patch.end_at),
                         mask=None if mask is None else mask.to(device=device, dtype=torch.float32),
                         mask_interpolation=patch.mask_interpolation, row_weights=frames.to(device),
                         scaling=patch.embeds_scaling)
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

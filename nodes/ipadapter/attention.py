"""Decoupled cross-attention processor: ``Z = Attn(Q, K_text, V_text) + Σ_adapters w·mask·Attn(Q, K_img, V_img)``.

Why a processor of our own instead of diffusers' ``IPAdapterAttnProcessor2_0``: ipgraph needs start/end
ranges, soft masks in the latent's aspect ratio, per-adapter embeds scaling and image K/V computed once per
sampling run, while the shared UNet must stay untouched outside sampling. The text path below performs the
same operations in the same order as diffusers' ``AttnProcessor2_0`` so the result matches the oracle; and
when no image term acts at a call, the call is handed to the ORIGINAL processor, so an adapter with weight 0,
an inactive step range or an all-zero mask is bit-identical to no adapter.

The processor is deliberately not a ``torch.nn.Module``: installing it must not add parameters or buffers to
the UNet's state dict.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def mask_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """Token grid (rows, cols) of a UNet block with ``tokens`` queries for a latent of ``latent_hw``.

    The UNet halves the grid with ceil rounding at each downsample (stride-2 conv, padding 1), so repeated
    ceil-halving of the latent size is exact for every SD1.5/SDXL shape, odd sizes included. For anything
    else, fall back to a downsample factor f = sqrt(h·w/S) (the caller pads/crops to S).
    """
    h, w = latent_hw
    gh, gw = h, w
    for _ in range(8):
        if gh * gw == tokens:
            return gh, gw
        if gh * gw < tokens:
            break
        gh, gw = math.ceil(gh / 2), math.ceil(gw / 2)
    f = math.sqrt(h * w / tokens)
    return max(1, round(h / f)), max(1, round(w / f))


def _fit(t: torch.Tensor, n: int) -> torch.Tensor:
    """Resize dim 0 to n: broadcast a single row, truncate, or repeat the last row (ComfyUI's tensor_to_size)."""
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    if t.shape[0] > n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])], 0)


@dataclass(eq=False)
class LayerTerm:
    """One adapter's image term at one cross-attention layer, with K/V precomputed for the whole run.

    ``k_cond``/``v_cond``/``k_uncond``/``v_uncond`` are ``[b, N, C]`` (b = 1 or images per side), already
    scaled for the K+V embeds-scaling modes; ``out_scale`` multiplies the attention output (the weight in
    "V only" mode, 1 otherwise).
    """

    k_cond: torch.Tensor
    v_cond: torch.Tensor
    k_uncond: torch.Tensor
    v_uncond: torch.Tensor
    out_scale: float
    start_at: float
    end_at: float
    mask: torch.Tensor | None  # [b or 1, H, W] float
    mask_interpolation: str
    row_weights: torch.Tensor | None = None  # [F] one weight per latent (K/V then unscaled); see row_scale
    scaling: str = "V only"  # embeds scaling, used with row_weights
    _kv_cache: dict = field(default_factory=dict)
    _mask_cache: dict = field(default_factory=dict)

    def _rows(self, n: int, do_cfg: bool) -> torch.Tensor:
        """Per-latent weights laid out like the UNet batch, ``[n, 1, 1]``."""
        if do_cfg:
            w = _fit(self.row_weights, n // 2)
            w = torch.cat([w, w], 0)
        else:
            w = _fit(self.row_weights, n)
        return w[:, None, None]

    def row_scale(self, n: int, do_cfg: bool, dtype: torch.dtype) -> torch.Tensor | None:
        """``[n, 1, 1]`` output scale per latent ("V only" with per-latent weights), else None."""
        if self.row_weights is None or self.scaling != "V only":
            return None
        return self._rows(n, do_cfg).to(dtype)

    def kv(self, n: int, do_cfg: bool, heads: int, dtype: torch.dtype,
           uncond_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V laid out like the UNet batch (``[uncond × n/2, cond × n/2]`` with CFG, else cond × n, or
        uncond × n when the sampler evaluates a negative conditioning entry on its own) and split into heads,
        ``[n, heads, N, C/heads]``; built once per run and reused at every step."""
        key = (n, do_cfg, heads, dtype, uncond_only)
        if key not in self._kv_cache:
            if do_cfg:
                half = n // 2
                k = torch.cat([_fit(self.k_uncond, half), _fit(self.k_cond, half)], 0)
                v = torch.cat([_fit(self.v_uncond, half), _fit(self.v_cond, half)], 0)
            elif uncond_only:
                k, v = _fit(self.k_uncond, n), _fit(self.v_uncond, n)
            else:
                k, v = _fit(self.k_cond, n), _fit(self.v_cond, n)
            if self.row_weights is not None and self.scaling != "V only":
                w = self._rows(n, do_cfg).to(k.dtype)
                if "C penalty" in self.scaling:
                    w = w * k.shape[-1] / 1280
                k = k * w
                v = v - v.mean(1, keepdim=True) * (1 - w) if self.scaling.startswith("K+mean(V)") else v * w
            head_dim = k.shape[-1] // heads
            self._kv_cache[key] = tuple(t.contiguous().to(dtype).view(n, -1, heads, head_dim).transpose(1, 2)
                                        for t in (k, v))
        return self._kv_cache[key]

    def mask_for(self, n: int, do_cfg: bool, tokens: int, latent_hw: tuple[int, int]) -> torch.Tensor | None:
        """The mask resized to this block's token grid as ``[n, S, 1]`` (same for cond and uncond)."""
        if self.mask is None:
            return None
        key = (n, do_cfg, tokens, tuple(latent_hw))
        if key not in self._mask_cache:
            if not self._mask_cache:  # first use in this run: say when the mask gets stretched
                mh, mw = self.mask.shape[-2:]
                lh, lw = latent_hw
                if abs(mh / mw - lh / lw) > 0.01 * (lh / lw):
                    log.info("IP-Adapter attn_mask is %dx%d (h x w) but the image is %dx%d latent pixels: the mask "
                             "is resized to the image's aspect ratio, so it is stretched", mh, mw, lh, lw)
            gh, gw = mask_grid(latent_hw, tokens)
            m = F.interpolate(self.mask[:, None].float(), size=(gh, gw), mode=self.mask_interpolation)[:, 0]
            m = m.reshape(m.shape[0], -1)
            if m.shape[1] < tokens:  # a grid that is not exact: pad centred / crop centred
                pad = tokens - m.shape[1]
                m = F.pad(m, (pad // 2, pad - pad // 2))
            elif m.shape[1] > tokens:
                off = (m.shape[1] - tokens) // 2
                m = m[:, off : off + tokens]
            side = n // 2 if do_cfg else n
            m = _fit(m, side)
            if do_cfg:
                m = torch.cat([m, m], 0)
            self._mask_cache[key] = m[:, :, None].contiguous()
        return self._mask_cache[key]


class DecoupledAttnProcessor:
    """attn2 processor adding IP-Adapter image attention to the text attention before ``to_out``."""

    def __init__(self, original, terms: list[LayerTerm], state):
        self.original = original
        self.terms = terms
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        state = self.state
        acting = [t for t in self.terms if state.active(t.start_at, t.end_at)]
        if not acting:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

        # --- text path: the same operations, in the same order, as diffusers' AttnProcessor2_0 ---
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        # --- image terms: one SDPA per adapter, same heads, no attention mask ---
        tokens = hidden_states.shape[1]
        for term in acting:
            ip_k, ip_v = term.kv(batch_size, state.do_cfg, attn.heads, query.dtype, state.uncond_only)
            ip = F.scaled_dot_product_attention(
                query, ip_k, ip_v, attn_mask=None, dropout_p=0.0, is_causal=False
            )
            ip = ip.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            rows = term.row_scale(batch_size, state.do_cfg, query.dtype)
            if rows is not None:
                ip = ip * rows
            mask = term.mask_for(batch_size, state.do_cfg, tokens, state.latent_hw)
            if mask is not None:
                ip = ip * mask.to(query.dtype)
            hidden_states = hidden_states + term.out_scale * ip

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

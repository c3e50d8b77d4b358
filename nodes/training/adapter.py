"""The trainable part of an IP-Adapter and how it runs inside a frozen UNet during training.

What is trained (the reference recipe): the image projection (base: ``Linear`` to ``tokens·D`` + ``LayerNorm``,
4 tokens; plus: the Perceiver resampler, depth 4, 12 heads of 64, 16 queries, hidden width D) and, for every
cross-attention layer j, ``to_k_ip``/``to_v_ip`` (``[C_j, D]``, initialised from that layer's ``to_k``/``to_v``).
The projections are diffusers' own modules, so the h94 file is written through ``diffusers_to_h94``.

During a training forward pass the image tokens are appended to the text context, and each cross-attention
layer splits them off again (the reference's ``IPAttnProcessor2_0``)::

    Z = softmax(Q K_text^T / sqrt(d)) V_text + scale · softmax(Q K_img^T / sqrt(d)) V_img

One departure for SDXL plus (context width 2048): the tutorial script sizes the resampler with hidden width D
and 12 heads, but the published h94 SDXL plus files use hidden width 1280 and 20 heads, and the ComfyUI
IPAdapter_plus loader hard-codes exactly that for a 2048-wide context; ipgraph uses the published layout so the
file loads there too (ipgraph's and diffusers' loaders read the sizes from the shapes either way).

The processor is not a module: the UNet's state dict is unchanged, and ``installed`` restores the UNet's
own processors afterwards, also when training fails or is cancelled.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..ipadapter.files import cross_attention_names, describe_unet, load_ipadapter
from ..ipadapter.projection import diffusers_to_h94
from .errors import TrainingError

VARIANTS = ("base", "plus")
DEFAULT_TOKENS = {"base": 4, "plus": 16}
PLUS_DEPTH, PLUS_HEADS, PLUS_HEAD_DIM = 4, 12, 64
SDXL_PLUS = (1280, 20)  # hidden width and heads of the h94 SDXL plus files (context width 2048)


class IPAdapterModules(nn.Module):
    """image_proj + per-layer ``to_k_ip``/``to_v_ip``; ``h94_state_dict`` gives the file layout."""

    def __init__(self, image_proj: nn.Module, variant: str, layer_names: list[str], layer_ids: list[int],
                 to_k_ip: list[torch.Tensor], to_v_ip: list[torch.Tensor], num_tokens: int) -> None:
        super().__init__()
        self.image_proj = image_proj
        self.variant = variant
        self.layer_names = list(layer_names)  # processor names of the cross-attention layers
        self.layer_ids = list(layer_ids)  # h94 index N of ip_adapter.N.* (position in unet.attn_processors)
        self.num_tokens = num_tokens
        self.to_k_ip = nn.ModuleList(_linear(w) for w in to_k_ip)
        self.to_v_ip = nn.ModuleList(_linear(w) for w in to_v_ip)

    @classmethod
    def fresh(cls, unet, encoder, variant: str, num_tokens: int | None = None, plus_heads: int | None = None,
              plus_depth: int = PLUS_DEPTH) -> IPAdapterModules:
        """New adapter for ``unet`` and ``encoder`` (a CLIPVisionModelWithProjection), under the caller's RNG."""
        from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

        if variant not in VARIANTS:
            raise TrainingError(f"the variant must be one of {', '.join(VARIANTS)}, not {variant!r}.")
        tokens = num_tokens or DEFAULT_TOKENS[variant]
        dim = int(unet.config.cross_attention_dim)
        cfg = encoder.config
        if variant == "base":
            if not getattr(cfg, "projection_dim", None):
                raise TrainingError("a base adapter needs an image encoder with a projection (image_embeds).")
            proj = ImageProjection(cross_attention_dim=dim, image_embed_dim=int(cfg.projection_dim),
                                   num_image_text_embeds=tokens)
        else:
            hidden, heads = SDXL_PLUS if dim == 2048 else (dim, PLUS_HEADS)
            proj = IPAdapterPlusImageProjection(embed_dims=int(cfg.hidden_size), output_dims=dim, hidden_dims=hidden,
                                                depth=plus_depth, dim_head=PLUS_HEAD_DIM, heads=plus_heads or heads,
                                                num_queries=tokens, ffn_ratio=4)
        names = cross_attention_names(unet)
        ks = [unet.get_submodule(n[: -len(".processor")]).to_k.weight for n in names]
        vs = [unet.get_submodule(n[: -len(".processor")]).to_v.weight for n in names]
        return cls(proj, variant, names, _layer_ids(unet, names), ks, vs, tokens)

    @classmethod
    def from_file(cls, path, unet) -> IPAdapterModules:
        """Start from an existing h94 file (``--init``): a trainable copy of its weights."""
        weights = load_ipadapter(path)
        if weights.info.variant not in VARIANTS:
            raise TrainingError(f"{weights.info.path} is a {weights.info.variant} adapter; ipgraph trains only "
                                f"{' and '.join(VARIANTS)} adapters.")
        names = cross_attention_names(unet)
        proj = copy.deepcopy(weights.image_proj).float().requires_grad_(True).train()
        return cls(proj, weights.info.variant, names, _layer_ids(unet, names), list(weights.to_k_ip),
                   list(weights.to_v_ip), weights.info.tokens)

    def forward(self, unet, noisy_latents, timesteps, text_context, image_embeds, added_cond_kwargs=None):
        """The reference ``IPAdapter.forward``: image tokens appended to the text context, then the UNet."""
        tokens = self.image_proj(image_embeds)
        context = torch.cat([text_context, tokens.to(text_context.dtype)], dim=1)
        return unet(noisy_latents, timesteps, context, added_cond_kwargs=added_cond_kwargs).sample

    def h94_state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``image_proj.*`` / ``ip_adapter.N.to_k_ip|to_v_ip.weight`` tensors (CPU, float32, contiguous)."""
        out = {f"image_proj.{k}": v for k, v in diffusers_to_h94(self.variant, self.image_proj.state_dict()).items()}
        for n, k, v in zip(self.layer_ids, self.to_k_ip, self.to_v_ip, strict=True):
            out[f"ip_adapter.{n}.to_k_ip.weight"] = k.weight
            out[f"ip_adapter.{n}.to_v_ip.weight"] = v.weight
        return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}

    def check_unet(self, unet) -> None:
        info = describe_unet(unet)
        widths = tuple(m.weight.shape[0] for m in self.to_k_ip)
        dims = {m.weight.shape[1] for m in self.to_k_ip}
        if widths != info.layer_widths or dims != {info.cross_attention_dim}:
            raise TrainingError(f"the adapter has {len(widths)} cross-attention layers of context width "
                                f"{dims.pop()} but the checkpoint's UNet has {info.num_layers} of width "
                                f"{info.cross_attention_dim}: it was made for another base model.")


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
    return layer


def _layer_ids(unet, names: list[str]) -> list[int]:
    order = list(unet.attn_processors)
    return [order.index(n) for n in names]


class TrainingAttnProcessor:
    """Decoupled cross-attention for training (see module docstring); the last ``num_tokens`` of the context
    are the image tokens."""

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, num_tokens: int, scale: float = 1.0) -> None:
        self.to_k_ip, self.to_v_ip, self.num_tokens, self.scale = to_k_ip, to_v_ip, num_tokens, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = encoder_hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        end = encoder_hidden_states.shape[1] - self.num_tokens
        text, image = encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)
        head_dim = key.shape[-1] // attn.heads

        def heads(t):
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        q = heads(query)
        out = F.scaled_dot_product_attention(q, heads(key), heads(value), attn_mask=attention_mask,
                                             dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        ip = F.scaled_dot_product_attention(q, heads(self.to_k_ip(image)), heads(self.to_v_ip(image)),
                                            attn_mask=None, dropout_p=0.0, is_causal=False)
        ip = ip.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out + self.scale * ip))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def installed(unet, adapter: IPAdapterModules):
    """Give the UNet training processors for the block, and its own processors back afterwards."""
    saved = unet.attn_processors
    procs = dict(saved)
    for name, k, v in zip(adapter.layer_names, adapter.to_k_ip, adapter.to_v_ip, strict=True):
        procs[name] = TrainingAttnProcessor(k, v, adapter.num_tokens)
    unet.set_attn_processor(procs)
    try:
        yield unet
    finally:
        unet.set_attn_processor(saved)

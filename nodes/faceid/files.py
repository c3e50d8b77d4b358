"""h94 FaceID IP-Adapter files: telling the variants apart, their projection models, their LoRA.

Variants (from keys and shapes; the file name only separates plus v1 from v2, which share one layout, as
ComfyUI_IPAdapter_plus does):

* ``faceid`` (SD1.5, SDXL): ``image_proj.proj.0/2`` + ``norm`` (MLPProjModelFaceId, 4 tokens) and LoRA weights
  ``{i}.to_q_lora.down.weight`` ... in ``ip_adapter`` (i = the UNet's attention processor index).
* ``faceid-portrait``: the same projection with 16 tokens and no LoRA; several faces are concatenated.
* ``faceid-plus`` / ``faceid-plusv2``: ``image_proj.perceiver_resampler.*`` (ProjModelFaceIdPlus): face ID
  tokens refined by the CLIP vision penultimate hidden states of the aligned face crop; v2 adds the ID tokens
  back (``shortcut``) scaled by ``weight_faceidv2``. Both carry LoRA weights.

Projection modules are diffusers' own (``IPAdapterFaceIDImageProjection``, ``IPAdapterFaceIDPlusImageProjection``)
built by diffusers' own key conversion, so the tokens equal the oracle's. The LoRA is returned as a parsed
:class:`LoraFile` (diffusers' ``processor.to_q_lora`` layout), applied as a weight patch like any LoRA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ipadapter.files import (  # noqa: F401 - re-exported: the header rules live with the adapter folder scan
    FACE_EMBED_WIDTH,
    FaceIDFileError,
    IPAdapterFileError,
    IPAdapterInfo,
    IPAdapterWeights,
    _guess_arch,
    _read_state,
    faceid_info,
    faceid_variant,
    is_faceid_state,
)
from ..lora.files import LoraFile, parse_lora

VARIANTS = ("faceid", "faceid-plus", "faceid-plusv2", "faceid-portrait")



@dataclass(frozen=True, eq=False)
class FaceIDAdapter:
    """A loaded FaceID adapter: the IP-Adapter part (projection + per-layer K/V) and the LoRA it carries."""

    weights: IPAdapterWeights  # info.variant is one of VARIANTS; info.encoder_input == "face_embeds"
    lora_tensors: dict  # the file's own ``{i}.to_q_lora.down.weight`` ... (empty for portrait)
    clip_width: int | None  # plus: hidden width of the CLIP vision encoder whose penultimate states it needs

    def lora_for(self, unet) -> LoraFile | None:
        """The embedded LoRA addressed to ``unet``'s attention processors (None when the file has none)."""
        return _lora_of(Path(self.weights.info.path), self.lora_tensors, list(unet.attn_processors))

    @property
    def variant(self) -> str:
        return self.weights.info.variant

    @property
    def is_plus(self) -> bool:
        return self.variant.startswith("faceid-plus")

    def cache_nbytes(self) -> int:
        return 0


def _lora_of(path: Path, ip: dict, unet_names: list[str]) -> LoraFile | None:
    """The ``{i}.to_q_lora...`` weights as a LoRA in diffusers' processor layout (needs the processor names)."""
    ids = sorted({int(m.group(1)) for k in ip if (m := re.match(r"^(\d+)\.to_q_lora\.down\.weight$", k))})
    if not ids:
        return None
    if max(ids) >= len(unet_names):
        raise FaceIDFileError(f"{path.name} has LoRA weights for {max(ids) + 1} attention layers but the model "
                              f"has {len(unet_names)}: it was made for another base model.")
    tensors = {}
    for i in ids:
        for part in ("q", "k", "v", "out"):
            for d in ("down", "up"):
                key = f"{i}.to_{part}_lora.{d}.weight"
                if key in ip:
                    tensors[f"unet.{unet_names[i]}.to_{part}_lora.{d}.weight"] = ip[key]
    return parse_lora(tensors, str(path) + " (its LoRA)")


def load_faceid(path: str | Path) -> FaceIDAdapter:
    """Load an h94 FaceID file (``.bin`` weights-only or ``.safetensors``) into CPU float32 modules."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    try:
        proj, ip = _read_state(path)
    except IPAdapterFileError as exc:
        raise FaceIDFileError(str(exc)) from None
    if not proj or not ip:
        raise FaceIDFileError(f"{path.name} is not an IP-Adapter file (no image_proj / ip_adapter weights).")
    variant = faceid_variant(path, proj, ip)
    proj = {k: v.float() for k, v in proj.items()}
    try:  # diffusers' own conversion (it never uses the UNet instance it is a method of)
        image_proj = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, proj, False)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise FaceIDFileError(f"{path.name} has FaceID image_proj weights of inconsistent shapes ({exc}).") from None
    image_proj = image_proj.float().eval().requires_grad_(False)
    ids = sorted({int(m.group(1)) for k in ip if (m := re.match(r"^(\d+)\.to_k_ip\.weight$", k))})
    if not ids or ids != list(range(1, 2 * len(ids), 2)):
        raise FaceIDFileError(f"{path.name} has an unknown ip_adapter layout: expected keys 1, 3, 5, ... "
                              "'.to_k_ip.weight'.")
    to_k = tuple(ip[f"{j}.to_k_ip.weight"].float() for j in ids)
    to_v = tuple(ip[f"{j}.to_v_ip.weight"].float() for j in ids)
    dim = int(to_k[0].shape[1])
    tokens = int(image_proj.num_tokens)
    clip_width = int(proj["perceiver_resampler.proj_in.weight"].shape[1]) if variant.startswith("faceid-plus") \
        else None
    info = IPAdapterInfo(path=str(path), variant=variant, arch=_guess_arch(len(ids), dim), cross_attention_dim=dim,
                         num_layers=len(ids), layer_widths=tuple(int(t.shape[0]) for t in to_k),
                         encoder_input="face_embeds", encoder_width=FACE_EMBED_WIDTH, tokens=tokens,
                         clip_width=clip_width)
    lora = {k: v for k, v in ip.items() if "_lora." in k}
    return FaceIDAdapter(IPAdapterWeights(info, image_proj, to_k, to_v), lora, clip_width)


def project_faceid(adapter: FaceIDAdapter, face_embeds: torch.Tensor, clip_embeds: torch.Tensor | None = None,
                   shortcut_scale: float = 1.0) -> torch.Tensor:
    """Face embeds ``[N, 512]`` (+ CLIP penultimate ``[N, T, W]`` for plus) -> tokens ``[N, tokens, D]``.

    Plus runs diffusers' ``IPAdapterFaceIDPlusImageProjection.forward`` step for step without setting its
    ``clip_embeds``/``shortcut`` attributes (the module is shared read-only); v2 uses the shortcut.
    """
    module = adapter.weights.image_proj
    p = next(module.parameters())
    x = face_embeds.to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        if not adapter.is_plus:
            return module(x)
        c = clip_embeds.to(device=p.device, dtype=p.dtype)
        ids = module.norm(module.proj(x).reshape(-1, module.num_tokens, module.embed_dim))
        latents = ids
        c = module.proj_in(c)
        for block in module.layers:
            latents = block(c, latents, latents)
        out = module.norm_out(module.proj_out(latents))
        if adapter.variant == "faceid-plusv2":
            out = ids + shortcut_scale * out
        return out

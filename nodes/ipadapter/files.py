"""Reading h94-format IP-Adapter files, telling their variant apart, and checking what they pair with.

Why a pairing check: the most frequent IP-Adapter failure users hit is an adapter used with the wrong CLIP
vision encoder or the wrong base model, which surfaces deep inside torch as ``size mismatch for proj.weight``.
Here the mismatch is found before anything runs and reported as a plain sentence.

File formats (both written by the tencent-ailab conversion recipe):

* ``.safetensors``: flat keys ``image_proj.*`` and ``ip_adapter.*``.
* ``.bin``: ``{"image_proj": {...}, "ip_adapter": {...}}`` saved with ``torch.save``; read ONLY through
  ``torch.load(weights_only=True)`` so a hostile file cannot run code.

``ip_adapter`` keys are ``{2j+1}.to_k_ip.weight`` / ``{2j+1}.to_v_ip.weight`` (``[C_j, D]``) for the j-th
cross-attention layer in diffusers' ``unet.attn_processors`` order (down blocks, up blocks, mid block).

Variant detection (from keys and shapes; the file name only separates look-alike layouts):

* ``image_proj.proj.weight`` + ``norm``: base (``light`` when the file name says so: same layout). Tokens =
  ``proj`` rows / D; needs the encoder's ``image_embeds`` (projection width = ``proj`` in-features).
* ``image_proj.latents`` + ``proj_in``: plus (``plus-face`` when the name says "face": same layout). Tokens =
  ``latents.shape[1]``; needs the penultimate hidden states (hidden width = ``proj_in`` in-features).
* ``image_proj.proj.3.weight``: full-face, 257 tokens (one per ViT-H patch + CLS), hidden states as input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.pickles import PickleFileError, load_weights_only
from .projection import build_image_proj

ARCH_LAYERS = {"sd15": 16, "sdxl": 70}
ARCH_CONTEXT = {"sd15": 768, "sdxl": 2048}
ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
KNOWN_ENCODERS = {(1280, 1024): "ViT-H", (1664, 1280): "ViT-bigG", (1024, 768): "ViT-L"}


class IPAdapterFileError(ValueError):
    """A file that is not a readable h94 IP-Adapter; the message is a plain sentence for the user."""


@dataclass(frozen=True)
class IPAdapterInfo:
    """What an adapter file is and what it needs; read from key names and shapes only (no weights)."""

    path: str
    variant: str  # base | light | plus | plus-face | full-face
    arch: str  # sd15 | sdxl | unknown
    cross_attention_dim: int  # D: width of the UNet's text context
    num_layers: int  # cross-attention layers carrying to_k_ip/to_v_ip
    layer_widths: tuple[int, ...]  # C_j of each layer, in diffusers order
    encoder_input: str  # "image_embeds" (base/light) or "hidden_states" (plus, full-face: penultimate layer)
    encoder_width: (
        int  # projection width (image_embeds) or hidden width (hidden_states) the encoder must give
    )
    tokens: int  # image tokens per reference image after projection
    clip_width: int | None = None  # FaceID plus: hidden width of the CLIP vision encoder for the face crop

    @property
    def arch_name(self) -> str:
        return ARCH_NAMES.get(self.arch, "an unknown base model")


@dataclass(frozen=True, eq=False)
class IPAdapterWeights:
    """A loaded adapter: its info, the projection module and per-layer ``to_k_ip``/``to_v_ip`` matrices.

    Read-only and shared: patches reference it, nothing changes it.
    """

    info: IPAdapterInfo
    image_proj: torch.nn.Module
    to_k_ip: tuple[torch.Tensor, ...]  # [C_j, D] per layer j
    to_v_ip: tuple[torch.Tensor, ...]

    def project(self, embeds: torch.Tensor) -> torch.Tensor:
        """Raw CLIP embeds ``[N, E]`` or ``[N, 257, W]`` -> image tokens ``[N, T, D]``."""
        p = next(self.image_proj.parameters())
        with torch.no_grad():
            return self.image_proj(embeds.to(device=p.device, dtype=p.dtype))

    def cache_nbytes(self) -> int:
        return 0  # weights belong to the model manager


@dataclass(frozen=True)
class EncoderInfo:
    """The two widths of a CLIP vision encoder that decide which adapters it can feed."""

    hidden_size: int
    projection_dim: int
    image_size: int

    @property
    def name(self) -> str:
        return KNOWN_ENCODERS.get((self.hidden_size, self.projection_dim), "custom")


@dataclass(frozen=True)
class UNetInfo:
    arch: str
    num_layers: int
    cross_attention_dim: int
    layer_widths: tuple[int, ...]


def _split(flat: dict) -> tuple[dict, dict]:
    """Split flat safetensors keys (or a raw training checkpoint's) into image_proj / ip_adapter dicts."""
    proj, ip = {}, {}
    for key, value in flat.items():
        for prefix, target in (("image_proj.", proj), ("ip_adapter.", ip), ("adapter_modules.", ip)):
            if key.startswith(prefix):
                target[key[len(prefix) :]] = value
                break
    return proj, ip


def _guess_arch(num_layers: int, dim: int) -> str:
    for arch, n in ARCH_LAYERS.items():
        if num_layers == n:
            return arch
    for arch, d in ARCH_CONTEXT.items():
        if dim == d:
            return arch
    return "unknown"


def _detect(path: str, proj: dict, ip: dict) -> IPAdapterInfo:
    """Describe an adapter from ``{name: shape}`` dicts of its two halves."""
    name = Path(path).name.lower()
    if not proj or not ip:
        raise IPAdapterFileError(
            f"{Path(path).name} is not an IP-Adapter file: it has no "
            f"{'image_proj' if not proj else 'ip_adapter'} weights."
        )
    if any("lora" in k for k in ip) or "perceiver_resampler.proj_in.weight" in proj:
        raise IPAdapterFileError(
            f"{Path(path).name} is a FaceID IP-Adapter: load it with IPAdapterUnifiedLoaderFaceID or "
            "LoadFaceIDAdapter and apply it with IPAdapterFaceID."
        )
    layer_ids = sorted({int(m.group(1)) for k in ip if (m := re.match(r"^(\d+)\.to_k_ip\.weight$", k))})
    if not layer_ids or layer_ids != list(range(1, 2 * len(layer_ids), 2)):
        raise IPAdapterFileError(
            f"{Path(path).name} has an unknown ip_adapter layout: expected keys 1, 3, 5, ... '.to_k_ip.weight'."
        )
    for j in layer_ids:
        if f"{j}.to_v_ip.weight" not in ip:
            raise IPAdapterFileError(
                f"{Path(path).name} is damaged: layer {j} has to_k_ip but no to_v_ip weights."
            )
    dims = {tuple(ip[f"{j}.to_k_ip.weight"])[1] for j in layer_ids}
    if len(dims) != 1:
        raise IPAdapterFileError(f"{Path(path).name} is damaged: its layers disagree on the context width.")
    dim = dims.pop()
    widths = tuple(int(ip[f"{j}.to_k_ip.weight"][0]) for j in layer_ids)

    def shape(key: str) -> tuple:
        if key not in proj:
            raise IPAdapterFileError(f"{Path(path).name} is damaged: image_proj.{key} is missing.")
        return tuple(proj[key])

    if "proj.3.weight" in proj:
        variant, enc_input, enc_width, tokens = "full-face", "hidden_states", shape("proj.0.weight")[1], 257
    elif "latents" in proj:
        variant = "plus-face" if "face" in name else "plus"
        enc_input, enc_width, tokens = "hidden_states", shape("proj_in.weight")[1], shape("latents")[1]
        if shape("proj_out.weight")[0] != dim:
            raise IPAdapterFileError(
                f"{Path(path).name} is damaged: image_proj and ip_adapter disagree on width."
            )
    elif "proj.weight" in proj and "norm.weight" in proj:
        variant = "light" if "light" in name else "base"
        rows, enc_width = shape("proj.weight")
        enc_input = "image_embeds"
        if rows % dim:
            raise IPAdapterFileError(
                f"{Path(path).name} is damaged: image_proj.proj rows are not a multiple of {dim}."
            )
        tokens = rows // dim
    else:
        raise IPAdapterFileError(
            f"{Path(path).name} has an image_proj layout ipgraph does not know "
            "(expected base, light, plus, plus-face or full-face)."
        )
    return IPAdapterInfo(
        path=str(path),
        variant=variant,
        arch=_guess_arch(len(layer_ids), dim),
        cross_attention_dim=int(dim),
        num_layers=len(layer_ids),
        layer_widths=widths,
        encoder_input=enc_input,
        encoder_width=int(enc_width),
        tokens=int(tokens),
    )


def _read_state(path: Path) -> tuple[dict, dict]:
    if not path.is_file():
        raise IPAdapterFileError(f"IP-Adapter file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":  # mapped, converted to float32 per tensor (see models.tensorfile)
            from ..models.tensorfile import read_safetensors

            return _split(read_safetensors(path, torch.float32)[0])
        data = load_weights_only(path, "IP-Adapter file")
    except PickleFileError as exc:
        raise IPAdapterFileError(str(exc)) from None
    except Exception as exc:  # corrupt file, truncated download, pickled code refused by weights_only
        raise IPAdapterFileError(
            f"{path.name} could not be read as an IP-Adapter file ({exc.__class__.__name__})."
        ) from exc
    if (
        isinstance(data, dict)
        and isinstance(data.get("image_proj"), dict)
        and isinstance(data.get("ip_adapter"), dict)
    ):
        return dict(data["image_proj"]), dict(data["ip_adapter"])
    if isinstance(data, dict):
        return _split(data)
    raise IPAdapterFileError(f"{path.name} does not hold an IP-Adapter state dict.")


def inspect_ipadapter(path: str | Path) -> IPAdapterInfo:
    """Describe an adapter file without loading its weights (safetensors header only), for validation.

    ``.bin`` files have no header, so they are read (weights-only) to describe them.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        proj, ip = _read_state(path)
        return _describe(path, {k: tuple(v.shape) for k, v in proj.items()}, {k: tuple(v.shape) for k, v in ip.items()})
    if not path.is_file():
        raise IPAdapterFileError(f"IP-Adapter file {path} does not exist.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise IPAdapterFileError(
            f"{path.name} could not be read as a safetensors file ({exc.__class__.__name__})."
        ) from exc
    proj, ip = _split(shapes)
    return _describe(path, proj, ip)


# -- FaceID files: their header rules live here so the unified loaders' folder scan can describe them;
# nodes/faceid loads and applies them. ------------------------------------------------------------------

FACE_EMBED_WIDTH = 512  # ArcFace (InsightFace buffalo_l / antelopev2) embedding width


class FaceIDFileError(ValueError):
    """Not a usable FaceID adapter; the message is a plain sentence."""


def is_faceid_state(proj: dict, ip: dict) -> bool:
    """ComfyUI_IPAdapter_plus's rule: perceiver_resampler, or proj.2 without proj.3, or LoRA weights."""
    return ("perceiver_resampler.proj_in.weight" in proj or any("_lora." in k for k in ip)
            or ("proj.2.weight" in proj and "proj.3.weight" not in proj))


def faceid_variant(path: Path, proj: dict, ip: dict) -> str:
    if "perceiver_resampler.proj_in.weight" in proj:
        return "faceid-plusv2" if "plusv2" in path.name.lower() else "faceid-plus"
    if "proj.2.weight" in proj and "norm.weight" in proj:
        if "unnorm" in path.name.lower():
            raise FaceIDFileError(f"{path.name} is a FaceID portrait-unnorm adapter, which ipgraph does not "
                                  "support; use the normalised portrait adapter.")
        return "faceid" if any("_lora." in k for k in ip) else "faceid-portrait"
    raise FaceIDFileError(f"{path.name} is not a FaceID IP-Adapter (no FaceID image_proj weights).")


def faceid_info(path: Path, proj: dict, ip: dict) -> IPAdapterInfo:
    """Describe a FaceID file from ``{name: shape}`` dicts (headers only), for the unified loaders' folder scan.

    Tokens = rows of the projection's last linear layer / the UNet's context width (ProjModelFaceId and the
    plus models both end in ``proj.2``: ``[tokens * D, ...]``).
    """
    if "perceiver_resampler.proj_in.weight" not in proj and "proj.2.weight" not in proj:
        raise FaceIDFileError(f"{path.name} is a FaceID IP-Adapter of a layout ipgraph does not read (no "
                              "perceiver_resampler or proj.2 image_proj weights).")
    variant = faceid_variant(path, proj, ip)
    ids = sorted({int(m.group(1)) for k in ip if (m := re.match(r"^(\d+)\.to_k_ip\.weight$", k))})
    if not ids:
        raise FaceIDFileError(f"{path.name} has no '.to_k_ip.weight' layers.")
    widths = tuple(int(ip[f"{j}.to_k_ip.weight"][0]) for j in ids)
    dim = int(ip[f"{ids[0]}.to_k_ip.weight"][1])
    rows = int(proj["proj.2.weight"][0]) if "proj.2.weight" in proj else dim
    clip = proj.get("perceiver_resampler.proj_in.weight")
    return IPAdapterInfo(path=str(path), variant=variant, arch=_guess_arch(len(ids), dim), cross_attention_dim=dim,
                         num_layers=len(ids), layer_widths=widths, encoder_input="face_embeds",
                         encoder_width=FACE_EMBED_WIDTH, tokens=max(1, rows // dim),
                         clip_width=int(clip[1]) if clip is not None else None)


def _describe(path: Path, proj: dict, ip: dict) -> IPAdapterInfo:
    """A FaceID file is described by the FaceID family (variants faceid, faceid-plus, ...; loaded by its nodes)."""
    if proj and ip and is_faceid_state(proj, ip):
        return faceid_info(path, proj, ip)
    return _detect(str(path), proj, ip)


def load_ipadapter(path: str | Path) -> IPAdapterWeights:
    """Load an h94 IP-Adapter file (``.safetensors`` or weights-only ``.bin``) into CPU float32 modules."""
    path = Path(path)
    proj, ip = _read_state(path)
    info = _detect(str(path), {k: v.shape for k, v in proj.items()}, {k: v.shape for k, v in ip.items()})
    try:
        image_proj = build_image_proj(info.variant, {k: v.float() for k, v in proj.items()})
    except (RuntimeError, ValueError, KeyError) as exc:
        raise IPAdapterFileError(
            f"{path.name} has image_proj weights of inconsistent shapes ({exc})."
        ) from exc
    ids = range(1, 2 * info.num_layers, 2)
    return IPAdapterWeights(
        info=info,
        image_proj=image_proj,
        to_k_ip=tuple(ip[f"{j}.to_k_ip.weight"].float() for j in ids),
        to_v_ip=tuple(ip[f"{j}.to_v_ip.weight"].float() for j in ids),
    )


def describe_encoder(clip_vision_model) -> EncoderInfo:
    """Widths of a transformers ``CLIPVisionModelWithProjection`` (reads its config, costs nothing)."""
    cfg = clip_vision_model.config
    return EncoderInfo(int(cfg.hidden_size), int(cfg.projection_dim), int(cfg.image_size))


def cross_attention_names(unet) -> list[str]:
    """Processor names of the UNet's cross-attention (attn2) layers in diffusers' attn_processors order.

    This order (down blocks, up blocks, mid block; see files module docstring) is the h94 layer index j.
    """
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


def describe_unet(unet) -> UNetInfo:
    """Layer count, context width and per-layer widths of a diffusers UNet (no forward pass)."""
    names = cross_attention_names(unet)
    widths = []
    for n in names:
        module = unet.get_submodule(n[: -len(".processor")])
        widths.append(int(module.to_q.out_features))
    dim = int(unet.config.cross_attention_dim)
    return UNetInfo(_guess_arch(len(names), dim), len(names), dim, tuple(widths))


def _encoder_phrase(name: str, hidden: int, projection: int) -> str:
    label = f"a {name} image encoder" if name != "custom" else "an image encoder"
    return f"{label} (hidden width {hidden}, projection {projection})"


def check_pairing(
    adapter: IPAdapterInfo, encoder: EncoderInfo | None = None, unet: UNetInfo | None = None
) -> list[str]:
    """Plain sentences for every way ``adapter`` does not fit ``encoder`` / ``unet``; empty when it fits."""
    problems: list[str] = []
    if encoder is not None:
        given = encoder.projection_dim if adapter.encoder_input == "image_embeds" else encoder.hidden_size
        if given != adapter.encoder_width:
            need = [
                k
                for k in KNOWN_ENCODERS
                if (k[1] if adapter.encoder_input == "image_embeds" else k[0]) == adapter.encoder_width
            ]
            if need:
                h, p = need[0]
                wanted = _encoder_phrase(KNOWN_ENCODERS[need[0]], h, p)
            elif adapter.encoder_input == "image_embeds":
                wanted = f"an image encoder with projection {adapter.encoder_width}"
            else:
                wanted = f"an image encoder with hidden width {adapter.encoder_width}"
            gname = "the CLIP vision model given is " + (
                f"{encoder.name} ({encoder.hidden_size}/{encoder.projection_dim})"
                if encoder.name != "custom"
                else f"hidden width {encoder.hidden_size}, projection {encoder.projection_dim}"
            )
            problems.append(f"this adapter needs {wanted} but {gname}.")
    if unet is not None:
        if adapter.num_layers != unet.num_layers or adapter.cross_attention_dim != unet.cross_attention_dim:
            problems.append(
                f"this adapter is for {adapter.arch_name} ({adapter.num_layers} cross-attention layers, context "
                f"{adapter.cross_attention_dim}) but the model is {ARCH_NAMES.get(unet.arch, 'another architecture')} "
                f"({unet.num_layers}, {unet.cross_attention_dim})."
            )
        elif adapter.layer_widths != unet.layer_widths:
            problems.append(
                "this adapter's cross-attention layer widths do not match the model's, so it was made for a "
                "different UNet of the same family."
            )
    return problems

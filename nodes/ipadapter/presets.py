"""Unified-loader presets: which adapter file and which CLIP vision encoder a preset means, read from the files.

Why not file names: ComfyUI_IPAdapter_plus finds its files with regular expressions over file names, and its
users' most frequent complaint is "ClipVision model not found" for a file that was simply named differently.
Here every file in ``models/ipadapter`` and ``models/clip_vision`` is described from its safetensors header
(key names and shapes; no tensor is loaded) and a preset is a requirement on those descriptions:

* the adapter's layout (base, light, plus, plus-face, full-face; faceid, faceid-plus(v2), faceid-portrait),
* the base model it was made for (layer count, context width and per-layer widths must fit the MODEL),
* the encoder family it needs (ViT-H or ViT-bigG), told apart by the encoder WIDTH the adapter consumes.

The encoder is then the first file whose widths the adapter accepts (:func:`files.check_pairing`). Names only
separate layouts that are identical in shape (light vs base, plus-face vs plus, "composition" plus files), as
``files._detect`` documents. When nothing fits, the error lists every file and what it is.

Encoder families by (hidden width, projection width): ViT-H (1280, 1024), ViT-bigG (1664, 1280); the project's
tiny random-weight stand-ins are (64, 32) for ViT-H and (96, 48) for ViT-bigG (nodes/tiny/ipadapter.py).

``.bin`` files have no header: they are read once through ``torch.load(weights_only=True)`` and their
description is cached by (path, size, mtime). FaceID presets are in the table (the FaceID unified loader uses
the same resolver); their layouts are the ``faceid*`` variants that files.py reports for FaceID files. A FaceID-plus
adapter's encoder is matched by the hidden width of its face-crop encoder (``IPAdapterInfo.clip_width``); the
other FaceID adapters need none (a ViT-H file is taken when there is one, as the pack always loads it).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from .encoder import clip_vision_config_from_shapes
from .files import (
    ARCH_NAMES,
    EncoderInfo,
    IPAdapterFileError,
    IPAdapterInfo,
    UNetInfo,
    check_pairing,
    inspect_ipadapter,
)

ENCODER_FAMILIES = {
    "ViT-H": ((1280, 1024), (64, 32)),
    "ViT-bigG": ((1664, 1280), (96, 48)),
}


@dataclass(frozen=True)
class Preset:
    """One unified-loader choice: the adapter layouts it accepts and the encoder family they must use."""

    name: str  # the exact ComfyUI choice string
    layouts: tuple[str, ...]  # IPAdapterInfo.variant values accepted
    family: str | None  # required encoder family, None = whatever the adapter fits
    archs: tuple[str, ...] = ("sd15", "sdxl")
    name_has: str = ""  # look-alike layouts only: the file name must contain this
    name_lacks: tuple[str, ...] = ()
    faceid: bool = False
    example: str = ""  # a file name users know, for messages


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("LIGHT - SD1.5 only (low strength)", ("light",), "ViT-H", ("sd15",),
           example="ip-adapter_sd15_light_v11.bin"),
    Preset("STANDARD (medium strength)", ("base",), "ViT-H", example="ip-adapter_sd15.safetensors"),
    Preset("VIT-G (medium strength)", ("base",), "ViT-bigG", example="ip-adapter_sdxl.safetensors"),
    Preset("PLUS (high strength)", ("plus",), "ViT-H", name_lacks=("composition",),
           example="ip-adapter-plus_sd15.safetensors"),
    Preset("PLUS FACE (portraits)", ("plus-face",), "ViT-H", example="ip-adapter-plus-face_sd15.safetensors"),
    Preset("FULL FACE - SD1.5 only (portraits stronger)", ("full-face",), "ViT-H", ("sd15",),
           example="ip-adapter-full-face_sd15.safetensors"),
    # IPAdapterUnifiedLoaderCommunity
    Preset("Composition", ("plus",), "ViT-H", name_has="composition", example="ip_plus_composition_sd15.safetensors"),
    Preset("Kolors", ("kolors",), None, (), example="Kolors-IP-Adapter-Plus.bin"),
    # IPAdapterUnifiedLoaderFaceID (the node is the FaceID family's; the resolution is shared)
    Preset("FACEID", ("faceid",), None, faceid=True, example="ip-adapter-faceid_sd15.bin"),
    Preset("FACEID PLUS - SD1.5 only", ("faceid-plus",), "ViT-H", ("sd15",), faceid=True,
           example="ip-adapter-faceid-plus_sd15.bin"),
    Preset("FACEID PLUS V2", ("faceid-plusv2",), "ViT-H", faceid=True, example="ip-adapter-faceid-plusv2_sd15.bin"),
    Preset("FACEID PORTRAIT (style transfer)", ("faceid-portrait",), None, faceid=True,
           example="ip-adapter-faceid-portrait-v11_sd15.bin"),
    Preset("FACEID PORTRAIT UNNORM - SDXL only (strong)", ("faceid-portrait-unnorm",), None, ("sdxl",),
           faceid=True, example="ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
)}
UNIFIED_PRESETS = tuple(list(PRESETS)[:6])
COMMUNITY_PRESETS = ("Composition", "Kolors")


class PresetError(ValueError):
    """No file pair fits a preset; the message says what was found and what each file is."""


def encoder_family(hidden: int, projection: int) -> str | None:
    for name, members in ENCODER_FAMILIES.items():
        if (hidden, projection) in members:
            return name
    return None


def adapter_family(info: IPAdapterInfo) -> str | None:
    """The encoder family an adapter was trained on, from the width it consumes (FaceID plus: the CLIP width of
    its face-crop encoder; other FaceID adapters need no CLIP vision encoder: None)."""
    if info.encoder_input == "face_embeds":
        if info.clip_width is None:
            return None
        return next((n for n, members in ENCODER_FAMILIES.items() if any(m[0] == info.clip_width for m in members)),
                    None)
    idx = 1 if info.encoder_input == "image_embeds" else 0
    for name, members in ENCODER_FAMILIES.items():
        if any(m[idx] == info.encoder_width for m in members):
            return name
    return None


# -- reading the folders (headers only, cached by file fingerprint) -----------------------------------------

_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def _key(path: Path) -> tuple:
    if path.is_dir():
        cfg = path / "config.json"
        st = cfg.stat() if cfg.exists() else path.stat()
    else:
        st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _cached(path: Path, fn):
    key = _key(path)
    with _lock:
        if key in _cache:
            return _cache[key]
    try:
        value = fn(path)
    except (IPAdapterFileError, OSError, ValueError, KeyError) as exc:
        value = exc
    with _lock:
        _cache[key] = value
    return value


def inspect_clip_vision(path: str | Path) -> EncoderInfo:
    """Widths of a CLIP vision encoder from its config or safetensors header (no tensor is read)."""
    path = Path(path)
    if path.is_dir():
        cfg = json.loads((path / "config.json").read_text())
        cfg = cfg.get("vision_config", cfg)
        return EncoderInfo(int(cfg["hidden_size"]), int(cfg["projection_dim"]), int(cfg.get("image_size", 224)))
    if path.suffix.lower() != ".safetensors":
        raise ValueError("not a .safetensors file or diffusers folder, the forms ipgraph reads CLIP vision from")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"not a readable safetensors file ({exc.__class__.__name__})") from exc
    if "config" in meta:
        cfg = json.loads(meta["config"])
        return EncoderInfo(int(cfg["hidden_size"]), int(cfg["projection_dim"]), int(cfg.get("image_size", 224)))
    if "visual_projection.weight" not in shapes or "vision_model.embeddings.patch_embedding.weight" not in shapes:
        raise ValueError("not a CLIP vision encoder in the transformers layout (no vision_model./visual_projection "
                         "weights)")
    cfg = clip_vision_config_from_shapes(shapes)
    return EncoderInfo(int(cfg.hidden_size), int(cfg.projection_dim), int(cfg.image_size))


def scan(runtime, kind: str) -> list[tuple[str, object]]:
    """``[(name, info or the exception saying why the file cannot serve)]`` for every file of ``kind``."""
    fn = inspect_ipadapter if kind == "ipadapter" else inspect_clip_vision
    folder = runtime.model_folder(kind)
    return [(name, _cached(folder / name, fn)) for name in runtime.list_models(kind)]


# -- describing files for messages ---------------------------------------------------------------------------

def describe_adapter(name: str, info) -> str:
    if isinstance(info, Exception):
        return _why(name, info)
    fam = adapter_family(info)
    kind = {"image_embeds": "image_embeds", "face_embeds": "InsightFace face embeddings"}.get(
        info.encoder_input, "penultimate hidden states")
    enc = f"{fam} " if fam else ""
    base = f"{name}: {info.variant} adapter for {ARCH_NAMES.get(info.arch, 'an unknown base model')}, needs "
    if info.encoder_input == "face_embeds":
        clip = (f" and {enc}penultimate hidden states of width {info.clip_width} for the face crop"
                if info.clip_width else "")
        return f"{base}{kind} of width {info.encoder_width}{clip}"
    return f"{base}{enc}{kind} of width {info.encoder_width}"


def describe_encoder(name: str, info) -> str:
    if isinstance(info, Exception):
        return _why(name, info)
    fam = encoder_family(info.hidden_size, info.projection_dim)
    return (f"{name}: {fam or 'custom'} CLIP vision encoder (hidden width {info.hidden_size}, "
            f"projection {info.projection_dim})")


def _why(name: str, exc: Exception) -> str:
    """'x.bin is a FaceID IP-Adapter, ...' when the reason names the file already, else 'x.bin: reason'."""
    text = str(exc).rstrip(".") or exc.__class__.__name__
    return text if text.startswith(Path(name).name) else f"{name}: {text}"


# -- resolution -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolution:
    preset: str
    adapter_name: str
    adapter: IPAdapterInfo
    encoder_name: str | None  # None: a FaceID (not plus) preset and no CLIP vision file (none is needed)
    encoder: EncoderInfo | None


def encoder_fits(info: IPAdapterInfo, enc: EncoderInfo) -> bool:
    """Whether ``enc`` serves the adapter: its widths (FaceID plus: hidden width = the face-crop encoder's)."""
    if info.encoder_input == "face_embeds":
        return info.clip_width is None or enc.hidden_size == info.clip_width
    return not check_pairing(info, enc)


def _fits_preset(preset: Preset, name: str, info: IPAdapterInfo) -> bool:
    low = name.lower()
    if info.variant not in preset.layouts:
        return False
    if preset.name_has and preset.name_has not in low:
        return False
    if any(s in low for s in preset.name_lacks):
        return False
    return preset.family is None or adapter_family(info) == preset.family


def resolve(preset_name: str, unet: UNetInfo, adapters: list, encoders: list) -> Resolution:
    """The (adapter, encoder) pair a preset means for this UNet, or PresetError with the full inventory."""
    preset = PRESETS.get(preset_name)
    if preset is None:
        raise PresetError(f"there is no preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    arch = ARCH_NAMES.get(unet.arch, "this model")
    if not preset.archs:
        raise PresetError(f"preset {preset.name!r} is for the {preset.name} base model, which ipgraph does not run")
    if unet.arch not in preset.archs:
        only = " and ".join(ARCH_NAMES[a] for a in preset.archs) or "a base model ipgraph does not run"
        raise PresetError(f"preset {preset.name!r} exists for {only} only, and the model is {arch}")
    inventory = "; ".join(describe_adapter(n, i) for n, i in adapters) or "no files at all"
    candidates = [(n, i) for n, i in adapters if not isinstance(i, Exception) and _fits_preset(preset, n, i)]
    fitting = [(n, i) for n, i in candidates if not check_pairing(i, unet=unet)]
    fitting.sort(key=lambda item: (not item[0].endswith(".safetensors"), item[0]))  # no weights-only load needed
    if not fitting:
        what = "a FaceID IP-Adapter" if preset.faceid else f"a {'/'.join(preset.layouts)} IP-Adapter"
        fam = f" made for a {preset.family} encoder" if preset.family else ""
        wrong_base = f" ({len(candidates)} of that kind are for another base model)" if candidates else ""
        raise PresetError(f"preset {preset.name!r} needs {what}{fam} for {arch} (e.g. {preset.example}) and "
                          f"models/ipadapter has none{wrong_base}. Found: {inventory}.")
    readable = [(n, e) for n, e in encoders if not isinstance(e, Exception)]
    for name, info in fitting:
        if info.encoder_input == "face_embeds" and info.clip_width is None:  # ViT-H if there is one, else none
            vit_h = [(n, e) for n, e in readable if encoder_family(e.hidden_size, e.projection_dim) == "ViT-H"]
            return Resolution(preset.name, name, info, *(vit_h[0] if vit_h else (None, None)))
        for enc_name, enc in readable:
            if encoder_fits(info, enc):
                return Resolution(preset.name, name, info, enc_name, enc)
    name, info = fitting[0]
    listing = "; ".join(describe_encoder(n, e) for n, e in encoders) or "no files at all"
    raise PresetError(f"preset {preset.name!r} found the adapter {name} but no CLIP vision encoder in "
                      f"models/clip_vision fits it (it needs {describe_adapter(name, info).split('needs ', 1)[1]}). "
                      f"Found: {listing}.")


def folders_fingerprint(kinds: tuple[str, ...]):
    """A node fingerprint for loaders that pick files by reading a folder: their answer depends on every file
    in the ``kinds`` folders, so all of them are fingerprinted (stat only)."""
    def fingerprint(literals: dict, runtime) -> str:
        if runtime is None:
            return ""
        from ..core.runtime import ModelNotFound, file_fingerprint

        parts = []
        for kind in kinds:
            for name in runtime.list_models(kind):
                try:
                    parts.append(file_fingerprint(runtime.model_path(kind, name)))
                except ModelNotFound:
                    pass
        return "|".join(parts)

    return fingerprint

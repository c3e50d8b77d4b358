"""FaceID nodes: ComfyUI_IPAdapter_plus's IPAdapterUnifiedLoaderFaceID, IPAdapterFaceID and
IPAdapterInsightFaceLoader, and ipgraph's LoadFaceIDAdapter, LoadFaceEmbeds, FaceEmbedsFromImage, FaceIDApply.

One implementation (:func:`apply_faceid`): face embeds (and, for plus, the CLIP vision penultimate states of
the aligned face crops) are projected into image tokens here, so the engine caches them, and the model gets
an :class:`IPAdapterPatch` (the decoupled cross-attention of ipgraph's IP-Adapter) plus the adapter's own
LoRA as a :class:`WeightPatch` when the file carries one. Negatives are diffusers': zero face embeds, and
for plus the encoder's output for zero pixel values (or ``image_negative``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import ModelHandle
from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from ..ipadapter import IPAdapterPatch, check_pairing, combine_embeds, describe_unet, encode, layer_weights
from ..ipadapter.clip_vision import ClipVision, ClipVisionOutput
from ..ipadapter.files import IPAdapterWeights
from ..ipadapter.presets import folders_fingerprint
from ..lora.apply import lora_patches
from ..lora.files import load_lora
from .files import FACE_EMBED_WIDTH, FaceIDAdapter, FaceIDFileError, load_faceid
from .insightface import FaceEmbeds, InsightFace, InsightFaceError, face_embeds, load_insightface

WeightType = Literal["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                     "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                     "style and composition", "style transfer precise", "composition precise"]
CombineMethod = Literal["concat", "add", "subtract", "average", "norm average"]
EmbedsScaling = Literal["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
FACEID_PRESETS = ("FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)")
PROVIDERS = Literal["CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML"]


@dataclass(frozen=True, eq=False)
class FaceIDPipeline:
    """What IPAdapterUnifiedLoaderFaceID hands on as its IPADAPTER: the adapter, its encoder, InsightFace."""

    adapter: FaceIDAdapter
    clip_vision: ClipVision | None
    insightface: InsightFace | None

    def cache_nbytes(self) -> int:
        return 0


# -- the one implementation ------------------------------------------------------------------------------

def _adapter_of(value: Any) -> FaceIDAdapter:
    if isinstance(value, FaceIDPipeline):
        return value.adapter
    if isinstance(value, FaceIDAdapter):
        return value
    if isinstance(value, IPAdapterWeights):
        raise ValueError(f"input ipadapter: {Path(value.info.path).name} is a {value.info.variant} IP-Adapter, not "
                         "a FaceID one; use IPAdapterAdvanced for it, or load an ip-adapter-faceid file")
    raise ValueError(f"input ipadapter: expected a FaceID adapter, got {type(value).__name__}")


def _plus_embeds(adapter: FaceIDAdapter, cv: ClipVision | None, crops: torch.Tensor | None,
                 clip_output: ClipVisionOutput | None, negative_image: torch.Tensor | None):
    """(cond, uncond) CLIP penultimate states ``[N, T, W]`` for FaceID-plus."""
    cv = cv or getattr(clip_output, "encoder", None)
    if clip_output is not None:
        cond = clip_output.penultimate
    else:
        if cv is None:
            raise ValueError(f"input clip_vision: {Path(adapter.weights.info.path).name} is a FaceID-plus adapter: "
                             "it also needs a CLIP vision encoder (ViT-H) for the face crop")
        if crops is None:
            raise ValueError("input face_embeds: FaceID-plus needs the aligned face crops; make the embeds from an "
                             "image (InsightFace) or connect clip_vision_output")
        cond = cv.encode_images(crops, crop="center")[1]
    if cond.shape[-1] != adapter.clip_width:
        raise ValueError(f"input clip_vision: {Path(adapter.weights.info.path).name} needs an image encoder with "
                         f"hidden width {adapter.clip_width}, the one given has {cond.shape[-1]}")
    if negative_image is not None and cv is not None:
        uncond = cv.encode_images(negative_image)[1]
    elif cv is not None:
        size = int(cv.model.config.image_size)
        uncond = encode(cv.model, torch.zeros(1, 3, size, size))[1].float().cpu()
    else:
        raise ValueError("input clip_vision: FaceID-plus makes its negative with the image encoder; connect one")
    return cond.float(), uncond.float()


def apply_faceid(model: ModelHandle, ipadapter: Any, faces: FaceEmbeds, *, clip_vision: ClipVision | None = None,
                 clip_output: ClipVisionOutput | None = None, image_negative: torch.Tensor | None = None,
                 weight: float = 1.0, weight_faceidv2: float = 1.0, weight_type: str = "linear",
                 combine: str = "concat", start_at: float = 0.0, end_at: float = 1.0,
                 embeds_scaling: str = "V only", attn_mask: torch.Tensor | None = None,
                 lora_strength: float = 0.0) -> ModelHandle:
    """The model with the FaceID patch (and the adapter's own LoRA at ``lora_strength``)."""
    adapter = _adapter_of(ipadapter)
    info = adapter.weights.info
    problems = check_pairing(info, unet=describe_unet(model.unet))
    if problems:
        raise ValueError(f"input ipadapter: {Path(info.path).name} does not fit the model {Path(model.source).name}: "
                         f"{problems[0]} Load an adapter made for it.")
    embeds = faces.embeds.float()
    if embeds.ndim != 2 or embeds.shape[-1] != FACE_EMBED_WIDTH:
        raise ValueError(
            f"input face_embeds: {faces.source or 'these embeds'} have shape {list(embeds.shape)}, but a FaceID "
            f"adapter needs face-ID embeddings [faces, {FACE_EMBED_WIDTH}] from InsightFace (IPAdapterInsightFaceLoader"
            ", LoadFaceEmbeds); CLIP image embeddings do not work with FaceID")
    if weight_type in ("style transfer precise", "composition precise"):
        raise ValueError(f"input weight_type: {weight_type!r} is not supported by ipgraph's FaceID; use "
                         "'style transfer' or 'composition'")
    clip_cond = clip_uncond = None
    if adapter.is_plus:
        clip_cond, clip_uncond = _plus_embeds(adapter, clip_vision, faces.crops, clip_output, image_negative)
        if clip_cond.shape[0] != embeds.shape[0]:
            raise ValueError(f"input face_embeds: {embeds.shape[0]} faces but {clip_cond.shape[0]} CLIP encodings")
    if embeds.shape[0] > 1 and combine != "concat":
        embeds = combine_embeds(embeds, combine)
        if clip_cond is not None:
            clip_cond = combine_embeds(clip_cond, combine)
    n = embeds.shape[0]
    from .files import project_faceid

    face_all = torch.cat([torch.zeros_like(embeds), embeds])  # [negatives; positives], diffusers' batch layout
    clip_all = None
    if clip_cond is not None:
        clip_all = torch.cat([clip_uncond.expand(n, *clip_uncond.shape[1:]) if clip_uncond.shape[0] == 1
                              else clip_uncond[:n], clip_cond])
    tokens = project_faceid(adapter, face_all, clip_all, weight_faceidv2).float().cpu()
    layers = None if weight_type == "linear" else layer_weights(weight_type, weight, model.arch)
    mask = None
    if attn_mask is not None:
        mask = attn_mask.detach().float().cpu()
        mask = mask[None] if mask.ndim == 2 else mask
    patch = IPAdapterPatch(adapter.weights, tokens[n:], tokens[:n], weight=weight, layer_weights=layers,
                           start_at=start_at, end_at=end_at, mask=mask, embeds_scaling=embeds_scaling)
    if lora_strength != 0:
        lora = adapter.lora_for(model.unet)
        if lora is not None:
            model_patch, _ = lora_patches(lora, model, None, lora_strength, 0.0)
            if model_patch is not None:
                model = model.with_patch(model_patch)
    return model.with_patch(patch)


# -- loaders ------------------------------------------------------------------------------------------

def _check_faceid_file(path: Path):
    try:
        load_faceid(path)
    except FaceIDFileError as exc:
        yield str(exc)


def _faceid_file(runtime, path: Path) -> FaceIDAdapter:
    return runtime.models.load(("faceid", str(path)), lambda: load_faceid(path), path=path)


class LoadFaceIDAdapterIn(NodeInputs):
    name: str = ModelName("ipadapter", "FaceID adapter in models/ipadapter, e.g. ip-adapter-faceid-plusv2_sd15.bin")


class IPAdapterOut(NodeOutputs):
    ipadapter: Any = Output("IPADAPTER")


@node("LoadFaceIDAdapter", category="loaders", check=model_file_check("ipadapter", _check_faceid_file),
      fingerprint=model_file_fingerprint("ipadapter"))
def load_faceid_adapter(inp: LoadFaceIDAdapterIn, ctx: NodeContext) -> IPAdapterOut:
    """Load an h94 FaceID adapter (faceid, faceid-plus, faceid-plusv2, faceid-portrait; SD1.5 or SDXL)."""
    runtime = runtime_of(ctx)
    return IPAdapterOut(ipadapter=_faceid_file(runtime, runtime.model_path("ipadapter", inp.name)))


class LoadFaceEmbedsIn(NodeInputs):
    name: str = ModelName("embeds", "face embeddings in models/embeds: .npy (np.save of [512] or [faces, 512], as "
                                    "the reference code writes normed_embedding), .safetensors, or .pt/.bin")


class FaceEmbedsOut(NodeOutputs):
    face_embeds: Any = Output("FACE_EMBEDS")


def read_face_embeds(path: Path) -> torch.Tensor:
    """A ``[faces, D]`` float tensor from .npy / .safetensors / weights-only .pt/.bin (no pickles)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = torch.from_numpy(np.load(str(path), allow_pickle=False).astype(np.float32))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            key = next((k for k in ("faceid_embeds", "face_embeds", "embeds") if k in tensors), None)
            if key is None and len(tensors) != 1:
                raise ValueError(f"{path.name} holds {len(tensors)} tensors; name the face embeddings "
                                 "'faceid_embeds'")
            data = tensors[key] if key else next(iter(tensors.values()))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path.name} could not be read as face embeddings ({exc.__class__.__name__})") from exc
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{path.name} holds a {type(data).__name__}, not a tensor")
    data = data.float()
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data[None] if data.ndim == 1 else data


@node("LoadFaceEmbeds", category="ipadapter/faceid", fingerprint=model_file_fingerprint("embeds"),
      check=model_file_check("embeds"))
def load_face_embeds(inp: LoadFaceEmbedsIn, ctx: NodeContext) -> FaceEmbedsOut:
    """Load precomputed face-ID embeddings (no InsightFace needed; FaceID-plus then needs clip_vision_output)."""
    path = runtime_of(ctx).model_path("embeds", inp.name)
    try:
        embeds = read_face_embeds(path)
    except ValueError as exc:
        raise ValueError(f"input name: {exc}") from None
    return FaceEmbedsOut(face_embeds=FaceEmbeds(embeds, None, path.name))


def _insightface(runtime, name: str, provider: str) -> InsightFace:
    try:
        return runtime.models.load(("insightface", name, provider),
                                   lambda: load_insightface(runtime.models_dir, name, provider))
    except InsightFaceError as exc:
        raise ValueError(str(exc)) from None


class InsightFaceLoaderIn(NodeInputs):
    provider: Literal["CPU", "CUDA", "ROCM"] = "CPU"
    model_name: Literal["buffalo_l", "antelopev2"] = "buffalo_l"


class InsightFaceOut(NodeOutputs):
    INSIGHTFACE: Any = Output("INSIGHTFACE")


@node("IPAdapterInsightFaceLoader", category="ipadapter/loaders", display_name="IPAdapter InsightFace Loader")
def insightface_loader(inp: InsightFaceLoaderIn, ctx: NodeContext) -> InsightFaceOut:
    """Open an InsightFace pack from models/insightface/models/<model_name> (never downloaded)."""
    return InsightFaceOut(INSIGHTFACE=_insightface(runtime_of(ctx), inp.model_name, inp.provider))


class FaceEmbedsFromImageIn(NodeInputs):
    insightface: Any = Socket("INSIGHTFACE")
    image: Any = Socket("IMAGE", description="photos with a face each, or aligned face crops")
    aligned: bool = Field(False, description="the images are already aligned face crops: skip detection")
    crop_size: int = Field(224, ge=64, le=1024, description="face crop size for FaceID-plus (224 SD1.5, 256 SDXL)")


@node("FaceEmbedsFromImage", category="ipadapter/faceid")
def face_embeds_from_image(inp: FaceEmbedsFromImageIn, ctx: NodeContext) -> FaceEmbedsOut:
    """Detect, align and embed one face per image with InsightFace (normed ArcFace embeddings)."""
    try:
        faces = face_embeds(inp.insightface, inp.image, inp.crop_size, inp.aligned)
    except InsightFaceError as exc:
        raise ValueError(str(exc)) from None
    return FaceEmbedsOut(face_embeds=faces)


# -- apply (native) -----------------------------------------------------------------------------------

class FaceIDApplyIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER", description="a FaceID adapter (LoadFaceIDAdapter)")
    face_embeds: Any = Socket("FACE_EMBEDS")
    clip_vision: Any = Socket("CLIP_VISION", optional=True, description="plus only: encodes the face crops")
    clip_vision_output: Any = Socket("CLIP_VISION_OUTPUT", optional=True,
                                     description="plus only: the face crops already encoded")
    attn_mask: Any = Socket("MASK", optional=True)
    weight: float = Field(1.0, ge=-1.0, le=3.0)
    weight_faceidv2: float = Field(1.0, ge=-1.0, le=5.0, description="plus v2: weight of the ID shortcut")
    lora_strength: float = Field(1.0, ge=0.0, le=1.0, description="the adapter's own LoRA (0 = not applied)")
    weight_type: WeightType = "linear"
    combine_embeds: CombineMethod = "concat"
    start_at: float = Field(0.0, ge=0.0, le=1.0)
    end_at: float = Field(1.0, ge=0.0, le=1.0)
    embeds_scaling: EmbedsScaling = "V only"


class ModelOut(NodeOutputs):
    model: Any = Output("MODEL")


@node("FaceIDApply", category="ipadapter/faceid")
def faceid_apply(inp: FaceIDApplyIn, ctx: NodeContext) -> ModelOut:
    """Condition the model on face-ID embeddings (FaceID, plus, plus v2, portrait) with the adapter's LoRA."""
    with _encoders_on_device(ctx, inp.clip_vision, getattr(inp.clip_vision_output, "encoder", None)):
        model = apply_faceid(inp.model, inp.ipadapter, inp.face_embeds, clip_vision=inp.clip_vision,
                             clip_output=inp.clip_vision_output, weight=inp.weight,
                             weight_faceidv2=inp.weight_faceidv2,
                             weight_type=inp.weight_type, combine=inp.combine_embeds, start_at=inp.start_at,
                             end_at=inp.end_at, embeds_scaling=inp.embeds_scaling, attn_mask=inp.attn_mask,
                             lora_strength=inp.lora_strength)
    return ModelOut(model=model)


def _encoders_on_device(ctx, *encoders):
    """The CLIP vision encoders on the compute device while FaceID-plus encodes the face crops."""
    return runtime_of(ctx).models.on_device(*[cv.model for cv in encoders if cv is not None], once_per_job=True)


# -- ComfyUI_IPAdapter_plus -------------------------------------------------------------------------------

# The LoRA a FaceID preset loads with its adapter (ComfyUI_IPAdapter_plus's utils.py patterns, per SD1.5 / SDXL);
# portrait adapters have none. The file named after the adapter (<adapter stem>_lora.safetensors) is tried first.
_LORA_PATTERNS = {
    "faceid": (r"faceid.sd15.lora\.safetensors$", r"faceid.sdxl.lora\.safetensors$"),
    "faceid-plus": (r"faceid.plus.sd15.lora\.safetensors$", None),
    "faceid-plusv2": (r"faceid.plusv2.sd15.lora\.safetensors$", r"faceid.plusv2.sdxl.lora\.safetensors$"),
}


def _find(names: list[str], pattern: str) -> str | None:
    return next((n for n in names if re.search(pattern, n, re.IGNORECASE)), None)


def _faceid_lora(runtime, adapter: FaceIDAdapter, model: ModelHandle, preset: str, strength: float):
    """The model with the adapter's LoRA at ``strength``: the separate file users download, else the LoRA the
    adapter file carries; a preset that needs one and finds neither is a sentence."""
    patterns = _LORA_PATTERNS.get(adapter.variant)
    if patterns is None or strength <= 0:
        return model
    stem = Path(adapter.weights.info.path).stem.lower()
    names = runtime.list_models("loras")
    pattern = patterns[1 if model.arch == "sdxl" else 0]
    name = next((n for n in names if Path(n).stem.lower() == f"{stem}_lora"), None) or (
        _find(names, pattern) if pattern else None)
    if name is not None:
        path = runtime.model_path("loras", name)
        lora = runtime.models.load(("lora", str(path)), lambda: load_lora(path), path=path)
    else:
        lora = adapter.lora_for(model.unet)
    if lora is None:
        raise ValueError(f"input preset: {preset} needs the LoRA that goes with {Path(adapter.weights.info.path).name}"
                         f" and found none: {Path(adapter.weights.info.path).name} carries no LoRA weights and "
                         f"{runtime.model_folder('loras')} has no {stem}_lora.safetensors (nor a file matching "
                         f"{pattern}); put the adapter's *_lora.safetensors there, or set lora_strength to 0")
    patch, _ = lora_patches(lora, model, None, strength, 0.0)
    return model.with_patch(patch) if patch is not None else model


_faceid_folders_fingerprint = folders_fingerprint(("ipadapter", "clip_vision", "loras"))


class UnifiedLoaderFaceIDIn(NodeInputs):
    model: Any = Socket("MODEL")
    preset: Literal[FACEID_PRESETS] = "FACEID"  # type: ignore[valid-type]
    lora_strength: float = Field(0.6, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})
    provider: PROVIDERS = "CPU"
    ipadapter: Any = Socket("IPADAPTER", optional=True)


class UnifiedLoaderFaceIDOut(NodeOutputs):
    MODEL: Any = Output("MODEL")
    ipadapter: Any = Output("IPADAPTER")


@node("IPAdapterUnifiedLoaderFaceID", category="ipadapter/faceid", display_name="IPAdapter Unified Loader FaceID",
      fingerprint=_faceid_folders_fingerprint)
def unified_loader_faceid(inp: UnifiedLoaderFaceIDIn, ctx: NodeContext) -> UnifiedLoaderFaceIDOut:
    """The preset's FaceID adapter and CLIP vision encoder read from the files' weights (the resolver of
    IPAdapterUnifiedLoader), the adapter's LoRA at lora_strength, and InsightFace buffalo_l."""
    from ..ipadapter.plus_nodes import _load_clip_vision
    from ..ipadapter.presets import PresetError, resolve, scan

    runtime = runtime_of(ctx)
    model: ModelHandle = inp.model
    try:
        found = resolve(inp.preset, describe_unet(model.unet), scan(runtime, "ipadapter"), scan(runtime, "clip_vision"))
    except PresetError as exc:
        raise ValueError(f"input preset: {exc}") from None
    chained = inp.ipadapter if isinstance(inp.ipadapter, FaceIDPipeline) else None
    path = runtime.model_path("ipadapter", found.adapter_name)
    if chained is not None and chained.adapter.weights.info.path == str(path):
        adapter = chained.adapter
    else:
        adapter = _faceid_file(runtime, path)
    clip_vision = None
    if found.encoder_name is not None:
        c_path = runtime.model_path("clip_vision", found.encoder_name)
        chained_cv = getattr(inp.ipadapter, "clip_vision", None)
        clip_vision = chained_cv if getattr(chained_cv, "source", None) == str(c_path) else \
            _load_clip_vision(runtime, c_path)
    model = _faceid_lora(runtime, adapter, model, inp.preset, inp.lora_strength)
    face = _insightface(runtime, "buffalo_l", inp.provider)
    return UnifiedLoaderFaceIDOut(MODEL=model, ipadapter=FaceIDPipeline(adapter, clip_vision, face))


class IPAdapterFaceIDIn(NodeInputs):
    model: Any = Socket("MODEL")
    ipadapter: Any = Socket("IPADAPTER")
    image: Any = Socket("IMAGE")
    weight: float = Field(1.0, ge=-1.0, le=3.0, json_schema_extra={"step": 0.05})
    weight_faceidv2: float = Field(1.0, ge=-1.0, le=5.0, json_schema_extra={"step": 0.05})
    weight_type: WeightType = "linear"
    combine_embeds: CombineMethod = "concat"
    start_at: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.001})
    end_at: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.001})
    embeds_scaling: EmbedsScaling = "V only"
    image_negative: Any = Socket("IMAGE", optional=True)
    attn_mask: Any = Socket("MASK", optional=True)
    clip_vision: Any = Socket("CLIP_VISION", optional=True)
    insightface: Any = Socket("INSIGHTFACE", optional=True)


class IPAdapterFaceIDOut(NodeOutputs):
    MODEL: Any = Output("MODEL")
    face_image: Any = Output("IMAGE", description="the aligned face crops")


@node("IPAdapterFaceID", category="ipadapter/faceid", display_name="IPAdapter FaceID")
def ipadapter_faceid(inp: IPAdapterFaceIDIn, ctx: NodeContext) -> IPAdapterFaceIDOut:
    """FaceID from photos: InsightFace finds, aligns and embeds each face, then the FaceID adapter applies."""
    pipeline = inp.ipadapter if isinstance(inp.ipadapter, FaceIDPipeline) else None
    adapter = _adapter_of(inp.ipadapter)
    face = inp.insightface or (pipeline.insightface if pipeline else None)
    if face is None:
        raise ValueError("input insightface: FaceID adapters need InsightFace; connect IPAdapterInsightFaceLoader "
                         "or load the adapter with IPAdapterUnifiedLoaderFaceID")
    cv = inp.clip_vision or (pipeline.clip_vision if pipeline else None)
    crop = 256 if inp.model.arch == "sdxl" else 224
    try:
        faces = face_embeds(face, inp.image, crop)
    except InsightFaceError as exc:
        raise ValueError(str(exc)) from None
    with _encoders_on_device(ctx, cv):
        model = apply_faceid(inp.model, adapter, faces, clip_vision=cv, image_negative=inp.image_negative,
                             weight=inp.weight, weight_faceidv2=inp.weight_faceidv2, weight_type=inp.weight_type,
                             combine=inp.combine_embeds, start_at=inp.start_at, end_at=inp.end_at,
                             embeds_scaling=inp.embeds_scaling, attn_mask=inp.attn_mask)
    return IPAdapterFaceIDOut(MODEL=model, face_image=faces.crops)

"""Precomputed IP-Adapter image embeddings (EMBEDS): IPAdapterEncoder, SaveImageEmbeds, LoadImageEmbeds.

Why a type of its own rather than CLIP_VISION_OUTPUT: saved embeds must be usable with NO image encoder loaded,
so they hold exactly what one adapter consumes — the raw (pre-projection) CLIP embeds of the references and
their negatives — plus what they are (image_embeds or penultimate hidden states, width, encoder and adapter
names) so a mismatched adapter is refused with a sentence instead of a shape error. Raw rather than
projected embeds are stored because that is diffusers' ``ip_adapter_image_embeds`` convention and because
IPAdapterApply can still combine them (add, average, ...).

File format (``.ipadpt`` or ``.safetensors``): a safetensors file, tensors ``cond`` ``[n, E]`` / ``[n, T, W]``
and optionally ``uncond`` (same shape), string metadata ``format = ipgraph-embeds/1``, ``encoder_input``,
``encoder_width``, ``clip_vision``, ``hidden_size``, ``projection_dim``, ``adapter``. Nothing in it can run code.

LoadImageEmbeds also reads the file diffusers' seed workflow writes
(``torch.save(pipeline.prepare_ip_adapter_image_embeds(...), "x.ipadpt")``): a list with one tensor per adapter,
``[2·B, n, E]`` (base) or ``[2·B, n, T, W]`` (plus), negative half first when guidance was on. It is read with
``torch.load(weights_only=True)`` only (pickled code is refused), row 0 of each half is taken (the B rows are
copies made for ``num_images_per_prompt``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.runtime import ASSETS_DIR, ModelNotFound, file_fingerprint
from ..core.widgets import ModelName, runtime_of
from . import IPAdapterWeights, check_pairing, embeds_for, unconditional_embeds
from .clip_vision import ClipVision

FORMAT = "ipgraph-embeds/1"
KIND_PHRASE = {"image_embeds": "image_embeds (projected CLS)", "hidden_states": "penultimate hidden states"}


class EmbedsFileError(ValueError):
    """An embeds file that cannot be read; the message is a plain sentence."""


@dataclass(frozen=True, eq=False)
class ImageEmbeds:
    """Raw CLIP embeds of n reference images for one adapter kind, with their negatives when known."""

    cond: torch.Tensor  # [n, E] (image_embeds) or [n, T, W] (hidden_states)
    uncond: torch.Tensor | None  # same shape, or None: IPAdapterApply makes the default negative
    encoder_input: str  # "image_embeds" | "hidden_states"
    clip_vision: str = ""  # encoder file name, when known
    adapter: str = ""  # adapter file name they were encoded for, when known

    def __post_init__(self):
        want = 2 if self.encoder_input == "image_embeds" else 3
        if self.cond.ndim != want or self.cond.shape[0] == 0:
            raise EmbedsFileError(f"{self.encoder_input} embeds must be {want}-D with at least one image, "
                                  f"not {list(self.cond.shape)}")
        if self.uncond is not None and self.uncond.shape[1:] != self.cond.shape[1:]:
            raise EmbedsFileError(f"negative embeds {list(self.uncond.shape)} do not match the positive "
                                  f"{list(self.cond.shape)}")

    @property
    def width(self) -> int:
        return int(self.cond.shape[-1])

    def describe(self) -> str:
        src = f" from {self.clip_vision}" if self.clip_vision else ""
        return f"{KIND_PHRASE[self.encoder_input]} of width {self.width}{src}"

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.cond, self.uncond) if t is not None)


def embeds_mismatch(embeds: ImageEmbeds, adapter: IPAdapterWeights) -> str | None:
    """A sentence when ``embeds`` cannot feed ``adapter``; None when they fit."""
    info = adapter.info
    if embeds.encoder_input == info.encoder_input and embeds.width == info.encoder_width:
        return None
    made = f" (encoded for {embeds.adapter})" if embeds.adapter else ""
    return (f"these embeds are {embeds.describe()}{made}, but {Path(info.path).name} ({info.variant}) needs "
            f"{KIND_PHRASE[info.encoder_input]} of width {info.encoder_width}; encode the reference again with "
            "IPAdapterEncoder using this adapter and its matching CLIP vision model")


def encoder_mismatch(adapter: IPAdapterWeights, cv: ClipVision) -> str | None:
    problems = check_pairing(adapter.info, cv.info)
    if not problems:
        return None
    return f"{Path(adapter.info.path).name} does not fit {cv.label}: {problems[0]}"


# -- files ------------------------------------------------------------------------------------------------

def save_embeds(embeds: ImageEmbeds, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"cond": embeds.cond.float().contiguous()}
    if embeds.uncond is not None:
        tensors["uncond"] = embeds.uncond.float().contiguous()
    meta = {"format": FORMAT, "encoder_input": embeds.encoder_input, "encoder_width": str(embeds.width),
            "clip_vision": embeds.clip_vision, "adapter": embeds.adapter}
    save_file(tensors, str(path), metadata=meta)


def _is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON object; torch.save files are zip/pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_embeds(path: Path, adapter_index: int = 0, has_negative: bool = True,
                pack_format: bool = False) -> ImageEmbeds:
    """Read an ipgraph embeds file or a diffusers ``prepare_ip_adapter_image_embeds`` torch.save file.

    ``pack_format``: a bare tensor is ComfyUI_IPAdapter_plus's IPAdapterSaveEmbeds file (``torch.save`` of the
    raw positive embeds: ``[n, E]`` image_embeds or ``[n, T, W]`` hidden states, no negative).
    """
    if not path.is_file():
        raise EmbedsFileError(f"embeds file {path} does not exist")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise EmbedsFileError(f"{path.name} is not a readable embeds file ({exc.__class__.__name__})") from exc
        if meta.get("format") != FORMAT or "cond" not in tensors:
            raise EmbedsFileError(f"{path.name} is a safetensors file but not ipgraph image embeds "
                                  f"(no '{FORMAT}' metadata)")
        return ImageEmbeds(tensors["cond"], tensors.get("uncond"), meta["encoder_input"],
                           meta.get("clip_vision", ""), meta.get("adapter", ""))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code is refused by weights_only, truncated files, ...
        raise EmbedsFileError(f"{path.name} could not be read as embeds with a weights-only load "
                              f"({exc.__class__.__name__}); only tensors and lists of tensors are accepted") from exc
    if isinstance(data, (list, tuple)):
        if not 0 <= adapter_index < len(data):
            raise EmbedsFileError(f"{path.name} holds embeds for {len(data)} adapter(s); adapter_index "
                                  f"{adapter_index} does not exist")
        data = data[adapter_index]
    if not isinstance(data, torch.Tensor):
        raise EmbedsFileError(f"{path.name} holds a {type(data).__name__}, not a tensor or a list of tensors")
    data = data.float()
    if pack_format and data.ndim in (2, 3):
        return ImageEmbeds(data, None, "image_embeds" if data.ndim == 2 else "hidden_states")
    if data.ndim == 2:  # [n, E]: raw positive image_embeds, no batch axis
        return ImageEmbeds(data, None, "image_embeds")
    if data.ndim not in (3, 4):
        raise EmbedsFileError(f"{path.name}: expected diffusers embeds [2B, n, E] or [2B, n, T, W], "
                              f"got {list(data.shape)}")
    kind = "image_embeds" if data.ndim == 3 else "hidden_states"
    if not has_negative:
        return ImageEmbeds(data[0], None, kind)
    if data.shape[0] % 2:
        raise EmbedsFileError(f"{path.name} has an odd batch ({data.shape[0]}) so it has no negative half; "
                              "set has_negative to false")
    return ImageEmbeds(data[data.shape[0] // 2], data[0], kind)


def embeds_path(runtime, name: str) -> Path:
    """models/embeds/<name>, else a bundled demo asset of that name (like LoadImage's assets)."""
    try:
        return runtime.model_path("embeds", name)
    except ModelNotFound:
        candidate = (ASSETS_DIR / name).resolve()
        if ASSETS_DIR.resolve() in candidate.parents and candidate.is_file():
            return candidate
        raise


# -- nodes ---------------------------------------------------------------------------------------------

def encode_for(adapter: IPAdapterWeights, cv: ClipVision, image: torch.Tensor, input_name: str,
               crop: str = "center") -> torch.Tensor:
    """Raw embeds of ``image`` in the form ``adapter`` consumes; clear errors name ``input_name``."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"input {input_name}: the image batch is empty or not an IMAGE [B,H,W,C] ({shape})")
    problem = encoder_mismatch(adapter, cv)
    if problem:
        raise ValueError(f"input clip_vision: {problem}")
    embeds, hidden = cv.encode_images(image, crop)
    return embeds_for(adapter.info, embeds, hidden)


def default_negative(adapter: IPAdapterWeights, cv: ClipVision | None, cond: torch.Tensor) -> torch.Tensor | None:
    """diffusers' negative: zeros for base adapters, the encoder's output on a zero image for plus adapters."""
    if adapter.info.encoder_input == "image_embeds":
        return torch.zeros_like(cond)
    if cv is None:
        return None
    return unconditional_embeds(cv.model, adapter.info, cond).float().cpu()


class EmbedsOut(NodeOutputs):
    embeds: Any = Output("EMBEDS")


def _fit(t: torch.Tensor, n: int) -> torch.Tensor:
    """Resize dim 0 to n (repeat the last row or truncate): one negative for every reference image."""
    if t.shape[0] >= n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])], 0)


class SaveImageEmbedsIn(NodeInputs):
    embeds: Any = Socket("EMBEDS")
    filename_prefix: str = Field("ipgraph_embeds", min_length=1, max_length=100,
                                 description="file name prefix inside models/embeds")


@node("SaveImageEmbeds", category="ipadapter", output_node=True)
def save_image_embeds(inp: SaveImageEmbedsIn, ctx: NodeContext) -> EmbedsOut:
    """Save embeds (safetensors inside, ``.ipadpt`` name) into models/embeds, where LoadImageEmbeds finds them."""
    runtime = runtime_of(ctx)
    folder = runtime.model_folder("embeds")
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", inp.filename_prefix)
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d{5})_\.ipadpt$")
    counter = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0) + 1
    name = f"{stem}_{counter:05d}_.ipadpt"
    save_embeds(inp.embeds, folder / name)
    ctx.set_ui({"embeds": [{"filename": name, "subfolder": "", "type": "embeds"}]})
    return EmbedsOut(embeds=inp.embeds)


class LoadImageEmbedsIn(NodeInputs):
    name: str = ModelName("embeds", "embeds file in models/embeds (.ipadpt / .safetensors)")
    adapter_index: int = Field(0, ge=0, le=15, description="diffusers files: which adapter's tensor to take")
    has_negative: bool = Field(True, description="diffusers files: the first half of the batch is the negative "
                                                  "(true when they were prepared with guidance)")


def _embeds_check(literals: dict, runtime):
    if runtime is None:
        return
    try:
        load_embeds(embeds_path(runtime, literals["name"]), literals["adapter_index"], literals["has_negative"])
    except (ModelNotFound, EmbedsFileError) as exc:
        yield "name", str(exc)


def _embeds_fingerprint(literals: dict, runtime) -> str:
    try:
        return file_fingerprint(embeds_path(runtime, literals["name"]))
    except (ModelNotFound, AttributeError):
        return "missing"


@node("LoadImageEmbeds", category="ipadapter", check=_embeds_check, fingerprint=_embeds_fingerprint)
def load_image_embeds(inp: LoadImageEmbedsIn, ctx: NodeContext) -> EmbedsOut:
    """Load saved embeds; a graph using them needs no CLIP vision encoder."""
    return EmbedsOut(embeds=load_embeds(embeds_path(runtime_of(ctx), inp.name), inp.adapter_index,
                                        inp.has_negative))

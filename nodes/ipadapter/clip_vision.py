"""CLIPVisionLoader and CLIPVisionEncode: the image encoder that turns reference images into IP-Adapter input.

Why the output records its encoder: an adapter only fits embeddings of the width it was trained on (ViT-H
vs ViT-bigG is the most common IP-Adapter mistake), so a CLIP_VISION_OUTPUT carries the encoder's widths and
file name, and the handle itself (to encode the "negative" image of plus adapters later without asking the
user to wire the encoder twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from . import EncoderInfo, describe_encoder, encode, load_clip_vision, preprocess


@dataclass(frozen=True, eq=False)
class ClipVision:
    """A loaded ``CLIPVisionModelWithProjection`` (owned by the model manager, read-only) and its widths."""

    model: Any
    info: EncoderInfo
    source: str  # the file or folder it came from

    @property
    def label(self) -> str:
        """'tiny-clip-vision.safetensors (custom, hidden 64, projection 32)' for messages."""
        return (f"{Path(self.source).name} ({self.info.name}, hidden {self.info.hidden_size}, "
                f"projection {self.info.projection_dim})")

    def encode_images(self, image: torch.Tensor, crop: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
        """IMAGE ``[B,H,W,C]`` -> (image_embeds ``[B,E]``, penultimate hidden states ``[B,T,W]``), CPU float32."""
        if image.ndim != 4 or image.shape[0] == 0:
            raise ValueError(f"the image batch is empty or not [B,H,W,C] (shape {list(image.shape)})")
        pixels = preprocess(image, size=self.info.image_size, crop=crop)
        embeds, hidden = encode(self.model, pixels)
        return embeds.float().cpu(), hidden.float().cpu()

    def cache_nbytes(self) -> int:
        return 0  # weights belong to the model manager


@dataclass(frozen=True, eq=False)
class ClipVisionOutput:
    """What CLIPVisionEncode produced: both encoder outputs IP-Adapters use, and which encoder made them."""

    image_embeds: torch.Tensor  # [B, projection_dim]: projected CLS (base / light adapters)
    penultimate: torch.Tensor  # [B, tokens, hidden_size]: hidden states of the layer before last (plus, full-face)
    hidden_size: int
    projection_dim: int
    source: str  # encoder file
    crop: str
    encoder: ClipVision | None = field(default=None, repr=False)  # to encode negatives for plus adapters

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image_embeds, self.penultimate))


class CLIPVisionLoaderIn(NodeInputs):
    clip_name: str = ModelName("clip_vision", "CLIP vision encoder: a .safetensors file (transformers layout, e.g. "
                                         "CLIP-ViT-H-14-laion2B-s32B-b79K) or a diffusers image_encoder folder")


class CLIPVisionLoaderOut(NodeOutputs):
    CLIP_VISION: Any = Output("CLIP_VISION")


def _inspect_clip_vision(path: Path):
    if path.is_file() and path.suffix.lower() != ".safetensors":
        yield f"{path.name}: CLIP vision encoders are read from .safetensors files or diffusers folders"


@node("CLIPVisionLoader", category="loaders", display_name="Load CLIP Vision",
      check=model_file_check("clip_vision", _inspect_clip_vision, field="clip_name"),
      fingerprint=model_file_fingerprint("clip_vision", field="clip_name"),
      renamed_inputs={"name": "clip_name"}, renamed_outputs={"clip_vision": "CLIP_VISION"})
def clip_vision_loader(inp: CLIPVisionLoaderIn, ctx: NodeContext) -> CLIPVisionLoaderOut:
    """Load a CLIP vision encoder (ViT-H, ViT-bigG, ...) for IP-Adapter."""
    runtime = runtime_of(ctx)
    path = runtime.model_path("clip_vision", inp.clip_name)

    model = runtime.models.load(("clip_vision", str(path)), lambda: load_clip_vision(path, runtime.dtype),
                                 path=path)
    return CLIPVisionLoaderOut(CLIP_VISION=ClipVision(model, describe_encoder(model), str(path)))


class CLIPVisionEncodeIn(NodeInputs):
    clip_vision: Any = Socket("CLIP_VISION")
    image: Any = Socket("IMAGE")
    crop: Literal["center", "none", "pad"] = Field(
        "center", description="center: shortest side to the encoder size, centre crop (diffusers); "
                              "none: squash the whole image; pad: pad to a square with black first")


class CLIPVisionEncodeOut(NodeOutputs):
    CLIP_VISION_OUTPUT: Any = Output("CLIP_VISION_OUTPUT")


@node("CLIPVisionEncode", category="conditioning", display_name="CLIP Vision Encode",
      renamed_outputs={"clip_vision_output": "CLIP_VISION_OUTPUT"})
def clip_vision_encode(inp: CLIPVisionEncodeIn, ctx: NodeContext) -> CLIPVisionEncodeOut:
    """Encode reference images once; any number of IP-Adapter nodes can reuse the result."""
    cv: ClipVision = inp.clip_vision
    with runtime_of(ctx).models.on_device(cv.model, once_per_job=True):
        embeds, hidden = cv.encode_images(inp.image, inp.crop)
    return CLIPVisionEncodeOut(CLIP_VISION_OUTPUT=ClipVisionOutput(
        embeds, hidden, cv.info.hidden_size, cv.info.projection_dim, cv.source, inp.crop, cv))

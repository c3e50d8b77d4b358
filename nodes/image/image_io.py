"""LoadImage, SaveImage, PreviewImage: PNG files in and out, the graph travelling inside saved PNGs.

IMAGE is ``[B,H,W,C]`` float 0..1 and MASK ``[B,H,W]`` float 0..1 (ComfyUI's conventions); LoadImage's mask is
``1 - alpha`` as in ComfyUI (transparent pixels are the region to repaint).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node
from ipgraph.engine.comfy import to_comfy_api

from ..core.runtime import Runtime
from ..core.widgets import image_file_fingerprint, runtime_of

PNG_GRAPH_KEY = "ipgraph"


class ImageFileError(ValueError):
    pass


def open_image(path: Path, max_pixels: int) -> Image.Image:
    """Open an image safely: the size is checked from the header before any pixel is decoded."""
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageFileError(f"{path.name} is not a readable image ({exc})") from None
    if width * height > max_pixels:
        raise ImageFileError(f"{path.name} is {width}x{height}, above the limit of {max_pixels} pixels")
    image = Image.open(path)
    image.load()
    return ImageOps.exif_transpose(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL → IMAGE ``[1,H,W,3]`` float 0..1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy())[None]


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    array = (images.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


class LoadImageIn(NodeInputs):
    image: str = Field(..., min_length=1, description="image file in the input folder",
                       json_schema_extra={"image_upload": True})


class LoadImageOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")
    MASK: Any = Output("MASK", description="1 - alpha (transparent = 1); zeros if the image has no alpha")


def _image_check(literals: dict, runtime: Runtime | None):
    if runtime is None:
        return
    try:
        open_image(runtime.image_path(literals["image"]), runtime.max_pixels).close()
    except (FileNotFoundError, ImageFileError) as exc:
        yield "image", str(exc)


@node("LoadImage", category="image", check=_image_check, fingerprint=image_file_fingerprint("image"),
      display_name="Load Image", renamed_outputs={"image": "IMAGE", "mask": "MASK"})
def load_image(inp: LoadImageIn, ctx: NodeContext) -> LoadImageOut:
    """Load an image (and a mask from its alpha channel)."""
    runtime = runtime_of(ctx)
    image = open_image(runtime.image_path(inp.image), runtime.max_pixels)
    rgb = pil_to_tensor(image)
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha.copy())[None]
    else:
        mask = torch.zeros(rgb.shape[:3])
    return LoadImageOut(IMAGE=rgb, MASK=mask)


class SaveImageIn(NodeInputs):
    images: Any = Socket("IMAGE")
    filename_prefix: str = Field("ComfyUI", min_length=1, max_length=100, description="file name prefix")


class SaveImageOut(NodeOutputs):
    """No outputs, as ComfyUI's SaveImage / PreviewImage (what they show travels in the node's ui result)."""


def _png_info(ctx: NodeContext) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if ctx.graph is not None:
        info.add_text(PNG_GRAPH_KEY, ctx.graph.to_json())
        info.add_text("prompt", json.dumps(to_comfy_api(ctx.graph)))
    workflow = (ctx.extra.get("extra_pnginfo") or {}).get("workflow")
    if workflow is not None:
        info.add_text("workflow", json.dumps(workflow))
    return info


def save_images(images: torch.Tensor, folder: Path, prefix: str, ctx: NodeContext, kind: str) -> dict:
    prefix_path = Path(re.sub(r"[^A-Za-z0-9_./-]", "_", prefix))
    if prefix_path.is_absolute() or ".." in prefix_path.parts:
        raise ValueError(f"filename_prefix {prefix!r} must stay inside the output folder")
    subfolder = prefix_path.parent.as_posix() if prefix_path.parent != Path(".") else ""
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    stem = prefix_path.name
    pattern = re.compile(re.escape(stem) + r"_(\d{5})_\.png$")
    counter = max((int(m.group(1)) for p in target.iterdir() if (m := pattern.match(p.name))), default=0) + 1
    info = _png_info(ctx)
    saved = []
    for image in tensor_to_pils(images):
        name = f"{stem}_{counter:05d}_.png"
        image.save(target / name, pnginfo=info, compress_level=4)
        saved.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": saved}


@node("SaveImage", category="image", output_node=True, display_name="Save Image")
def save_image(inp: SaveImageIn, ctx: NodeContext) -> SaveImageOut:
    """Save PNGs to the output folder, with the graph embedded so `ipgraph run image.png` re-runs it."""
    runtime = runtime_of(ctx)
    ctx.set_ui(save_images(inp.images, runtime.output_dir, inp.filename_prefix, ctx, "output"))
    return SaveImageOut()


class PreviewImageIn(NodeInputs):
    images: Any = Socket("IMAGE")


@node("PreviewImage", category="image", output_node=True, display_name="Preview Image")
def preview_image(inp: PreviewImageIn, ctx: NodeContext) -> SaveImageOut:
    """Show images without keeping them (written to the temporary folder)."""
    runtime = runtime_of(ctx)
    ctx.set_ui(save_images(inp.images, runtime.temp_dir, "preview", ctx, "temp"))
    return SaveImageOut()


def graph_from_png(path: Path) -> dict | None:
    """The graph document saved in a PNG by SaveImage (or a ComfyUI API prompt), or None."""
    try:
        with Image.open(path) as image:
            text = image.info.get(PNG_GRAPH_KEY) or image.info.get("prompt")
    except (UnidentifiedImageError, OSError):
        return None
    return json.loads(text) if text else None

"""Saving an IMAGE batch as one animation: animated WebP / PNG / GIF (Pillow) and MP4 / WebM (PyAV).

The batch is the frame sequence (ComfyUI's convention). The graph travels in the file where the format allows:

* WebP: EXIF as ComfyUI writes it (tag 0x0110 ``prompt:{json}``, then 0x010f, 0x010e, ... for each
  extra_pnginfo entry such as ``workflow``), plus ``ipgraph:{document}``;
* APNG: ComfyUI's ``comf`` chunks after the image data (``prompt``, ``workflow``) plus an ``ipgraph`` tEXt
  chunk, so ``ipgraph run file.png`` re-runs it;
* GIF: a comment extension holding the ipgraph document (GIF has no other text metadata);
* MP4 / WebM: container metadata tags ``prompt``, ``workflow`` and ``ipgraph`` (as ComfyUI's SaveWEBM does).

UI payload (what ComfyUI's frontend shows): ``{"images": [...], "animated": [true]}``. The frontend plays an
animated output in a ``<video>`` element unless the file is .webp or .png; a GIF is therefore reported with
``animated: [false]`` so it is drawn as an ``<img>``, which browsers animate natively.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ipgraph.engine import NodeContext
from ipgraph.engine.comfy import to_comfy_api

from ..image.image_io import PNG_GRAPH_KEY

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
VIDEO_CODECS = {"mp4": ("mp4", "libx264"), "webm-vp9": ("webm", "libvpx-vp9"), "webm-av1": ("webm", "libsvtav1")}


def frames_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE ``[F,H,W,C]`` 0..1 -> ``uint8 [F,H,W,3]`` (alpha dropped)."""
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (3, 4):
        raise ValueError(f"input images: expected an IMAGE batch [frames,H,W,3], got shape {list(images.shape)}")
    return (images[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)


def metadata(ctx: NodeContext | None) -> dict[str, str]:
    """``prompt`` (ComfyUI API JSON), extra_pnginfo entries (``workflow``) and the ipgraph document."""
    out: dict[str, str] = {}
    if ctx is None:
        return out
    if ctx.graph is not None:
        out["prompt"] = json.dumps(to_comfy_api(ctx.graph))
    for key, value in (ctx.extra.get("extra_pnginfo") or {}).items():
        out[key] = json.dumps(value)
    if ctx.graph is not None:
        out[PNG_GRAPH_KEY] = ctx.graph.to_json()
    return out


def frame_ms(fps: float) -> int:
    return int(1000.0 / fps)  # ComfyUI's duration per frame


def write_webp(path: Path, frames: np.ndarray, fps: float, meta: dict, *, lossless=True, quality=80,
               method="default", loop: int = 0) -> None:
    exif = Image.Exif()
    tag = 0x0110
    for key, value in meta.items():
        exif[tag] = f"{key}:{value}"
        tag -= 1
    pils = [Image.fromarray(f) for f in frames]
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=frame_ms(fps), loop=loop, exif=exif,
                 lossless=lossless, quality=quality, method=WEBP_METHODS[method])


def write_apng(path: Path, frames: np.ndarray, fps: float, meta: dict, *, compress_level=4, loop: int = 0) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        if key == PNG_GRAPH_KEY:
            info.add_text(key, value)
        else:
            info.add(b"comf", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"), after_idat=True)
    pils = [Image.fromarray(f) for f in frames]
    pils[0].save(path, pnginfo=info, compress_level=compress_level, save_all=True, append_images=pils[1:],
                 duration=frame_ms(fps), loop=loop)


def write_gif(path: Path, frames: np.ndarray, fps: float, meta: dict, *, loop: int = 0) -> None:
    # a 256-colour palette per frame by fast octree (Pillow's default median cut is ~20x slower, same look)
    pils = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    comment = meta.get(PNG_GRAPH_KEY, "").encode("utf-8")
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=frame_ms(fps), loop=loop,
                 comment=comment, optimize=False, disposal=1)


def write_video(path: Path, frames: np.ndarray, fps: float, meta: dict, *, codec: str = "libx264",
                crf: float = 23.0) -> None:
    """Encode with PyAV (yuv420p; odd sizes are padded by one pixel, as H.264/VP9 need even sides)."""
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1000)
    # MP4 keeps only its standard tags unless told to write custom ones (ffmpeg's movflags=use_metadata_tags)
    options = {"movflags": "use_metadata_tags"} if codec == "libx264" else {}
    with av.open(str(path), mode="w", format="mp4" if codec == "libx264" else "webm", options=options) as container:
        for key, value in meta.items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        if codec == "libvpx-vp9":
            stream.bit_rate = 0  # constant quality mode: crf alone decides
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def output_target(folder: Path, prefix: str, ext: str) -> tuple[Path, str, str]:
    """(path, file name, subfolder) for the next ``prefix_NNNNN_.ext`` (ComfyUI's naming); never outside."""
    prefix_path = Path(re.sub(r"[^A-Za-z0-9_./-]", "_", prefix))
    if prefix_path.is_absolute() or ".." in prefix_path.parts:
        raise ValueError(f"input filename_prefix: {prefix!r} must stay inside the output folder")
    subfolder = prefix_path.parent.as_posix() if prefix_path.parent != Path(".") else ""
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    stem = prefix_path.name
    pattern = re.compile(re.escape(stem) + r"_(\d{5})_\.")
    counter = max((int(m.group(1)) for p in target.iterdir() if (m := pattern.match(p.name))), default=0) + 1
    name = f"{stem}_{counter:05d}_.{ext}"
    return target / name, name, subfolder


def save_animation(images: torch.Tensor, folder: Path, prefix: str, fmt: str, fps: float, ctx: NodeContext | None,
                   kind: str = "output", **options) -> dict:
    """Write the frames as one file of ``fmt`` (webp, png, gif, mp4, webm-vp9, webm-av1); returns the UI dict."""
    frames = frames_uint8(images)
    if fps <= 0:
        raise ValueError(f"input fps: must be above 0, not {fps}")
    ext = {"webm-vp9": "webm", "webm-av1": "webm"}.get(fmt, fmt)
    path, name, subfolder = output_target(folder, prefix, ext)
    meta = metadata(ctx)
    tmp = path.with_name(f".{path.name}.part.{ext}")
    if fmt == "webp":
        write_webp(tmp, frames, fps, meta, **options)
    elif fmt == "png":
        write_apng(tmp, frames, fps, meta, **options)
    elif fmt == "gif":
        write_gif(tmp, frames, fps, meta, **options)
    elif fmt in VIDEO_CODECS:
        write_video(tmp, frames, fps, meta, codec=VIDEO_CODECS[fmt][1], **options)
    else:
        raise ValueError(f"input format: unknown animation format {fmt!r}")
    tmp.replace(path)
    entry = {"filename": name, "subfolder": subfolder, "type": kind}
    return {"images": [entry], "animated": [fmt != "gif"]}


def encode_bytes(images: torch.Tensor, fmt: str, fps: float) -> bytes:
    """The file bytes of one animation (benchmarks, tests): same writers as the nodes, no metadata."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ui = save_animation(images, Path(tmp), "x", fmt, fps, None)
        return (Path(tmp) / ui["images"][0]["filename"]).read_bytes()


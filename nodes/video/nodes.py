"""Animation output nodes: ComfyUI's SaveAnimatedWEBP, SaveAnimatedPNG and SaveWEBM, and ipgraph's SaveAnimation
(GIF, MP4, WebM, WebP or PNG with a frame rate and a loop count). All write through save.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.widgets import runtime_of
from .save import save_animation


class NoOutputs(NodeOutputs):
    pass


class SaveAnimatedWEBPIn(NodeInputs):
    images: Any = Socket("IMAGE")
    filename_prefix: str = Field("ComfyUI", min_length=1, max_length=100)
    fps: float = Field(6.0, ge=0.01, le=1000.0)
    lossless: bool = True
    quality: int = Field(80, ge=0, le=100)
    method: Literal["default", "fastest", "slowest"] = "default"


@node("SaveAnimatedWEBP", category="image/animation", output_node=True)
def save_animated_webp(inp: SaveAnimatedWEBPIn, ctx: NodeContext) -> NoOutputs:
    """Save the batch as one animated WebP (the graph in its EXIF, as ComfyUI does)."""
    runtime = runtime_of(ctx)
    ctx.set_ui(save_animation(inp.images, runtime.output_dir, inp.filename_prefix, "webp", inp.fps, ctx,
                              lossless=inp.lossless, quality=inp.quality, method=inp.method))
    return NoOutputs()


class SaveAnimatedPNGIn(NodeInputs):
    images: Any = Socket("IMAGE")
    filename_prefix: str = Field("ComfyUI", min_length=1, max_length=100)
    fps: float = Field(6.0, ge=0.01, le=1000.0)
    compress_level: int = Field(4, ge=0, le=9)


@node("SaveAnimatedPNG", category="image/animation", output_node=True)
def save_animated_png(inp: SaveAnimatedPNGIn, ctx: NodeContext) -> NoOutputs:
    """Save the batch as one animated PNG (APNG; the graph in its text chunks)."""
    runtime = runtime_of(ctx)
    ctx.set_ui(save_animation(inp.images, runtime.output_dir, inp.filename_prefix, "png", inp.fps, ctx,
                              compress_level=inp.compress_level))
    return NoOutputs()


class SaveWEBMIn(NodeInputs):
    images: Any = Socket("IMAGE")
    filename_prefix: str = Field("ComfyUI", min_length=1, max_length=100)
    codec: Literal["vp9", "av1"] = "vp9"
    fps: float = Field(24.0, ge=0.01, le=1000.0)
    crf: float = Field(32.0, ge=0.0, le=63.0, description="higher = smaller file, lower quality")


class ImagesOut(NodeOutputs):
    images: Any = Output("IMAGE", description="the frames, passed through")


@node("SaveWEBM", category="image/video", output_node=True, display_name="Save WEBM")
def save_webm(inp: SaveWEBMIn, ctx: NodeContext) -> ImagesOut:
    """Save the batch as a WebM video (VP9 or AV1, through PyAV)."""
    runtime = runtime_of(ctx)
    ctx.set_ui(save_animation(inp.images, runtime.output_dir, inp.filename_prefix, f"webm-{inp.codec}", inp.fps,
                              ctx, crf=inp.crf))
    return ImagesOut(images=inp.images)


class SaveAnimationIn(NodeInputs):
    images: Any = Socket("IMAGE")
    filename_prefix: str = Field("ipgraph", min_length=1, max_length=100)
    format: Literal["gif", "mp4", "webm", "webp", "png"] = "gif"
    fps: float = Field(8.0, ge=0.01, le=1000.0, description="frames per second")
    loop: int = Field(0, ge=0, le=65535, description="gif/webp/png: times to play (0 = forever); videos ignore it")
    crf: float = Field(23.0, ge=0.0, le=63.0, description="mp4/webm quality (lower = better, larger)")


@node("SaveAnimation", category="image/animation", output_node=True)
def save_animation_node(inp: SaveAnimationIn, ctx: NodeContext) -> ImagesOut:
    """Save the batch (the frames of a clip) as a GIF, an MP4 (H.264), a WebM (VP9), an animated WebP or APNG."""
    runtime = runtime_of(ctx)
    fmt = {"webm": "webm-vp9"}.get(inp.format, inp.format)
    options = {"crf": inp.crf} if fmt in ("mp4", "webm-vp9") else {"loop": inp.loop}
    ctx.set_ui(save_animation(inp.images, runtime.output_dir, inp.filename_prefix, fmt, inp.fps, ctx, **options))
    return ImagesOut(images=inp.images)

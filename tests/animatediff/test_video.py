"""Animation files open in PIL / PyAV with the frame count, size and frame rate asked for, and carry the graph."""

from __future__ import annotations

import json

import av
import pytest
import torch
from PIL import Image

from ipgraph.engine import Graph
from ipgraph.nodes.video.save import save_animation

FRAMES, H, W, FPS = 6, 48, 64, 8.0


def clip():
    t = torch.linspace(0, 1, FRAMES)[:, None, None, None]
    x = torch.linspace(0, 1, W)[None, None, :, None]
    return (t * 0.5 + x * 0.5).expand(FRAMES, H, W, 3).contiguous()


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_pillow_animations(tmp_path, fmt):
    ui = save_animation(clip(), tmp_path, "clip", fmt, FPS, None)
    path = tmp_path / ui["images"][0]["filename"]
    assert path.suffix == f".{fmt}" and ui["animated"] == [fmt != "gif"]
    with Image.open(path) as im:
        assert im.n_frames == FRAMES and im.size == (W, H)
        im.seek(1)
        im.load()  # WebP reports a frame's duration once the frame is decoded
        # GIF stores 1/100 s: 125 ms is written as 12 cs (ComfyUI's int(1000/fps) then truncation)
        assert abs(im.info["duration"] - 1000 / FPS) < (10 if fmt == "gif" else 1)
        assert im.info.get("loop", 0) == 0


@pytest.mark.parametrize("fmt,codec", [("mp4", "h264"), ("webm-vp9", "vp9"), ("webm-av1", "av1")])
def test_pyav_videos(tmp_path, fmt, codec):
    ui = save_animation(clip(), tmp_path, "clip", fmt, FPS, None, crf=30)
    path = tmp_path / ui["images"][0]["filename"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name in (codec, "libdav1d", "libvpx-vp9")
        assert (stream.codec_context.width, stream.codec_context.height) == (W, H)
        assert float(stream.average_rate) == FPS
    assert len(frames) == FRAMES
    first = torch.from_numpy(frames[-1].to_ndarray(format="rgb24")).float() / 255
    assert (first - clip()[-1]).abs().mean() < 0.05  # it is the picture, not noise


def test_nodes_embed_the_graph_and_report_ui(engine, runtime):
    g = Graph()
    img = g.add("LoadImage", id="img", image="ipa_bear_ref.png")
    g.add("SaveAnimatedWEBP", id="webp", images=img.IMAGE, filename_prefix="anim/w", fps=4.0)
    g.add("SaveAnimatedPNG", id="apng", images=img.IMAGE, filename_prefix="anim/p", fps=4.0)
    g.add("SaveAnimation", id="gif", images=img.IMAGE, filename_prefix="anim/g", format="gif", fps=5.0, loop=2)
    g.add("SaveAnimation", id="mp4", images=img.IMAGE, filename_prefix="anim/m", format="mp4", fps=12.0)
    g.add("SaveWEBM", id="webm", images=img.IMAGE, filename_prefix="anim/v", fps=10.0)
    result = engine.run(g)
    ui = {k: result.ui[k] for k in ("webp", "apng", "gif", "mp4", "webm")}
    assert ui["webp"]["animated"] == [True] and ui["webp"]["images"][0]["subfolder"] == "anim"
    folder = runtime.output_dir / "anim"
    with Image.open(folder / ui["webp"]["images"][0]["filename"]) as im:
        exif = im.getexif()
        assert json.loads(exif[0x0110].split(":", 1)[1])["img"]["class_type"] == "LoadImage"
        assert any(str(v).startswith("ipgraph:") for v in exif.values())
    with Image.open(folder / ui["apng"]["images"][0]["filename"]) as im:
        assert json.loads(im.info["ipgraph"])["nodes"]["apng"]["type"] == "SaveAnimatedPNG"
    with Image.open(folder / ui["gif"]["images"][0]["filename"]) as im:
        assert im.info["loop"] == 2 and json.loads(im.info["comment"])["format"] == "ipgraph/1"
    with av.open(str(folder / ui["mp4"]["images"][0]["filename"])) as c:
        assert json.loads(c.metadata["ipgraph"])["nodes"]["mp4"]["type"] == "SaveAnimation"
        assert float(c.streams.video[0].average_rate) == 12.0
    assert ui["webm"]["images"][0]["filename"].endswith(".webm")


def test_server_media_types():
    from pathlib import Path

    from ipgraph.server.files import media_type

    assert media_type(Path("a.mp4")) == "video/mp4" and media_type(Path("a.webm")) == "video/webm"
    assert media_type(Path("a.gif")) == "image/gif" and media_type(Path("a.webp")) == "image/webp"

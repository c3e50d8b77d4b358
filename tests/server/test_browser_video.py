"""The official ComfyUI web editor shows AnimateDiff clips as animations: in the output node and in the Job Queue
panel, in headless Chromium driven by Playwright against the real server (tests/server/test_browser.py has the
set-up notes).

The bundled "gummy bear waving" AnimateDiff + IP-Adapter graph is opened from the Workflows sidebar, made small
(4 frames, 2 steps) through its widgets, given a second output (ComfyUI's SaveWEBM on the same frames), and run with
the Run button. What the frontend (comfyui-frontend-package 1.58.1) does with the ui outputs, read from its JS:

* ``{"images": [x.webp], "animated": [true]}`` (SaveAnimatedWEBP): the file in an ``<img>`` inside the node's
  ``$$comfy_animation_preview`` DOM widget, which the browser animates;
* ``{"images": [x.webm], "animated": [true]}`` (SaveWEBM; any animated file not .webp/.png): a ``<video>`` element
  in the node's ``video-preview`` DOM widget;
* an entry not marked animated is drawn on the canvas as a still; a GIF marked animated would go to a ``<video>``,
  which cannot play GIF, so ipgraph's SaveAnimation reports GIFs as not animated (the bundled graphs save WebP).

Checked in the page: the ``<img>`` src is the .webp served by /api/view, the page's own ``ImageDecoder`` finds the
frames in it, and what the element paints changes over time; the ``<video>`` has a duration of frames/fps.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FRAMES, STEPS, FPS = 4, 2, 8.0

NODE = "(type) => window.app.graph._nodes.find(n => n.type === type)"
WEBP_SHOWN = f"""() => {{
  const n = ({NODE})('SaveAnimatedWEBP');
  const w = n && n.widgets && n.widgets.find(w => w.name === '$$comfy_animation_preview');
  const img = w && w.element && w.element.querySelector('img');
  return !!(img && img.isConnected && img.complete && img.naturalWidth > 0);
}}"""
VIDEO_SHOWN = f"""() => {{
  const n = ({NODE})('SaveWEBM');
  const v = n && n.videoContainer && n.videoContainer.querySelector('video');
  return !!(v && v.isConnected && v.readyState >= 1 && v.duration > 0);
}}"""


def _open_and_shrink(page) -> None:
    """Open the bundled AnimateDiff graph from the Workflows sidebar; 4 frames, 2 steps; add SaveWEBM."""
    page.click('[data-testid="workflows-tab-button"]', timeout=30_000)
    page.get_by_text("animatediff_ipadapter", exact=True).first.click(timeout=30_000)
    page.wait_for_function(f"() => ({NODE})('ApplyAnimateDiff') && ({NODE})('SaveAnimatedWEBP')", timeout=30_000)
    page.click('[data-testid="workflows-tab-button"]')  # close the sidebar: the canvas gets the room
    page.evaluate(f"""([frames, steps, fps]) => {{
      const node = {NODE};
      const set = (n, name, value) => {{ const w = n.widgets.find(w => w.name === name); w.value = value;
                                          w.callback && w.callback(value); }};
      set(node('EmptyLatentImage'), 'batch_size', frames);
      set(node('KSampler'), 'steps', steps);
      const decode = node('VAEDecode'), save = node('SaveAnimatedWEBP');
      const webm = LiteGraph.createNode('SaveWEBM');
      webm.pos = [save.pos[0], save.pos[1] + save.size[1] + 80];
      window.app.graph.add(webm);
      decode.connect(0, webm, 0);
      set(webm, 'fps', fps);
      set(webm, 'filename_prefix', 'animatediff_webm');
      window.app.canvas.ds.scale = 0.45; window.app.canvas.ds.offset = [20, 60];
      window.app.canvas.setDirty(true, true);
    }}""", [FRAMES, STEPS, FPS])


def _fit_output_nodes(page) -> None:
    """Zoom the canvas onto the two output nodes (the DOM widgets follow the canvas transform)."""
    page.evaluate(f"""() => {{
      const node = {NODE}, a = node('SaveAnimatedWEBP'), b = node('SaveWEBM');
      const x0 = Math.min(a.pos[0], b.pos[0]) - 40, y0 = Math.min(a.pos[1], b.pos[1]) - 60;
      const ds = window.app.canvas.ds; ds.scale = 1.2; ds.offset = [-x0 + 400, -y0];
      window.app.canvas.setDirty(true, true);
    }}""")


def _moves(page, element) -> bool:
    """Whether what ``element`` paints changes within about a second (an animation plays)."""
    shots = set()
    for _ in range(10):
        shots.add(element.screenshot())
        page.wait_for_timeout(60)
    return len(shots) > 1


def test_animatediff_clip_plays_in_the_output_node_and_the_job_queue(real_server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    client = real_server.client()
    try:
        page.goto(real_server.url + "/")
        page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes.length > 0",
                               timeout=90_000)
        _open_and_shrink(page)
        page.click('[data-testid="queue-button"]', timeout=10_000)
        page.wait_for_function(WEBP_SHOWN, timeout=240_000)
        page.wait_for_function(VIDEO_SHOWN, timeout=60_000)
        _fit_output_nodes(page)
        page.wait_for_timeout(800)

        # the animated WebP: its <img> src is the file /api/view serves, and it holds every frame
        src = page.evaluate(f"() => ({NODE})('SaveAnimatedWEBP').widgets.find("
                            "w => w.name === '$$comfy_animation_preview').element.querySelector('img').src")
        url = urlparse(src)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        assert url.path == "/api/view" and query["filename"].startswith("animatediff_ipadapter")
        assert query["filename"].endswith(".webp") and query["type"] == "output"
        decoded = page.evaluate("""async (src) => {
          const data = await (await fetch(src)).arrayBuffer();
          const d = new ImageDecoder({data, type: 'image/webp'});
          await d.tracks.ready;
          return {frames: d.tracks.selectedTrack.frameCount, animated: d.tracks.selectedTrack.animated};
        }""", src)
        assert decoded == {"frames": FRAMES, "animated": True}
        body = client.get("/api/view", params={"filename": query["filename"], "subfolder": query.get("subfolder", ""),
                                               "type": "output"})
        assert body.headers["content-type"].startswith("image/webp")
        with Image.open(io.BytesIO(body.content)) as im:
            assert im.n_frames == FRAMES and im.is_animated and im.size == (64, 64)

        # what the <img> paints changes as the animation plays (the frames of a clip differ)
        img = page.locator("[data-testid='dom-widgets'] img[src*='animatediff_ipadapter']").first
        assert img.bounding_box()["width"] >= 150, "the node leaves the animation no room"
        assert _moves(page, img), "the animated WebP in the node does not move"

        # the WebM: a <video> whose duration is the clip's (frames / fps)
        video = page.evaluate(f"""() => {{ const v = ({NODE})('SaveWEBM').videoContainer.querySelector('video');
          return {{src: v.currentSrc, duration: v.duration, width: v.videoWidth, loop: v.loop}}; }}""")
        assert "/api/view" in video["src"] and ".webm" in video["src"]
        assert abs(video["duration"] - FRAMES / FPS) < 0.1 and video["width"] == 64 and video["loop"]
        page.screenshot(path=str(ARTIFACTS / "browser-animatediff-node.png"))

        # the Job Queue panel (the queue/history list) shows the run with the animated file as its thumbnail
        page.click('[data-testid="queue-overlay-toggle"]', timeout=10_000)
        thumb = page.locator('[data-testid="job-assets-list"]').locator(
            "img[src*='animatediff_'], video[src*='animatediff_']").first
        thumb.wait_for(state="visible", timeout=30_000)
        kind, thumb_src = thumb.evaluate("e => [e.tagName, e.currentSrc || e.src]")
        assert "preview=" not in thumb_src  # the file itself, not a still conversion
        assert _moves(page, thumb), "the job's thumbnail does not move"
        page.screenshot(path=str(ARTIFACTS / "browser-animatediff-queue.png"))
    finally:
        if not page.is_closed():
            page.screenshot(path=str(ARTIFACTS / "browser-animatediff-last.png"))
        context.close()
    job = client.get("/api/jobs", params={"status": "completed"}).json()["jobs"][0]
    preview = job["preview_output"]
    assert preview["filename"] in thumb_src
    assert (kind, Path(preview["filename"]).suffix) in {("IMG", ".webp"), ("VIDEO", ".webm")}
    detail = client.get(f"/api/jobs/{job['id']}").json()["outputs"]
    shown = {Path(e["filename"]).suffix: out["animated"] for out in detail.values() for e in out["images"]}
    assert shown == {".webp": [True], ".webm": [True]}
    assert not [e for e in errors if "ResizeObserver" not in e], errors

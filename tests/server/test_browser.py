"""The official ComfyUI web editor (pinned comfyui-frontend-package) against the real server, in headless
Debian Chromium driven by Playwright: open a bundled workflow from the Workflows sidebar, click Run, wait for
the result image in the SaveImage node. A screenshot goes to test-artifacts/.

Needs /usr/bin/chromium (``.ci/install-chromium.sh``) and the ``playwright`` Python package (never
``playwright install``). Without them this test alone is skipped, loudly.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = os.environ.get("IPGRAPH_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _skip_loudly(reason: str) -> None:
    banner = "\n" + "!" * 78 + f"\n!!! BROWSER TEST SKIPPED: {reason}\n!!! run .ci/install-chromium.sh\n" + "!" * 78
    print(banner, file=sys.stderr)
    pytest.skip(f"BROWSER TEST SKIPPED: {reason}")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _skip_loudly(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("the playwright Python package is not installed")
    try:
        import comfyui_frontend_package  # noqa: F401
    except ImportError:
        _skip_loudly("comfyui-frontend-package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def test_editor_opens_bundled_workflow_and_runs_it(real_server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    errors: list[str] = []
    outbound: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: outbound.append(r.url) if not r.url.startswith(
        (real_server.url, "ws://127.0.0.1", "data:", "blob:")) else None)
    try:
        page.goto(real_server.url + "/")
        page.wait_for_selector("#graph-canvas", timeout=90_000)
        page.wait_for_function("() => window.app && window.app.graph", timeout=90_000)
        # open the bundled workflow through the Workflows sidebar, as a user would
        page.click('[data-testid="workflows-tab-button"]', timeout=30_000)
        page.get_by_text("txt2img", exact=True).first.click(timeout=30_000)
        page.wait_for_function(
            "() => window.app.graph._nodes.some(n => n.type === 'KSampler') &&"
            " window.app.graph._nodes.some(n => n.type === 'SaveImage')", timeout=30_000)
        types = page.evaluate("() => window.app.graph._nodes.map(n => n.type).sort()")
        assert types == sorted(["LoadCheckpoint", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                                "KSampler", "VAEDecode", "SaveImage"])
        widgets = page.evaluate(
            "() => window.app.graph._nodes.find(n => n.type === 'KSampler').widgets.map(w => [w.name, w.value])")
        values = dict((k, v) for k, v in widgets)
        assert values["seed"] == 42 and values["steps"] == 20 and values["sampler_name"] == "euler"
        page.click('[data-testid="queue-button"]', timeout=10_000)
        page.wait_for_function(
            "() => { const n = window.app.graph._nodes.find(n => n.type === 'SaveImage');"
            " return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }",
            timeout=180_000)
        src = page.evaluate("() => window.app.graph._nodes.find(n => n.type === 'SaveImage').imgs[0].src")
        assert "/api/view" in src and "txt2img" in src
        page.click('[data-testid="workflows-tab-button"]')  # close the sidebar for the screenshot
        time.sleep(1.0)  # let the canvas draw the image
        page.evaluate("() => { window.app.canvas.ds.scale = 0.8; window.app.canvas.ds.offset = [40, 60];"
                      " window.app.canvas.setDirty(true, true); }")
        time.sleep(0.5)
    finally:
        page.screenshot(path=str(ARTIFACTS / "browser-txt2img.png"))
        page.close()
    jobs = real_server.client().get("/api/jobs", params={"status": "completed"}).json()["jobs"]
    assert jobs and jobs[0]["preview_output"]["filename"].startswith("txt2img")
    assert outbound == [], f"the editor reached outside the server: {outbound}"
    assert not [e for e in errors if "ResizeObserver" not in e], errors

"""Start the REAL server (uvicorn in a thread, on a free loopback port) for protocol tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("IPGRAPH_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``create_app`` in a background thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, data_dir: Path, *, registry=None, runtime=None, token=None, models_dir=None,
                 graphs_dir=None, serve_frontend=False, port=None, **config) -> None:
        import uvicorn

        from ipgraph.server.app import ServerConfig, create_app

        self.port = port or free_port()
        kwargs = dict(data_dir=Path(data_dir), models_dir=models_dir, host="127.0.0.1", port=self.port, token=token,
                      serve_frontend=serve_frontend, **config)
        if graphs_dir is not None:
            kwargs["graphs_dir"] = Path(graphs_dir)
        self.config = ServerConfig(**kwargs)
        self.app = create_app(self.config, registry=registry, runtime=runtime)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    ws_ping_interval=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.token = token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 30) -> LiveServer:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def client(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    @property
    def state(self):
        return self.app.state.ipgraph


class WsClient:
    """A websocket client (websockets' sync client) that collects text events and binary frames."""

    def __init__(self, server: LiveServer, client_id: str | None = None, features: dict | None = None,
                 token: str | None = None) -> None:
        from websockets.sync.client import connect

        url = server.ws_url + (f"?clientId={client_id}" if client_id else "")
        if token:
            url += ("&" if "?" in url else "?") + f"token={token}"
        self.ws = connect(url, open_timeout=10, max_size=2**22, ping_interval=None)
        self.events: list[tuple[str, dict]] = []
        self.binary: list[bytes] = []
        first = self.next_event(timeout=10)
        assert first[0] == "status"
        self.sid = first[1]["sid"]
        if features is not None:
            self.ws.send(json.dumps({"type": "feature_flags", "data": features}))

    def next_event(self, timeout: float = 10):
        while True:
            msg = self.ws.recv(timeout=timeout)
            if isinstance(msg, bytes):
                self.binary.append(msg)
                continue
            data = json.loads(msg)
            item = (data["type"], data["data"])
            self.events.append(item)
            return item

    def until(self, pred, timeout: float = 30) -> list[tuple[str, dict]]:
        """Read events until ``pred(type, data)`` holds; returns the events read, the matching one last."""
        got = []
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"event not seen; got {[t for t, _ in got]}")
            item = self.next_event(timeout=left)
            got.append(item)
            if pred(*item):
                return got

    def until_done(self, prompt_id: str, timeout: float = 30):
        return self.until(lambda t, d: t in ("execution_success", "execution_error", "execution_interrupted")
                          and d.get("prompt_id") == prompt_id, timeout)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def fake_server(tmp_path):
    from tests.server.fake_nodes import REGISTRY, FakeRuntime

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "tiny.safetensors").write_bytes(b"x")
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    srv = LiveServer(tmp_path / "data", registry=REGISTRY, runtime=FakeRuntime(tmp_path / "data", models),
                     graphs_dir=graphs)
    srv.start()
    yield srv
    srv.stop()


def api_chain(value: int = 5, steps: int = 3, delay: float = 0.0, seed: int = 0) -> dict:
    """Number -> Slow -> SaveNumber in ComfyUI API format."""
    return {
        "1": {"class_type": "Number", "inputs": {"value": value}},
        "2": {"class_type": "Slow", "inputs": {"a": ["1", 0], "steps": steps, "delay": delay, "seed": seed}},
        "3": {"class_type": "SaveNumber", "inputs": {"value": ["2", 0], "filename_prefix": "t"}},
    }


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """The server with ipgraph's real nodes, the tiny models and the bundled graphs."""
    from ipgraph.nodes.tiny.sd import ensure_tiny_models

    root = tmp_path_factory.mktemp("real")
    models = root / "models"
    ensure_tiny_models(models)
    srv = LiveServer(root / "data", models_dir=models, serve_frontend=True)
    srv.start()
    yield srv
    srv.stop()


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

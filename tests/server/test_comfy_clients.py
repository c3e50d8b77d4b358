"""ComfyUI's own example API clients against the real server: the logic of comfyanonymous/ComfyUI
``script_examples/basic_api_example.py``, ``websockets_api_example.py`` and
``websockets_api_example_ws_images.py`` (GPL-3.0, by comfyanonymous), re-expressed here step for step with the
same libraries (urllib, websocket-client), the same routes and the same prompt; the only changes are the host/port
and the checkpoint name (``v1-5-pruned-emaonly`` → the tiny SD1.5 model).
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from PIL import Image

websocket = pytest.importorskip("websocket", reason="websocket-client is in the test extra")
pytestmark = pytest.mark.slow

# The default-workflow prompt the three scripts send (their prompt_text), model name mapped.
PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {
        "cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
        "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": 8566257, "steps": 20}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512, "width": 512}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece best quality girl"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def _prompt(save_websocket: bool = False) -> dict:
    prompt = json.loads(json.dumps(PROMPT))
    if save_websocket:  # websockets_api_example_ws_images.py replaces SaveImage by SaveImageWebsocket
        del prompt["9"]
        prompt["save_image_websocket_node"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    prompt["6"]["inputs"]["text"] = "masterpiece best quality man"  # what every script then sets
    prompt["3"]["inputs"]["seed"] = 5
    return prompt


def _queue_prompt(server_address: str, prompt: dict, client_id: str | None, route: str) -> dict:
    p = {"prompt": prompt} if client_id is None else {"prompt": prompt, "client_id": client_id}
    req = urllib.request.Request(f"http://{server_address}{route}", data=json.dumps(p).encode("utf-8"))
    return json.loads(urllib.request.urlopen(req).read())


def _address(server) -> str:
    return f"127.0.0.1:{server.port}"


def test_basic_api_example(real_server):
    """basic_api_example.py: POST /prompt and nothing else; the run then shows in /history."""
    address = _address(real_server)
    reply = _queue_prompt(address, _prompt(), None, "/prompt")
    deadline = time.time() + 240
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://{address}/history/{reply['prompt_id']}") as r:
            history = json.loads(r.read())
        if history:
            break
        time.sleep(0.5)
    entry = history[reply["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["9"]["images"][0]["filename"].startswith("ComfyUI")


def test_websockets_api_example(real_server):
    """websockets_api_example.py: wait for ``executing`` with node None, then /history and /view."""
    address = _address(real_server)
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}")
    prompt_id = _queue_prompt(address, _prompt(), client_id, "/prompt")["prompt_id"]
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    break
    with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as r:
        history = json.loads(r.read())[prompt_id]
    output_images = {}
    for node_id, node_output in history["outputs"].items():
        if "images" in node_output:
            output_images[node_id] = []
            for image in node_output["images"]:
                query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                                "type": image["type"]})
                with urllib.request.urlopen(f"http://{address}/view?{query}") as response:
                    output_images[node_id].append(response.read())
    ws.close()
    assert Image.open(io.BytesIO(output_images["9"][0])).size == (512, 512)


def _ws_images(address: str, ws, client_id: str, prompt: dict) -> tuple[dict, list[bytes]]:
    """get_images() of websockets_api_example_ws_images.py (plus the frame headers, for the assertions)."""
    prompt_id = _queue_prompt(address, prompt, client_id, "/api/prompt")["prompt_id"]
    output_images: dict[str, list[bytes]] = {}
    headers = []
    current_node = ""
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            if message["type"] == "executing":
                data = message["data"]
                if data["prompt_id"] == prompt_id:
                    if data["node"] is None:
                        break
                    current_node = data["node"]
        elif current_node == "save_image_websocket_node":
            output_images.setdefault(current_node, []).append(out[8:])
            headers.append(out[:8])
    return output_images, headers


def test_websockets_api_example_ws_images(real_server):
    """websockets_api_example_ws_images.py: the images arrive as binary frames while the current node is
    ``save_image_websocket_node``; ``out[8:]`` is the PNG (8-byte header: event type, image format)."""
    address = _address(real_server)
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{address}/ws?clientId={client_id}")
    prompt = _prompt(save_websocket=True)
    for _ in range(2):  # the second run is cached up to the node, which still sends its frame
        output_images, headers = _ws_images(address, ws, client_id, prompt)
        frames = output_images["save_image_websocket_node"]
        assert len(frames) == 1 and headers == [b"\x00\x00\x00\x01\x00\x00\x00\x02"]  # PREVIEW_IMAGE, PNG
        image = Image.open(io.BytesIO(frames[0]))
        assert image.format == "PNG" and image.size == (512, 512)
    ws.close()


def _wait_history(address: str, prompt_id: str) -> dict:
    deadline = time.time() + 240
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://{address}/history/{prompt_id}") as r:
            history = json.loads(r.read())
        if history:
            return history[prompt_id]
        time.sleep(0.5)
    raise TimeoutError(prompt_id)


def test_free_unloads_models_as_comfyui(real_server):
    """POST /free {"unload_models": true}: the model manager drops every model and the cached outputs that
    hold one (so the memory goes); the next prompt loads them again and runs."""
    address = _address(real_server)
    state = real_server.app.state.ipgraph
    assert _wait_history(address, _queue_prompt(address, _prompt(), None, "/prompt")["prompt_id"])[
        "status"]["status_str"] == "success"
    models = state.runtime.models
    assert models.stats()["loaded"] >= 1
    body = json.dumps({"unload_models": True}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{address}/free", data=body, method="POST"))
    assert models.stats()["loaded"] == 0
    assert not any(models.holds_evicted(e.outputs) for e in state.engine.cache._entries.values())
    loads = models.loads
    again = _wait_history(address, _queue_prompt(address, _prompt(), None, "/prompt")["prompt_id"])
    assert again["status"]["status_str"] == "success" and models.loads > loads

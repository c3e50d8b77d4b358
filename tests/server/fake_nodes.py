"""Fast fake nodes for protocol tests: numbers, a slow node with progress and previews, a PNG saver."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Registry, Socket

REGISTRY = Registry()
node = REGISTRY.node
RELEASE = threading.Event()  # Gate nodes wait on it
RELEASE.set()


class FakeRuntime:
    """What the server needs from a runtime: folders, a pixel limit, model listings."""

    model_kinds = ("checkpoints",)

    def __init__(self, data_dir: Path, models_dir: Path) -> None:
        self.output_dir = Path(data_dir) / "output"
        self.input_dir = Path(data_dir) / "input"
        self.models_dir = Path(models_dir)
        self.max_pixels = 1024 * 1024

    def list_models(self, kind: str) -> list[str]:
        folder = self.models_dir / kind
        return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


class NumberIn(NodeInputs):
    value: int = Field(1, ge=0, le=100, description="a number")


class NumberOut(NodeOutputs):
    number: Any = Output("NUMBER")


@node("Number", category="fake")
def number(inp: NumberIn, ctx: NodeContext) -> NumberOut:
    return NumberOut(number=inp.value)


class SlowIn(NodeInputs):
    a: Any = Socket("NUMBER")
    steps: int = Field(3, ge=1, le=50)
    delay: float = Field(0.0, ge=0, le=2)
    seed: int = Field(0, ge=0, le=2**32)
    preview: bool = True


@node("Slow", category="fake")
def slow(inp: SlowIn, ctx: NodeContext) -> NumberOut:
    for i in range(inp.steps):
        if inp.delay:
            time.sleep(inp.delay)
        img = Image.new("RGB", (16, 16), (i * 20 % 256, 0, 0)) if inp.preview else None
        ctx.progress(i + 1, inp.steps, img)
    return NumberOut(number=inp.a + inp.seed)


class GateIn(NodeInputs):
    a: Any = Socket("NUMBER")


@node("Gate", category="fake", cacheable=False)
def gate(inp: GateIn, ctx: NodeContext) -> NumberOut:
    """Blocks until RELEASE is set (checking cancellation), so tests control when a job ends."""
    while not RELEASE.wait(0.02):
        ctx.progress(0, 1)
    return NumberOut(number=inp.a)


class CheckpointIn(NodeInputs):
    name: str = Field(..., json_schema_extra={"model_kind": "checkpoints"})


def _ckpt_check(literals, runtime):
    if literals["name"] not in runtime.list_models("checkpoints"):
        yield "name", f"no checkpoint named {literals['name']!r}"


@node("FakeCheckpoint", category="fake", check=_ckpt_check)
def fake_checkpoint(inp: CheckpointIn, ctx: NodeContext) -> NumberOut:
    return NumberOut(number=len(inp.name))


class ColorIn(NodeInputs):
    a: Any = Socket("NUMBER")
    mode: Literal["red", "green", "blue"] = "red"


@node("Color", category="fake")
def color(inp: ColorIn, ctx: NodeContext) -> NumberOut:
    return NumberOut(number=inp.a * 1000 + ["red", "green", "blue"].index(inp.mode))


class LoadIn(NodeInputs):
    image: str = Field(..., json_schema_extra={"image_upload": True})


@node("LoadFakeImage", category="fake")
def load_fake_image(inp: LoadIn, ctx: NodeContext) -> NumberOut:
    path = ctx.resources.input_dir / inp.image
    with Image.open(path) as im:
        return NumberOut(number=im.size[0])


class SaveIn(NodeInputs):
    value: Any = Socket("NUMBER")
    filename_prefix: str = "fake"


class SaveOut(NodeOutputs):
    pass


@node("SaveNumber", category="fake", output_node=True)
def save_number(inp: SaveIn, ctx: NodeContext) -> SaveOut:
    out_dir = Path(ctx.resources.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{inp.filename_prefix}_{ctx.run_id[:8]}_{ctx.node_id}.png"
    Image.new("RGB", (8, 8), (int(inp.value) % 256, 10, 20)).save(out_dir / name)
    ctx.set_ui({"images": [{"filename": name, "subfolder": "", "type": "output"}], "value": [inp.value]})
    return SaveOut()


class ExplodeIn(NodeInputs):
    a: Any = Socket("NUMBER")
    message: str = "kaboom"


@node("Explode", category="fake")
def explode(inp: ExplodeIn, ctx: NodeContext) -> NumberOut:
    raise RuntimeError(inp.message)

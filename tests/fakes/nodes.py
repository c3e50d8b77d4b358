"""A small pack of test nodes (no diffusion) registered into their own Registry."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Registry, Socket

REGISTRY = Registry()
node = REGISTRY.node
CALLS: list[str] = []  # type names in execution order, for assertions
_lock = threading.Lock()


def record(name: str) -> None:
    with _lock:
        CALLS.append(name)


class ConstIn(NodeInputs):
    value: float = Field(0.0, ge=-1000, le=1000, description="the number")


class NumberOut(NodeOutputs):
    number: Any = Output("NUMBER")


@node("Const", category="test")
def const(inp: ConstIn, ctx: NodeContext) -> NumberOut:
    record("Const")
    return NumberOut(number=inp.value)


class AddIn(NodeInputs):
    a: Any = Socket("NUMBER")
    b: Any = Socket("NUMBER", optional=True)
    offset: float = 0.0


@node("Add", category="test")
def add(inp: AddIn, ctx: NodeContext) -> NumberOut:
    record("Add")
    return NumberOut(number=inp.a + (inp.b or 0.0) + inp.offset)


class TensorIn(NodeInputs):
    size: int = Field(4, ge=1, le=4096)
    fill: float = 1.0
    mode: Literal["ones", "range"] = "ones"


class TensorOut(NodeOutputs):
    tensor: Any = Output("TENSOR")


@node("MakeTensor", category="test")
def make_tensor(inp: TensorIn, ctx: NodeContext) -> TensorOut:
    record("MakeTensor")
    t = torch.full((inp.size,), inp.fill) if inp.mode == "ones" else torch.arange(inp.size, dtype=torch.float32)
    return TensorOut(tensor=t)


class ScaleIn(NodeInputs):
    tensor: Any = Socket("TENSOR")
    factor: float = 2.0


@node("Scale", category="test")
def scale(inp: ScaleIn, ctx: NodeContext) -> TensorOut:
    record("Scale")
    return TensorOut(tensor=inp.tensor * inp.factor)


@node("ScaleInPlace", category="test")
def scale_in_place(inp: ScaleIn, ctx: NodeContext) -> TensorOut:
    """Breaks the rule on purpose: modifies its input."""
    record("ScaleInPlace")
    inp.tensor.mul_(inp.factor)
    return TensorOut(tensor=inp.tensor)


class SinkIn(NodeInputs):
    value: Any = Socket("*")
    label: str = "out"


class SinkOut(NodeOutputs):
    value: Any = Output("*")


@node("Sink", category="test", output_node=True)
def sink(inp: SinkIn, ctx: NodeContext) -> SinkOut:
    record("Sink")
    ctx.set_ui({"label": inp.label, "value": repr(inp.value)[:40]})
    return SinkOut(value=inp.value)


class SlowIn(NodeInputs):
    a: Any = Socket("NUMBER")
    steps: int = Field(5, ge=1, le=1000)
    delay: float = Field(0.0, ge=0, le=5)


@node("Slow", category="test")
def slow(inp: SlowIn, ctx: NodeContext) -> NumberOut:
    record("Slow")
    for i in range(inp.steps):
        time.sleep(inp.delay)
        ctx.progress(i + 1, inp.steps)
    return NumberOut(number=inp.a)


class FailIn(NodeInputs):
    a: Any = Socket("NUMBER")
    message: str = "boom"


@node("Fail", category="test")
def fail(inp: FailIn, ctx: NodeContext) -> NumberOut:
    record("Fail")
    raise ValueError(inp.message)


class RandomIn(NodeInputs):
    pass


@node("Random", category="test", cacheable=False)
def random_node(inp: RandomIn, ctx: NodeContext) -> NumberOut:
    record("Random")
    return NumberOut(number=float(torch.rand(()).item()))


class FileIn(NodeInputs):
    path: str = ""


def _file_check(literals: dict, resources: Any):
    import os

    if not os.path.exists(literals["path"]):
        yield "path", f"the file {literals['path']!r} does not exist"


def _file_fingerprint(literals: dict, resources: Any) -> str:
    import os

    st = os.stat(literals["path"])
    return f"{literals['path']}:{st.st_size}:{st.st_mtime_ns}"


@node("ReadFile", category="test", check=_file_check, fingerprint=_file_fingerprint)
def read_file(inp: FileIn, ctx: NodeContext) -> NumberOut:
    record("ReadFile")
    with open(inp.path) as f:
        return NumberOut(number=float(f.read().strip()))

"""run_batch on a toy registry: shared prefix once, one batched call, per-run results, events and
outcomes, fallback to running alone, one run's cancellation leaving the others."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field

from ipgraph.engine import (
    CancelToken,
    Engine,
    Graph,
    NodeContext,
    NodeFailed,
    NodeInputs,
    NodeOutputs,
    Output,
    Registry,
    RunCancelledError,
    RunResult,
    Socket,
    ValidationFailed,
    batch_signature,
    run_batch,
)

CALLS: list[tuple] = []
REG = Registry()


class LoadIn(NodeInputs):
    scale: float = 2.0


class NumOut(NodeOutputs):
    number: Any = Output("NUMBER")


@REG.node("Load")
def load(inp: LoadIn, ctx: NodeContext) -> NumOut:
    CALLS.append(("Load", inp.scale))
    return NumOut(number=inp.scale)


class NoisyIn(NodeInputs):
    base: Any = Socket("NUMBER")
    seed: int = Field(0, ge=0, le=1000)
    steps: int = Field(2, ge=1, le=10)


def noisy_value(base: float, seed: int) -> float:
    if seed == 666:
        raise ValueError("seed 666 is refused")
    return base * 100 + seed


@REG.node("Noisy")
def noisy(inp: NoisyIn, ctx: NodeContext) -> NumOut:
    CALLS.append(("Noisy", inp.seed))
    for i in range(inp.steps):
        ctx.progress(i + 1, inp.steps)
    return NumOut(number=noisy_value(inp.base, inp.seed))


DECLINE = {"on": False}


def noisy_batch(inputs: list[NoisyIn], ctxs: list[NodeContext]):
    if DECLINE["on"]:
        return None
    CALLS.append(("NoisyBatch", tuple(i.seed for i in inputs)))
    steps = inputs[0].steps
    for i in range(steps):
        for ctx in ctxs:
            ctx.progress(i + 1, steps)
    return [NumOut(number=noisy_value(inp.base, inp.seed)) for inp in inputs]


REG.set_batch("Noisy", ("seed",), noisy_batch)


class SinkIn(NodeInputs):
    value: Any = Socket("NUMBER")


class SinkOut(NodeOutputs):
    pass


@REG.node("Sink", output_node=True, cacheable=False)
def sink(inp: SinkIn, ctx: NodeContext) -> SinkOut:
    CALLS.append(("Sink", inp.value))
    ctx.set_ui({"value": inp.value})
    return SinkOut()


def graph(seed: int, steps: int = 2) -> Graph:
    g = Graph(REG)
    ld = g.add("Load", id="load")
    n = g.add("Noisy", id="noisy", base=ld.number, seed=seed, steps=steps)
    g.add("Sink", id="sink", value=n.number)
    return g


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    DECLINE["on"] = False


def test_signature_ignores_only_the_varying_inputs():
    e = Engine(REG)
    assert batch_signature(e, graph(1)) == batch_signature(e, graph(2))
    assert batch_signature(e, graph(1)) != batch_signature(e, graph(1, steps=3))
    g = Graph(REG)
    g.add("Sink", id="sink", value=g.add("Load", id="load").number)
    assert batch_signature(e, g) is None  # nothing to batch


def test_one_batched_call_each_run_its_own_result_and_events():
    e = Engine(REG)
    seeds = [3, 1, 3, 7]  # two runs share a seed: one call serves both
    events: list[list] = [[] for _ in seeds]
    results = run_batch(e, [graph(s) for s in seeds], on_events=[ev.append for ev in events],
                          run_ids=[f"r{i}" for i in range(4)])
    assert [c for c in CALLS if c[0] != "Sink"] == [("Load", 2.0), ("NoisyBatch", (3, 1, 7))]
    assert sorted(c[1] for c in CALLS if c[0] == "Sink") == [201.0, 203.0, 203.0, 207.0]
    for i, (seed, r) in enumerate(zip(seeds, results, strict=True)):
        assert isinstance(r, RunResult) and r.run_id == f"r{i}"
        assert r.outputs["noisy"].number == 200 + seed and r.ui["sink"] == {"value": 200 + seed}
        kinds = [(ev.kind, getattr(ev, "node_id", None)) for ev in events[i]]
        assert kinds[0] == ("RunStarted", None) and kinds[-1] == ("RunFinished", None)
        assert ("NodeFinished", "noisy") in kinds and [k for k in kinds if k[0] == "NodeProgress"] == [
            ("NodeProgress", "noisy")] * 2
        assert all(ev.run_id == f"r{i}" for ev in events[i])
        assert r.executed == ["load", "noisy", "sink"]
    # the same seeds again: all cached, nothing recomputed
    CALLS.clear()
    again = run_batch(e, [graph(s) for s in seeds])
    assert [c[0] for c in CALLS] == ["Sink"] * 4 and all(r.cached == ["load", "noisy"] for r in again)


def test_declined_batch_runs_each_alone_with_same_results():
    DECLINE["on"] = True
    e = Engine(REG)
    results = run_batch(e, [graph(s) for s in (1, 2)])
    assert [c for c in CALLS if c[0] == "Noisy"] == [("Noisy", 1), ("Noisy", 2)]
    assert [r.outputs["noisy"].number for r in results] == [201.0, 202.0]


def test_failures_stay_with_their_run():
    e = Engine(REG)
    bad = graph(1)
    bad.set("noisy", "steps", 99)  # out of range: this run alone fails validation
    results = run_batch(e, [graph(666), bad, graph(5)])
    assert isinstance(results[1], ValidationFailed)
    assert isinstance(results[0], NodeFailed) and "666" in results[0].error.message
    assert results[2].outputs["noisy"].number == 205.0  # the batch failed, so each call ran alone


def test_cancelling_one_run_mid_batch_leaves_the_others():
    e = Engine(REG)
    tokens = [CancelToken(), CancelToken(), CancelToken()]

    def cancel_second(ev):
        if ev.kind == "NodeProgress":
            tokens[1].cancel()

    events: list = []
    results = run_batch(e, [graph(s) for s in (1, 2, 3)], cancels=tokens,
                          on_events=[None, lambda ev: (events.append(ev), cancel_second(ev)), None])
    assert isinstance(results[1], RunCancelledError) and events[-1].kind == "RunCancelled"
    assert [r.outputs["noisy"].number for r in (results[0], results[2])] == [201.0, 203.0]

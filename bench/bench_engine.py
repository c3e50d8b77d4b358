"""Engine overhead per node: validation + planning + execution of trivial nodes, divided by node count.

    python bench/bench_engine.py            # 1,000-node chain and 1,000-node fan-in
"""

from __future__ import annotations

import time
from typing import Any

from ipgraph.engine import Engine, Graph, NodeContext, NodeInputs, NodeOutputs, Output, Registry, Socket

REG = Registry()


class IncIn(NodeInputs):
    x: Any = Socket("NUMBER", optional=True)
    step: float = 1.0


class NumOut(NodeOutputs):
    number: Any = Output("NUMBER")


@REG.node("Inc")
def inc(inp: IncIn, ctx: NodeContext) -> NumOut:
    return NumOut(number=(inp.x or 0.0) + inp.step)


class Fan(NodeInputs):
    x: Any = Socket("NUMBER")
    y: Any = Socket("NUMBER", optional=True)


@REG.node("Pair")
def pair(inp: Fan, ctx: NodeContext) -> NumOut:
    return NumOut(number=inp.x + (inp.y or 0.0))


class OutIn(NodeInputs):
    x: Any = Socket("NUMBER")


@REG.node("Out", output_node=True)
def out(inp: OutIn, ctx: NodeContext) -> NumOut:
    return NumOut(number=inp.x)


def chain(n: int) -> Graph:
    g = Graph(REG)
    prev = g.add("Inc", step=1.0)
    for _ in range(n - 2):
        prev = g.add("Inc", x=prev.number, step=1.0)
    g.add("Out", x=prev.number)
    return g


def fan_in(n: int) -> Graph:
    """n-1 independent leaves reduced pairwise into one output (a wide graph: many ready nodes)."""
    g = Graph(REG)
    layer = [g.add("Inc", step=float(i)).number for i in range(n // 2)]
    while len(layer) > 1:
        nxt = [g.add("Pair", x=layer[i], y=layer[i + 1]).number for i in range(0, len(layer) - 1, 2)]
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    g.add("Out", x=layer[0])
    return g


def measure(name: str, graph: Graph, repeats: int = 5) -> None:
    n = len(graph.nodes)
    cold, warm = [], []
    for _ in range(repeats):
        eng = Engine(REG)
        t = time.perf_counter()
        eng.run(graph)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        eng.run(graph)
        warm.append(time.perf_counter() - t)
    print(f"{name:10s} {n:5d} nodes: cold {min(cold) / n * 1e6:6.1f} us/node, "
          f"all-cached re-run {min(warm) / n * 1e6:6.1f} us/node (target <= 50)")


if __name__ == "__main__":
    measure("chain", chain(1000))
    measure("fan-in", fan_in(1000))

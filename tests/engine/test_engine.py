"""Engine behaviour on the fake node pack: caching, validation, events, cancellation, mutation guard."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import torch

from ipgraph.engine import (
    CancelToken,
    Engine,
    Graph,
    GraphBuildError,
    NodeContext,
    NodeFailed,
    NodeInputs,
    NodeOutputs,
    Output,
    Registry,
    RunCancelledError,
    Socket,
    ValidationFailed,
    events,
)
from tests.fakes import nodes as fake


@pytest.fixture(autouse=True)
def _clear_calls():
    fake.CALLS.clear()


def chain_graph(value=1.0, offset=0.0):
    g = Graph(fake.REGISTRY)
    c = g.add("Const", id="c", value=value)
    a = g.add("Add", id="a", a=c.number, offset=offset)
    g.add("Sink", id="s", value=a.number)
    return g


def test_run_and_full_cache():
    eng = Engine(fake.REGISTRY)
    r1 = eng.run(chain_graph(2.0, 3.0))
    assert r1.outputs["s"].value == 5.0
    assert r1.executed == ["c", "a", "s"] and r1.cached == []
    r2 = eng.run(chain_graph(2.0, 3.0))
    assert r2.executed == [] and r2.cached == ["c", "a", "s"]
    assert fake.CALLS == ["Const", "Add", "Sink"]  # the second run executed nothing
    assert r2.ui["s"]["label"] == "out"  # UI payload survives the cache


def test_partial_cache_reruns_only_descendants():
    eng = Engine(fake.REGISTRY)
    eng.run(chain_graph(2.0, 3.0))
    fake.CALLS.clear()
    r = eng.run(chain_graph(2.0, 4.0))  # only Add's literal changed
    assert r.cached == ["c"] and r.executed == ["a", "s"]
    assert fake.CALLS == ["Add", "Sink"]


def test_cache_is_independent_of_node_ids():
    eng = Engine(fake.REGISTRY)
    eng.run(chain_graph(7.0))
    g = Graph(fake.REGISTRY)
    c = g.add("Const", id="other-const", value=7.0)
    a = g.add("Add", id="other-add", a=c.number)
    g.add("Sink", id="other-sink", value=a.number)
    r = eng.run(g)
    assert r.executed == [] and set(r.cached) == {"other-const", "other-add", "other-sink"}


def test_pruning_skips_unneeded_nodes():
    g = chain_graph()
    g.add("Const", id="unused", value=9.0)
    r = Engine(fake.REGISTRY).run(g)
    assert "unused" not in r.executed and "unused" not in r.outputs


def test_uncacheable_node_reruns_with_descendants():
    g = Graph(fake.REGISTRY)
    rnd = g.add("Random", id="r")
    g.add("Sink", id="s", value=rnd.number)
    eng = Engine(fake.REGISTRY)
    eng.run(g)
    r = eng.run(g)
    assert r.executed == ["r", "s"]


def test_fingerprint_changes_key(tmp_path):
    f = tmp_path / "n.txt"
    f.write_text("1")
    g = Graph(fake.REGISTRY)
    rd = g.add("ReadFile", id="f", path=str(f))
    g.add("Sink", id="s", value=rd.number)
    eng = Engine(fake.REGISTRY)
    assert eng.run(g).outputs["s"].value == 1.0
    assert eng.run(g).executed == []
    f.write_text("22")
    r = eng.run(g)
    assert r.executed == ["f", "s"] and r.outputs["s"].value == 22.0


def test_error_in_node_is_structured_and_engine_survives():
    g = Graph(fake.REGISTRY)
    c = g.add("Const", id="c", value=1.0)
    t = g.add("MakeTensor", id="t", size=8)
    bad = g.add("Fail", id="bad", a=c.number, message="kaputt")
    g.add("Sink", id="s", value=bad.number)
    g.add("Sink", id="s2", value=t.tensor)
    eng = Engine(fake.REGISTRY)
    seen = []
    with pytest.raises(NodeFailed) as info:
        eng.run(g, on_event=seen.append)
    err = info.value.error
    assert (err.node_id, err.node_type, err.exception_type, err.message) == ("bad", "Fail", "ValueError", "kaputt")
    assert err.inputs["a"] == "1.0" and err.inputs["message"] == "'kaputt'"
    assert isinstance(seen[-1], events.RunFailed) and seen[-1].error["node_id"] == "bad"
    # another run on the same engine is unaffected
    assert eng.run(chain_graph(1.0)).outputs["s"].value == 1.0


def test_error_summary_shows_tensor_shapes_not_contents():
    g = Graph(fake.REGISTRY)
    t = g.add("MakeTensor", id="t", size=1000)
    s = g.add("ScaleInPlace", id="x", tensor=t.tensor)
    g.add("Sink", id="s", value=s.tensor)
    with pytest.raises(NodeFailed) as info:
        Engine(fake.REGISTRY).run(g)
    assert info.value.error.inputs["tensor"] == "Tensor[1000] torch.float32"


def problems_of(graph, **kw):
    return {(p.node_id, p.input, p.type) for p in Engine(fake.REGISTRY).validate(graph, **kw)}


def test_every_validation_error_type_is_reported_at_once():
    doc = {"format": "ipgraph/1", "nodes": {
        "u": {"type": "NoSuchNode", "inputs": {}},
        "c": {"type": "Const", "inputs": {"value": 5000}},
        "m": {"type": "MakeTensor", "inputs": {"mode": "zeros", "size": "many"}},
        "a": {"type": "Add", "inputs": {"offset": 1.0, "bogus": 3}},
        "b": {"type": "Add", "inputs": {"a": {"node": "m", "output": "tensor"}}},
        "d": {"type": "Add", "inputs": {"a": {"node": "c", "output": "nope"}}},
        "e": {"type": "Add", "inputs": {"a": {"node": "ghost", "output": "number"}}},
        "s": {"type": "Sink", "inputs": {"value": {"node": "b", "output": "number"}}},
    }}
    found = problems_of(Graph.from_dict(doc, fake.REGISTRY))
    assert ("u", None, "unknown_node_type") in found
    assert ("c", "value", "out_of_range") in found
    assert ("m", "mode", "not_in_choices") in found
    assert ("m", "size", "invalid_value") in found
    assert ("a", "a", "missing_input") in found
    assert ("a", "bogus", "unknown_input") in found
    assert ("b", "a", "type_mismatch") in found
    assert ("d", "a", "unknown_output") in found
    assert ("e", "a", "missing_node") in found


def test_problem_messages_are_sentences():
    g = Graph.from_dict({"nodes": {"c": {"type": "Const", "inputs": {"value": 5000}},
                                   "s": {"type": "Sink", "inputs": {"value": {"node": "c", "output": "number"}}}}},
                        fake.REGISTRY)
    (p,) = Engine(fake.REGISTRY).validate(g)
    assert str(p).startswith("node c (Const), input 'value': 5000 is not accepted")


def test_cycle_and_no_outputs():
    doc = {"nodes": {
        "x": {"type": "Add", "inputs": {"a": {"node": "y", "output": "number"}}},
        "y": {"type": "Add", "inputs": {"a": {"node": "x", "output": "number"}}},
    }}
    found = problems_of(Graph.from_dict(doc, fake.REGISTRY))
    assert ("x", None, "cycle") in found and ("y", None, "cycle") in found
    assert (None, None, "no_outputs") in found


def test_check_hook_reports_missing_file(tmp_path):
    g = Graph(fake.REGISTRY)
    rd = g.add("ReadFile", id="f", path=str(tmp_path / "missing.txt"))
    g.add("Sink", id="s", value=rd.number)
    assert problems_of(g) == {("f", "path", "invalid_value")}
    with pytest.raises(ValidationFailed) as info:
        Engine(fake.REGISTRY).run(g)
    assert "does not exist" in str(info.value)


def test_builder_errors_at_build_time():
    g = Graph(fake.REGISTRY)
    with pytest.raises(GraphBuildError, match="unknown node type"):
        g.add("Nope")
    with pytest.raises(GraphBuildError, match="has no input 'colour'"):
        g.add("Const", colour=1)
    c = g.add("Const", value=1.0)
    with pytest.raises(GraphBuildError, match="has no output 'numbr'"):
        _ = c.numbr


def test_builder_json_round_trip_is_byte_stable():
    g = chain_graph(1.5, 2.0)
    g.ui = {"positions": {"c": [0, 0], "a": [200, 0]}}
    text = g.to_json()
    again = Graph.from_json(text, fake.REGISTRY)
    assert again.to_json() == text
    doc = json.loads(text)
    assert doc["format"] == "ipgraph/1"
    assert doc["nodes"]["a"]["inputs"]["a"] == {"node": "c", "output": "number"}
    assert doc["ui"]["positions"]["a"] == [200, 0]


def test_progress_events_in_order():
    g = Graph(fake.REGISTRY)
    c = g.add("Const", id="c", value=1.0)
    s = g.add("Slow", id="slow", a=c.number, steps=3)
    g.add("Sink", id="s", value=s.number)
    seen = []
    Engine(fake.REGISTRY).run(g, on_event=seen.append)
    kinds = [(e.kind, getattr(e, "node_id", None)) for e in seen]
    assert kinds == [
        ("RunStarted", None),
        ("NodeStarted", "c"), ("NodeFinished", "c"),
        ("NodeStarted", "slow"), ("NodeProgress", "slow"), ("NodeProgress", "slow"), ("NodeProgress", "slow"),
        ("NodeFinished", "slow"),
        ("NodeStarted", "s"), ("NodeFinished", "s"),
        ("RunFinished", None),
    ]
    assert [e.value for e in seen if isinstance(e, events.NodeProgress)] == [1, 2, 3]


def test_cached_nodes_emit_cached_events():
    eng = Engine(fake.REGISTRY)
    eng.run(chain_graph())
    seen = []
    eng.run(chain_graph(), on_event=seen.append)
    assert [e.kind for e in seen] == ["RunStarted", "NodeCached", "NodeCached", "NodeCached", "RunFinished"]


def test_cancellation_mid_run():
    g = Graph(fake.REGISTRY)
    c = g.add("Const", id="c", value=1.0)
    s = g.add("Slow", id="slow", a=c.number, steps=1000, delay=0.005)
    g.add("Sink", id="s", value=s.number)
    token = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, events.NodeProgress) and e.value == 3:
            threading.Thread(target=token.cancel).start()

    with pytest.raises(RunCancelledError):
        Engine(fake.REGISTRY).run(g, on_event=on_event, cancel=token)
    assert isinstance(seen[-1], events.RunCancelled) and seen[-1].node_id == "slow"
    steps = [e.value for e in seen if isinstance(e, events.NodeProgress)]
    assert 3 <= max(steps) < 50  # stopped at the next check, not at the end
    assert "Sink" not in fake.CALLS


def test_bounded_cache_evicts_lru():
    # each run caches two 4 KiB values (the tensor, and the sink passing it on): room for two runs
    eng = Engine(fake.REGISTRY, cache_bytes=4 * 4096 + 500)

    def tensor_graph(fill):
        g = Graph(fake.REGISTRY)
        t = g.add("MakeTensor", id="t", size=1024, fill=float(fill))
        g.add("Sink", id="s", value=t.tensor)
        return g

    for fill in range(5):
        eng.run(tensor_graph(fill))
    assert eng.cache.bytes_used <= eng.cache.max_bytes
    assert eng.cache.evictions == 6
    assert "t" in eng.run(tensor_graph(4)).cached  # the newest is still there
    assert "t" in eng.run(tensor_graph(0)).executed  # the oldest was evicted and had to be recomputed


def test_mutating_a_cached_input_is_caught_and_never_served():
    eng = Engine(fake.REGISTRY)
    good = Graph(fake.REGISTRY)
    t = good.add("MakeTensor", id="t", size=4, fill=1.0)
    good.add("Sink", id="s", value=t.tensor)
    assert torch.equal(eng.run(good).outputs["s"].value, torch.ones(4))

    bad = Graph(fake.REGISTRY)
    t = bad.add("MakeTensor", id="t", size=4, fill=1.0)
    x = bad.add("ScaleInPlace", id="x", tensor=t.tensor, factor=3.0)
    bad.add("Sink", id="s", value=x.tensor)
    with pytest.raises(NodeFailed) as info:
        eng.run(bad)
    assert info.value.error.exception_type == "InputMutatedError"
    assert "tensor" in info.value.error.message

    r = eng.run(good)  # the corrupted value was dropped: recomputed, correct again
    assert "t" in r.executed and torch.equal(r.outputs["s"].value, torch.ones(4))


def test_registry_describes_nodes():
    d = fake.REGISTRY.describe()
    const_inputs = {i["name"]: i for i in d["Const"]["inputs"]}
    assert const_inputs["value"] == {"name": "value", "required": False, "type": "FLOAT", "default": 0.0,
                                     "ge": -1000, "le": 1000, "description": "the number"}
    mt = {i["name"]: i for i in d["MakeTensor"]["inputs"]}
    assert mt["mode"]["choices"] == ["ones", "range"] and mt["mode"]["type"] == "COMBO"
    assert d["Add"]["inputs"][0] == {"name": "a", "required": True, "socket": "NUMBER"}
    assert d["Sink"]["output_node"] is True
    assert d["Add"]["outputs"] == [{"name": "number", "socket": "NUMBER", "description": ""}]


def test_comfy_api_import_maps_slots_to_names():
    from ipgraph.engine.comfy import from_comfy_api, to_comfy_api

    prompt = {"1": {"class_type": "Const", "inputs": {"value": 2.0}},
              "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "offset": 1.0}},
              "3": {"class_type": "Sink", "inputs": {"value": ["2", 0]}}}
    g = from_comfy_api(prompt, fake.REGISTRY)
    assert Engine(fake.REGISTRY).run(g).outputs["3"].value == 3.0
    assert to_comfy_api(g) == prompt



RENAMES = Registry()


class SrcIn(NodeInputs):
    amount: float = 1.0


class SrcOut(NodeOutputs):
    VALUE: Any = Output("NUMBER")


@RENAMES.node("Src", renamed_inputs={"value": "amount"}, renamed_outputs={"number": "VALUE"})
def _src(inp: SrcIn, ctx: NodeContext) -> SrcOut:
    return SrcOut(VALUE=inp.amount)


class SinkIn(NodeInputs):
    x: Any = Socket("NUMBER")


class SinkOut(NodeOutputs):
    y: Any = Output("NUMBER")


@RENAMES.node("Sink", output_node=True)
def _sink(inp: SinkIn, ctx: NodeContext) -> SinkOut:
    return SinkOut(y=inp.x * 2)


def test_renamed_inputs_and_outputs_keep_old_documents_loading():
    old = {"nodes": {"a": {"type": "Src", "inputs": {"value": 4.0}},
                     "b": {"type": "Sink", "inputs": {"x": {"node": "a", "output": "number"}}}}}
    graph = Graph.from_dict(old, RENAMES)
    assert graph.nodes["a"].inputs == {"amount": 4.0}
    assert graph.nodes["b"].inputs["x"].output == "VALUE"
    assert Engine(RENAMES).run(graph).outputs["b"].y == 8.0
    built = Graph(RENAMES)
    sink = built.add("Sink", x=built.add("Src", value=3.0).number)  # the builder takes the old names too
    assert built.nodes[sink.id].inputs["x"].output == "VALUE"

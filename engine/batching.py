"""Running several graphs at once, sharing what they have in common (``run_batch``).

Graphs that are equal except for the ``varying`` literal inputs of nodes with a :class:`~.node.BatchPolicy`
(a seed sweep; several users submitting one workflow with new seeds) have the same :func:`batch_signature`. They
run in lockstep, node by node in one topological order:

- a node whose cache key is the same in several graphs (the shared prefix: loaders, encoders) runs once, its
  events going to every run that shares it (it stops early only when all of them are cancelled);
- a node with a batch policy whose keys differ runs as ONE call of the policy (one inputs model per distinct
  key), each run getting its own output, events and cache entry; when the policy declines (None), fails or is
  cancelled by one run, the calls run one by one as they would alone (a cancelled run is reported cancelled);
- every other node runs per graph, as in :meth:`Engine.run`.

Each graph gets what ``Engine.run`` would give it: its own RunStarted / node events / RunFinished (or RunFailed,
RunCancelled) and a :class:`RunResult`; one run's failure or cancellation never ends the others. The engine
knows nothing of what a policy does (stacking latents is the sampler nodes' business).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from typing import Any

from . import events as ev
from . import tensors
from .executor import (
    CancelToken,
    Engine,
    NodeContext,
    NodeFailed,
    RunCancelledError,
    RunResult,
    ValidationFailed,
)
from .graph import Graph, is_link

log = logging.getLogger("ipgraph.engine")


def batch_signature(engine: Engine, graph: Graph, outputs: list[str] | None = None) -> str | None:
    """Equal for graphs that :func:`run_batch` can run together (equal but for their batch nodes' varying
    literals); None when the graph has no node with a batch policy (nothing to share a call of)."""
    try:
        order = engine.plan(graph, outputs)
    except Exception:
        return None
    doc: dict[str, Any] = {}
    batchable = False
    for node_id in order:
        entry = graph.nodes[node_id]
        node_type = engine.registry.get(entry.type)
        if node_type is None:
            return None
        varying = set(node_type.batch.varying) if node_type.batch else set()
        batchable |= bool(varying)
        doc[node_id] = [entry.type, {name: (value.to_json() if is_link(value) else value)
                                     for name, value in entry.inputs.items()
                                     if is_link(value) or name not in varying}]
    if not batchable:
        return None
    text = json.dumps([doc, outputs], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class _AllCancelled:
    """The token of a call shared by several runs: cancelled once every one of them is."""

    def __init__(self, tokens: list) -> None:
        self.tokens = tokens

    @property
    def cancelled(self) -> bool:
        return all(t.cancelled for t in self.tokens)


def run_batch(engine: Engine, graphs: list[Graph], outputs: list[str] | None = None,
              on_events: list | None = None, cancels: list | None = None, run_ids: list[str | None] | None = None,
              extras: list[dict | None] | None = None) -> list:
    """Run ``graphs`` together; one entry per graph: its RunResult, or the exception ``Engine.run`` would have
    raised for it (ValidationFailed, NodeFailed, RunCancelledError)."""
    n = len(graphs)
    run_ids = [r or uuid.uuid4().hex for r in (run_ids or [None] * n)]
    emits = [e or (lambda event: None) for e in (on_events or [None] * n)]
    cancels = [c or CancelToken() for c in (cancels or [None] * n)]
    extras = list(extras or [None] * n)
    results: list[Any] = [None] * n

    def alone(i: int):
        try:
            return engine.run(graphs[i], outputs, on_event=emits[i], cancel=cancels[i], run_id=run_ids[i],
                              extra=extras[i])
        except (ValidationFailed, NodeFailed, RunCancelledError) as exc:
            return exc

    if n == 1:
        return [alone(0)]
    live: list[int] = []
    for i, graph in enumerate(graphs):
        problems = engine.validate(graph, outputs)
        if problems:
            emits[i](ev.RunFailed(run_ids[i], {"problems": [p.to_dict() for p in problems]}))
            results[i] = ValidationFailed(problems)
        else:
            live.append(i)
    signatures = {batch_signature(engine, graphs[i], outputs) for i in live}
    if len(live) < 2 or len(signatures) != 1 or None in signatures:
        for i in live:
            results[i] = alone(i)
        return results

    order = engine.plan(graphs[live[0]], outputs)
    started = time.perf_counter()
    keys: dict[int, dict[str, str]] = {i: {} for i in live}
    values: dict[int, dict[str, Any]] = {i: {} for i in live}
    uis: dict[int, dict[str, dict]] = {i: {} for i in live}
    executed: dict[int, list[str]] = {i: [] for i in live}
    cached: dict[int, list[str]] = {i: [] for i in live}
    for i in live:
        emits[i](ev.RunStarted(run_ids[i], tuple(order)))

    def cancelled(i: int, node_id: str | None) -> None:
        if i in live:
            live.remove(i)
            emits[i](ev.RunCancelled(run_ids[i], node_id))
            results[i] = RunCancelledError(f"run {run_ids[i]} cancelled in node {node_id}")

    def failed(i: int, exc: Exception) -> None:
        if i in live:
            live.remove(i)
            emits[i](ev.RunFailed(run_ids[i], exc.error.to_dict()))
            results[i] = exc

    def context(members: list[int], node_id: str, type_name: str) -> NodeContext:
        first = members[0]
        if len(members) == 1:
            return NodeContext(run_ids[first], node_id, type_name, engine.resources, emits[first], cancels[first],
                               graphs[first], extras[first])

        def fan_out(e: ev.Event) -> None:
            for j in members:
                if j in live:
                    emits[j](dataclasses.replace(e, run_id=run_ids[j]))

        return NodeContext(run_ids[first], node_id, type_name, engine.resources, fan_out,
                           _AllCancelled([cancels[j] for j in members]), graphs[first], extras[first])

    for node_id in order:
        for i in list(live):
            if cancels[i].cancelled:
                cancelled(i, node_id)
        if not live:
            break
        type_name = graphs[live[0]].nodes[node_id].type
        node_type = engine.registry[type_name]
        literals: dict[int, dict] = {}
        groups: dict[str, list[int]] = {}
        for i in live:
            entry = graphs[i].nodes[node_id]
            literals[i] = engine._literals(node_type, entry.inputs)
            key = engine._key(node_type, entry.inputs, literals[i], keys[i])
            keys[i][node_id] = key
            groups.setdefault(key, []).append(i)
        todo: list[tuple[str, list[int]]] = []
        for key, members in groups.items():
            hit = engine.cache.get(key)
            if hit is None:
                todo.append((key, members))
                continue
            for i in members:
                values[i][node_id] = hit.outputs
                if hit.ui is not None:
                    uis[i][node_id] = hit.ui
                cached[i].append(node_id)
                emits[i](ev.NodeCached(run_ids[i], node_id, type_name, hit.ui))
        if not todo:
            continue
        done: dict[str, tuple] = {}
        if node_type.batch is not None and len(todo) > 1:
            done = _call_batch(engine, node_type, node_id, todo, graphs, literals, values,
                               lambda m, nid=node_id, tn=type_name: context(m, nid, tn), cancels, cancelled)
        for key, members in todo:
            members = [i for i in members if i in live]
            if key in done or not members:
                continue
            ctx = context(members, node_id, type_name)
            first = members[0]
            try:
                done[key] = engine._execute(ctx, node_type, graphs[first].nodes[node_id].inputs, literals[first],
                                            values[first])
            except RunCancelledError:
                for i in members:
                    if cancels[i].cancelled:
                        cancelled(i, node_id)
            except NodeFailed as exc:
                for i in members:
                    failed(i, exc)
        for key, members in todo:
            if key not in done:
                continue
            out, ui, seconds = done[key]
            engine.cache.put(key, out, ui)
            for i in members:
                if i not in live:
                    continue
                values[i][node_id] = out
                if ui is not None:
                    uis[i][node_id] = ui
                executed[i].append(node_id)
                emits[i](ev.NodeFinished(run_ids[i], node_id, type_name, seconds, ui))

    seconds = time.perf_counter() - started
    for i in live:
        emits[i](ev.RunFinished(run_ids[i], seconds, tuple(executed[i]), tuple(cached[i])))
        results[i] = RunResult(run_ids[i], values[i], uis[i], executed[i], cached[i], seconds)
    return results


def _call_batch(engine, node_type, node_id, todo, graphs, literals, values, context, cancels, cancelled) -> dict:
    """One call of the node's batch policy for every distinct key in ``todo``: {key: (outputs, ui, seconds)},
    or {} when the calls must run one by one (the policy declined or failed; runs cancelled meanwhile are
    reported here)."""

    ctxs, inputs, snapshots = [], [], []
    for _key, members in todo:
        first = members[0]
        kwargs = dict(literals[first])
        linked = {name: v for name, v in graphs[first].nodes[node_id].inputs.items() if is_link(v)}
        for name, link in linked.items():
            kwargs[name] = getattr(values[first][link.node], link.output)
        snapshots.append([tensors.versions(kwargs[name]) for name in linked])
        inputs.append(node_type.inputs_model.model_construct(**kwargs))
        ctxs.append(context(members))
    for ctx in ctxs:
        ctx._emit(ev.NodeStarted(ctx.run_id, node_id, node_type.type_name))
    started = time.perf_counter()
    try:
        outs = node_type.batch.run(inputs, ctxs)
    except RunCancelledError:
        for _, members in todo:
            for i in members:
                if cancels[i].cancelled:
                    cancelled(i, node_id)
        return {}
    except Exception:  # each call then runs alone and reports its own error
        log.warning("the batched call of %s (%s) failed; running its %d calls one by one", node_id,
                    node_type.type_name, len(todo), exc_info=True)
        return {}
    seconds = time.perf_counter() - started
    mutated = [t for snap in snapshots for s in snap if tensors.changed(s) for t, _ in s]
    if mutated:
        engine.cache.discard_holding(mutated)
        return {}
    if outs is None:
        return {}
    if len(outs) != len(todo) or not all(isinstance(o, node_type.outputs_model) for o in outs):
        log.warning("the batch policy of %s returned %s for %d calls", node_type.type_name, type(outs).__name__,
                    len(todo))
        return {}
    return {key: (out, ctx.ui, seconds) for (key, _), out, ctx in zip(todo, outs, ctxs, strict=True)}

"""Cache-affinity routing: which pending job a free worker should take.

A job's *profile* is the set of output-cache keys its planned nodes would have (``Engine.cache_keys``: the same
Merkle keys the workers' caches use) and the model files it names. A worker reports what it holds (its cache
keys and loaded model files). The score of a (job, worker) pair is ``MODEL_WEIGHT`` per model file already loaded
plus one per upstream output already cached.

Policies, for a free worker W looking at the first ``window`` pending jobs:

- ``affinity`` (default): take the job W scores best on, earliest first on ties, leaving a job to an *idle* worker
  that scores strictly better on it (a busy one is not waited for: an idle worker is the least loaded, so it takes
  the work rather than wait). The head of the queue is taken anyway once it was passed over ``max_skips`` times,
  so no job starves.
- ``fifo``: the head of the queue, whoever asks (today's behaviour).
- ``random``: each job is given a random worker the first time it is seen; W takes the first job given to it, or
  the head when none is (the baseline the note measures against).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ipgraph.engine import Engine, Graph

MODEL_WEIGHT = 4
POLICIES = ("affinity", "fifo", "random")


@dataclass
class Profile:
    keys: frozenset
    models: frozenset


@dataclass
class Holdings:
    """What one worker holds, as it last reported it."""
    keys: set = field(default_factory=set)
    models: set = field(default_factory=set)
    loads: int = 0  # model files the worker loaded so far (its model manager's count)

    def update(self, held: dict | None) -> None:
        if held:
            self.keys = set(held.get("keys") or ())
            self.models = set(held.get("models") or ())
            self.loads = int(held.get("loads") or 0)


def model_files(graph: Graph, registry) -> frozenset:
    """The model-file widget values of a graph (inputs declared with ``model_kind``)."""
    names = set()
    for entry in graph.nodes.values():
        node_type = registry.get(entry.type) if hasattr(registry, "get") else None
        for name, value in entry.inputs.items():
            spec = node_type.inputs.get(name) if node_type is not None else None
            extra = getattr(getattr(spec, "info", None), "json_schema_extra", None)
            if isinstance(value, str) and isinstance(extra, dict) and extra.get("model_kind"):
                names.add(value)
    return frozenset(names)


class Router:
    def __init__(self, engine: Engine, policy: str = "affinity", window: int = 8, max_skips: int = 8,
                 seed: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r} (one of {', '.join(POLICIES)})")
        self.engine = engine
        self.policy = policy
        self.window = window
        self.max_skips = max_skips
        self._profiles: dict[str, Profile] = {}
        self._skips: dict[str, int] = {}
        self._assigned: dict[str, str] = {}
        self._rng = random.Random(seed)

    def profile(self, job) -> Profile:
        prof = self._profiles.get(job.id)
        if prof is None:
            try:
                graph = Graph.from_dict(job.graph, self.engine.registry)
                prof = Profile(frozenset(self.engine.cache_keys(graph, job.outputs).values()), model_files(graph, self.engine.registry))
            except Exception:  # a graph the engine cannot plan still runs (and fails) somewhere
                prof = Profile(frozenset(), frozenset())
            self._profiles[job.id] = prof
        return prof

    def score(self, job, held: Holdings) -> int:
        prof = self.profile(job)
        return MODEL_WEIGHT * len(prof.models & held.models) + len(prof.keys & held.keys)

    def forget(self, job_id: str) -> None:
        self._profiles.pop(job_id, None)
        self._skips.pop(job_id, None)
        self._assigned.pop(job_id, None)

    def pick(self, worker: str, window: list, holdings: dict[str, Holdings], idle: set[str]):
        """The job of ``window`` (pending, in run order) that ``worker`` should take, or None to wait."""
        if not window:
            return None
        if len(self._profiles) > 8 * self.window:  # jobs cancelled while pending: forget them
            keep = {j.id for j in window}
            for table in (self._profiles, self._skips, self._assigned):
                for job_id in [k for k in table if k not in keep]:
                    del table[job_id]
        head = window[0]
        if self.policy == "fifo":
            return head
        if self.policy == "random":
            names = sorted(holdings)
            for job in window:
                if job.id not in self._assigned:
                    self._assigned[job.id] = self._rng.choice(names)
            return next((j for j in window if self._assigned[j.id] == worker), head)
        if self._skips.get(head.id, 0) >= self.max_skips:
            return head
        mine = holdings.get(worker, Holdings())
        others = [holdings[w] for w in idle if w != worker and w in holdings]
        best, best_score = None, -1
        for job in window:
            s = self.score(job, mine)
            if any(self.score(job, o) > s for o in others):
                continue  # an idle worker that fits it better will ask next
            if s > best_score:
                best, best_score = job, s
        if best is None:
            return None
        for job in window:
            if job is best:
                break
            self._skips[job.id] = self._skips.get(job.id, 0) + 1
        return best

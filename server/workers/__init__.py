"""Workers: who runs the jobs of the queue (see ``pool.py`` for the protocol).

``--workers`` (``ServerConfig.workers``):

- ``inprocess`` (default): one engine in a thread of the server, sharing its output folder (today's server).
- ``local:N``: N engines in threads of the server, each with its own output cache and model manager.
- ``ray`` / ``ray:N``: N Ray actors on a local cluster started for the user; ``ray://HOST:PORT``: on an existing
  cluster (N = ``worker_count``, default: one per GPU, else 1).
- ``none``: no workers of the server's own; only remote ``ipgraph worker`` processes run jobs.

Remote ``ipgraph worker`` processes can join any of them over HTTP (``/ipgraph/worker/...``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ipgraph.engine import Engine

from .outputs import OutputStore
from .pool import ThreadWorker, WorkerPool, worker_runtime

log = logging.getLogger("ipgraph.server")

__all__ = ["build_pool", "parse_workers"]


def parse_workers(spec: str, count: int | None = None) -> tuple[str, int | None, str | None]:
    """``spec`` -> (kind, count, ray address)."""
    spec = (spec or "inprocess").strip()
    if spec in ("inprocess", "none"):
        return spec, None, None
    if spec.startswith("ray://"):
        return "ray", count, spec
    kind, _, n = spec.partition(":")
    if kind not in ("local", "ray"):
        raise ValueError(f"--workers {spec!r}: expected inprocess, local:N, ray, ray:N, ray://HOST:PORT or none")
    if n:
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--workers {spec!r}: the number of workers must be a positive integer")
        count = int(n)
    return kind, count, None


def build_pool(state) -> WorkerPool:
    cfg = state.config
    kind, count, address = parse_workers(cfg.workers, cfg.worker_count)
    outputs = OutputStore({"output": cfg.output_dir, "temp": cfg.temp_dir})
    pool = WorkerPool(state.store, state.hub, state.engine, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts,
                      policy=cfg.routing, outputs=outputs)
    prepare = state._prepare_models if (state.uses_default_registry and cfg.prepare_tiny_models) else None
    scratch = Path(cfg.data_dir) / "workers"
    if kind == "inprocess":
        pool.add(ThreadWorker(pool, "inprocess", state.engine, upload=False, before_first_job=prepare))
    elif kind == "local":
        for i in range(count or 2):
            runtime = worker_runtime(state.runtime, scratch / f"local-{i}")
            engine = Engine(state.registry, runtime, cache_bytes=cfg.cache_bytes)
            pool.add(ThreadWorker(pool, f"local-{i}", engine, upload=True, kind="local",
                                  before_first_job=prepare if i == 0 else None))
    elif kind == "ray":
        from . import ray_pool

        ray_pool.connect(address or "ray", num_cpus=cfg.ray_num_cpus)
        gpus = ray_pool.cluster_gpus()
        n = count or max(1, gpus)
        if prepare is not None:
            prepare()
        runtime = state.runtime
        args = {"models_dir": str(runtime.models_dir), "input_dir": str(runtime.input_dir),
                "scratch": str(scratch.resolve()), "cache_bytes": cfg.cache_bytes,
                "registry_spec": cfg.registry_spec, "device": None}
        for i in range(n):
            pool.add(ray_pool.RayWorker(pool, i, args, gpus=gpus, respawn_delay=cfg.respawn_delay_s))
    log.info("workers: %s", cfg.workers)
    return pool

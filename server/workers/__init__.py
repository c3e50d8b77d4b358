"""Workers: who runs the jobs of the queue (see ``pool.py`` for the protocol).

``--workers`` (``ServerConfig.workers``):

- ``inprocess`` (default): one engine in a thread of the server, sharing its output folder (today's server).
- ``local:N``: N ``ipgraph worker`` child processes on loopback, each with its own engine, output cache and model
  manager (``local.py``).
- ``ray`` / ``ray:N``: N Ray actors on a local cluster started for the user; ``ray://HOST:PORT``: on an existing
  cluster (N = ``worker_count``, default: one per GPU, else 1).
- ``none``: no workers of the server's own; only remote ``ipgraph worker`` processes run jobs.

Remote ``ipgraph worker`` processes can join any of them over HTTP (``/ipgraph/worker/...``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .outputs import OutputStore
from .pool import ThreadWorker, WorkerPool

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
        pool.add(ThreadWorker(pool, "inprocess", state.engine, upload=False, before_first_job=prepare,
                              batch=max(1, cfg.batch)))
    elif kind == "local":
        import os

        from .local import ProcessWorker

        n = count or 2
        gpus = _cuda_count()
        if prepare is not None:  # before the children start: they must not write the same files at once
            prepare()
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{cfg.port}"
        runtime = state.runtime
        for i in range(n):
            pool.add(ProcessWorker(pool, i, url, cfg.token, runtime.models_dir, runtime.input_dir,
                                   (scratch / f"local-{i}").resolve(), device=f"cuda:{i % gpus}" if gpus else None,
                                   threads=max(1, (os.cpu_count() or 1) // n), respawn_delay=cfg.respawn_delay_s,
                                   registry_spec=cfg.registry_spec, cache_gb=cfg.cache_bytes / 1024**3,
                                   batch=cfg.batch))
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


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0

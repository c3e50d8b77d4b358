"""Kept for imports of the old single worker: the server's workers now live in ``server/workers/`` (one lease
protocol for the in-process thread, Ray actors and remote ``ipgraph worker`` processes)."""

from .workers.pool import ThreadWorker as Worker
from .workers.relay import now_ms

__all__ = ["Worker", "now_ms"]

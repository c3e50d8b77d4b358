"""``--workers local:N``: N ``ipgraph worker`` child processes on loopback, each with its own engine, output cache
and model manager (on GPU machines each pinned to one device, round robin). They speak the HTTP lease protocol
like any remote worker, so a worker that dies (kill -9, OOM) costs the server nothing: its job is requeued at once
and the process is started again. On Linux the children die with the server (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .pool import Run, WorkerPool

log = logging.getLogger("ipgraph.server")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ProcessWorker:
    kind = "local"

    def __init__(self, pool: WorkerPool, index: int, server_url: str, token: str | None, models_dir: Path,
                 input_dir: Path, work_dir: Path, device: str | None = None, threads: int = 1,
                 respawn_delay: float = 2.0, registry_spec: str | None = None, cache_gb: float = 2.0,
                 batch: int = 1) -> None:
        self.pool = pool
        self.id = f"local-{index}"
        self.url = server_url
        self.token = token
        self.args = [sys.executable, "-m", "ipgraph", "worker", "--server", server_url, "--name", self.id,
                     "--models-dir", str(models_dir), "--input-dir", str(input_dir), "--work-dir", str(work_dir),
                     "--cache-gb", str(cache_gb), "--batch", str(max(1, batch)), "--log-level", "warning"]
        if device:
            self.args += ["--device", device]
        if registry_spec:
            self.args += ["--registry", registry_spec]
        self.threads = threads
        self.respawn_delay = respawn_delay
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name=f"ipgraph-{self.id}", daemon=True)
        pool.register(self.id, "local", device or "auto")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def join(self, timeout: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.thread.join(timeout)

    def alive(self, run: Run) -> bool:
        return False  # it renews its own lease over HTTP

    def cancel(self, job_id: str) -> None:
        pass  # the cancel flag reaches it in the reply to its next heartbeat

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.setdefault("IPGRAPH_TORCH_THREADS", str(self.threads))
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        if self.token:
            env["IPGRAPH_TOKEN"] = self.token
        self.starts += 1
        self.proc = subprocess.Popen(self.args, env=env, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self.proc is None:
                self._spawn()
            code = self.proc.poll()
            if code is None:
                self._stop.wait(0.2)
                continue
            if self._stop.is_set():
                break
            log.warning("worker %s exited (%s); starting it again", self.id, code)
            run = next((r for r in list(self.pool.runs.values()) if r.worker == self.id), None)
            if run is not None:
                self.pool.lost(run, f"process exited with {code}")
            self.pool.seen(self.id, "gone")
            self.proc = None
            self._stop.wait(self.respawn_delay)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()


def wait_ready(pool: WorkerPool, ids: list[str], timeout: float) -> bool:
    """True once every worker of ``ids`` asked for a job (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(pool.workers.get(i) is not None and pool.workers[i].state in ("idle", "busy") for i in ids):
            return True
        time.sleep(0.1)
    return False

"""The lease protocol over HTTP, for ``ipgraph worker`` processes (``/ipgraph/worker/...``; the server's token
guards them like every route).

- ``POST /ipgraph/worker/lease`` ``{"worker", "device"?, "held"?, "wait"?, "batch"?}`` -> ``{"job", "token",
  "lease_s", "mates"}``, or 204 when nothing is pending for this worker within ``wait`` seconds (at most 10).
  ``mates``: up to ``batch - 1`` (at most 15) more pending jobs leased with it because their graphs differ only
  in their seeds (``{"job", "token"}`` each: the worker samples them as one batch, each with its own lease).
- ``POST /ipgraph/worker/jobs/{id}/heartbeat`` ``{"worker", "token", "events": [...]}`` -> ``{"ok", "cancel"}``:
  relays the events to the submitting client and renews the lease; 409 once the lease is no longer this token's
  (it ran out and the job went to another worker: stop running it).
- ``POST /ipgraph/worker/jobs/{id}/complete`` ``{"worker", "token", "result", "held"?}`` -> ``{"ok"}`` (409: stale).
- ``GET /ipgraph/workers``: every worker and what it runs.

A remote worker's lease outlives a server restart: after one, its next heartbeat re-attaches the run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..responses import json_body
from .pool import Run, WorkerPool
from .relay import Relay
from .wire import from_json, to_json

log = logging.getLogger("ipgraph.server")
_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def _worker_name(body: dict) -> str:
    name = body.get("worker")
    if not isinstance(name, str) or not _NAME.match(name):
        raise HTTPException(400, "worker must be a short name (letters, digits, _.:@-)")
    return name if name.startswith(("remote-", "local-")) else f"remote-{name}"  # local-: the server's children


def worker_router(state) -> APIRouter:
    r = APIRouter(prefix="/ipgraph", tags=["workers"])
    pool: WorkerPool = state.worker

    async def body_of(request: Request) -> dict:
        body = await json_body(request, {})
        if not isinstance(body, dict):
            raise HTTPException(400, "expected a JSON object")
        return body

    def run_for(job_id: str, worker: str, token: str) -> Run:
        run = pool.run_of(job_id)
        if run is None:  # the server restarted while this worker ran the job: re-attach it if the lease holds
            job = state.store.get(job_id)
            if job is None or job.lease_token != token or job.status != "running":
                raise HTTPException(409, "this lease is no longer current")
            run = pool.adopt(Run(job, token, worker, Relay(state.hub, job, worker,
                                                          ingest=pool._ingest_for(worker))))
        if run.token != token or run.worker != worker:
            raise HTTPException(409, "this lease is no longer current")
        return run

    @r.post("/worker/lease", summary="Lease the next job for a remote worker")
    async def lease(request: Request):
        body = await body_of(request)
        worker = _worker_name(body)
        device = str(body.get("device") or "cpu")[:64]
        held = body.get("held") if isinstance(body.get("held"), dict) else None
        wait = min(10.0, max(0.0, float(body.get("wait") or 0)))
        pool.register(worker, "local" if worker.startswith("local-") else "remote", device)
        deadline = time.monotonic() + wait
        try:
            batch = min(16, max(1, int(body.get("batch") or 1)))
        except (TypeError, ValueError):
            raise HTTPException(400, "batch must be a number of jobs") from None
        while True:
            run = await run_in_threadpool(pool.acquire, worker, held)
            if run is not None:
                try:
                    mates = await run_in_threadpool(pool.acquire_mates, worker, run, batch)
                except Exception:  # the job itself is leased: it runs alone
                    log.exception("leasing batch mates failed")
                    mates = []
                return {"job": run.payload(), "token": run.token, "lease_s": pool.lease_s,
                        "mates": [{"job": m.payload(), "token": m.token} for m in mates]}
            if time.monotonic() >= deadline or pool.stopping.is_set():
                return Response(status_code=204)
            await asyncio.sleep(0.2)

    @r.post("/worker/jobs/{job_id}/heartbeat", summary="Renew a lease and relay the worker's events")
    async def heartbeat(job_id: str, request: Request):
        body = await body_of(request)
        worker, token = _worker_name(body), str(body.get("token") or "")
        run = run_for(job_id, worker, token)
        events = from_json(body.get("events") or [])

        def apply() -> bool:
            for wire in events if isinstance(events, list) else []:
                if isinstance(wire, dict):
                    pool.event(run, wire)
            return pool.renew(run)

        if not await run_in_threadpool(apply):
            raise HTTPException(409, "this lease is no longer current")
        return {"ok": True, "cancel": run.cancel_requested}

    @r.post("/worker/jobs/{job_id}/complete", summary="Record a remote worker's outcome")
    async def complete(job_id: str, request: Request):
        body = await body_of(request)
        worker, token = _worker_name(body), str(body.get("token") or "")
        run = run_for(job_id, worker, token)
        result = from_json(body.get("result") or {})
        if not isinstance(result, dict):
            raise HTTPException(400, "result must be an object")
        held = body.get("held") if isinstance(body.get("held"), dict) else None
        ok = await run_in_threadpool(pool.finish, run, result, held)
        if not ok:
            return JSONResponse({"ok": False, "detail": "this lease is no longer current"}, status_code=409)
        return {"ok": True}

    @r.get("/workers", summary="Every worker and what it runs")
    def workers():
        return {"workers": pool.describe(), "lease_s": pool.lease_s, "max_attempts": pool.max_attempts,
                "routing": pool.router.policy}

    return r


__all__ = ["to_json", "worker_router"]

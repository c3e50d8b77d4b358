"""The persistent job queue and history: one SQLite file in the data folder, and the lease protocol workers use.

A job moves ``pending -> running -> completed | failed | cancelled``. Lower ``number`` runs first (``front: true``
submissions get a negative number and jump ahead).

Leases, not claims: a worker *leases* a pending job for ``lease_s`` seconds (``lease``), which raises the job's
``attempts`` and hands out a fresh ``lease_token``; it renews the lease with heartbeats while it runs (``renew``)
and records the outcome with ``complete``. Every call names the token, so a worker whose lease expired (it was
cut off, and the job was leased again) can neither renew nor complete the job: no job is ever recorded twice.

Crash policy (``expire``, called by the server's reaper): a running job whose lease ran out lost its worker (kill -9,
OOM, a lost machine). It goes back to ``pending`` keeping its place in the queue, unless it already used
``max_attempts`` attempts (default 2: a job that kills its worker twice is probably the cause); then it fails with
``exception_type: "WorkerLost"`` and a message saying so, also stored as an ``execution_error`` in ComfyUI's
``history.status.messages``. At server start (``recover``) the leases of the server's own workers (in-process and
Ray actors, which die with it) are expired at once; remote workers keep theirs and renew when the server is back.
Finished results (history rows and output files) are never touched.

Every write is a single transaction under a lock, so a bad request can never leave half a row behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
FINISHED = (COMPLETED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    status TEXT NOT NULL,
    graph TEXT NOT NULL,            -- ipgraph/1 document that runs
    outputs TEXT,                   -- JSON list of output node ids to run (null = every output node)
    prompt TEXT,                    -- the ComfyUI API prompt as submitted (null for native submissions)
    extra_data TEXT,                -- ComfyUI extra_data (holds the UI workflow)
    client_id TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    ui TEXT,                        -- JSON {node_id: ui} (saved image names...)
    error TEXT,                     -- JSON error description
    messages TEXT,                  -- JSON [[event, data], ...] (ComfyUI history status.messages)
    executed TEXT,                  -- JSON list of executed node ids
    cached TEXT,                    -- JSON list of cached node ids
    attempts INTEGER NOT NULL DEFAULT 0,  -- leases handed out so far
    lease_token TEXT,               -- the current lease (null unless running)
    lease_expires REAL,             -- wall-clock end of the current lease
    worker TEXT                     -- the worker holding (or that last held) the job
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, number);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class Job:
    id: str
    number: float
    status: str
    graph: dict
    outputs: list[str] | None = None
    prompt: dict | None = None
    extra_data: dict = field(default_factory=dict)
    client_id: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    ui: dict = field(default_factory=dict)
    error: dict | None = None
    messages: list = field(default_factory=list)
    executed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
    attempts: int = 0
    lease_token: str | None = None
    lease_expires: float | None = None
    worker: str | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id, "number": self.number, "status": self.status, "graph": self.graph,
            "outputs": self.outputs, "client_id": self.client_id, "created": self.created,
            "started": self.started, "finished": self.finished, "ui": self.ui, "error": self.error,
            "executed": self.executed, "cached": self.cached, "attempts": self.attempts, "worker": self.worker,
        }


_JSON_COLS = {"graph": None, "outputs": None, "prompt": None, "extra_data": {}, "ui": {}, "error": None,
              "messages": [], "executed": [], "cached": []}


_LEASE_COLUMNS = {"attempts": "INTEGER NOT NULL DEFAULT 0", "lease_token": "TEXT", "lease_expires": "REAL",
                  "worker": "TEXT"}
LOCAL_WORKER_PREFIXES = ("inprocess", "local-", "ray-")  # workers that die with the server process


def attempts_error(attempts: int, max_attempts: int) -> dict:
    """The error of a job whose worker was lost on each of its attempts."""
    return {"exception_type": "WorkerLost", "node_id": None, "node_type": None, "traceback": "", "inputs": {},
            "message": f"the worker running this job stopped (crash, kill -9, out of memory or a lost machine) "
                       f"on each of its {attempts} attempts; it was not retried again (at most {max_attempts} "
                       "attempts: a job that takes its worker down that often is probably the cause)"}


def _row_to_job(row: sqlite3.Row) -> Job:
    data: dict[str, Any] = dict(row)
    for col, default in _JSON_COLS.items():
        raw = data.get(col)
        data[col] = json.loads(raw) if raw is not None else (default.copy() if default is not None else None)
    return Job(**data)


class JobStore:
    """Thread-safe access to the jobs table (one connection, serialized by a lock; WAL journal)."""

    def __init__(self, path: Path, max_attempts: int = 2) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for col, decl in _LEASE_COLUMNS.items():  # databases written before leases existed
            if col not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {col} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(sql, args)
                self._db.execute("COMMIT")
                return cur
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- startup --------------------------------------------------------------------------------
    def recover(self, max_attempts: int | None = None) -> list[str]:
        """At server start: expire the leases of the server's own (dead) workers, then requeue or fail them as
        :meth:`expire` does. Returns the ids that failed for good (the others are pending again)."""
        marks = " OR ".join("worker LIKE ?" for _ in LOCAL_WORKER_PREFIXES)
        self._tx(f"UPDATE jobs SET lease_expires=0 WHERE status=? AND (worker IS NULL OR {marks})",
                 (RUNNING, *(p + "%" for p in LOCAL_WORKER_PREFIXES)))
        requeued, failed = self.expire(max_attempts or self.max_attempts)
        self.requeued_at_start = requeued
        return failed

    # -- queue ----------------------------------------------------------------------------------
    def next_number(self) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM counters WHERE name='number'").fetchone()
                value = row["value"] if row else 0
                self._db.execute("INSERT OR REPLACE INTO counters(name, value) VALUES('number', ?)", (value + 1,))
                self._db.execute("COMMIT")
                return value
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add(self, job: Job) -> None:
        self._tx(
            "INSERT INTO jobs(id, number, status, graph, outputs, prompt, extra_data, client_id, created)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            (job.id, job.number, job.status, json.dumps(job.graph), _dump(job.outputs), _dump(job.prompt),
             json.dumps(job.extra_data or {}), job.client_id, job.created or time.time()))

    # -- leases ---------------------------------------------------------------------------------
    def lease(self, worker: str, lease_s: float, job_id: str | None = None) -> tuple[Job, str] | None:
        """Lease ``job_id`` (or the first pending job) to ``worker``: (job, token), or None if not pending."""
        token = uuid.uuid4().hex
        with self._lock:
            if job_id is None:
                row = self._db.execute("SELECT id FROM jobs WHERE status=? ORDER BY number, created LIMIT 1",
                                       (PENDING,)).fetchone()
                if row is None:
                    return None
                job_id = row["id"]
            now = time.time()
            cur = self._tx("UPDATE jobs SET status=?, started=?, attempts=attempts+1, lease_token=?,"
                           " lease_expires=?, worker=? WHERE id=? AND status=?",
                           (RUNNING, now, token, now + lease_s, worker, job_id, PENDING))
            if cur.rowcount != 1:
                return None
            return self.get(job_id), token

    def renew(self, job_id: str, token: str, lease_s: float) -> bool:
        """Extend a lease; False when it is no longer this token's (expired and re-leased, or cancelled)."""
        cur = self._tx("UPDATE jobs SET lease_expires=? WHERE id=? AND lease_token=? AND status=?",
                       (time.time() + lease_s, job_id, token, RUNNING))
        return cur.rowcount == 1

    def complete(self, job_id: str, token: str, status: str, *, ui: dict | None = None,
                 error: dict | None = None, messages: list | None = None, executed: list | None = None,
                 cached: list | None = None) -> bool:
        """Record a leased job's outcome; False (nothing written) when the token is stale."""
        cur = self._tx("UPDATE jobs SET status=?, finished=?, ui=?, error=?, messages=?, executed=?, cached=?,"
                       " lease_token=NULL, lease_expires=NULL WHERE id=? AND lease_token=? AND status=?",
                       (status, time.time(), json.dumps(ui or {}), _dump(error), json.dumps(messages or []),
                        json.dumps(executed or []), json.dumps(cached or []), job_id, token, RUNNING))
        return cur.rowcount == 1

    def release(self, job_id: str, token: str, count_attempt: bool = False) -> bool:
        """Give a leased job back to the queue (a graceful stop: the attempt is not counted)."""
        cur = self._tx("UPDATE jobs SET status=?, started=NULL, lease_token=NULL, lease_expires=NULL,"
                       " attempts=attempts-? WHERE id=? AND lease_token=? AND status=?",
                       (PENDING, 0 if count_attempt else 1, job_id, token, RUNNING))
        return cur.rowcount == 1

    def lost(self, job_id: str, token: str, max_attempts: int) -> str | None:
        """The worker holding this lease is known dead (a Ray actor died): requeue or fail the job at once.
        Returns the new status, or None when the lease was not current."""
        if not self._tx("UPDATE jobs SET lease_expires=0 WHERE id=? AND lease_token=? AND status=?",
                        (job_id, token, RUNNING)).rowcount:
            return None
        requeued, failed = self.expire(max_attempts, only=job_id)
        return PENDING if requeued else FAILED if failed else None

    def expire(self, max_attempts: int, only: str | None = None) -> tuple[list[str], list[str]]:
        """Requeue running jobs whose lease ran out, or fail those out of attempts: (requeued, failed)."""
        requeued, failed = [], []
        with self._lock:
            rows = self._db.execute("SELECT id, attempts, lease_token FROM jobs WHERE status=? AND"
                                    " (lease_expires IS NULL OR lease_expires < ?)", (RUNNING, time.time())).fetchall()
            for row in rows:
                if only is not None and row["id"] != only:
                    continue
                where = ("id=? AND status=? AND lease_token IS ?", (row["id"], RUNNING, row["lease_token"]))
                if row["attempts"] >= max_attempts:
                    error = attempts_error(row["attempts"], max_attempts)
                    message = ["execution_error", {
                        "prompt_id": row["id"], "node_id": None, "node_type": None, "executed": [],
                        "exception_message": error["message"], "exception_type": error["exception_type"],
                        "traceback": [], "current_inputs": {}, "current_outputs": [],
                        "timestamp": int(time.time() * 1000)}]
                    cur = self._tx("UPDATE jobs SET status=?, finished=?, error=?, messages=?, lease_token=NULL,"
                                   f" lease_expires=NULL WHERE {where[0]}",
                                   (FAILED, time.time(), json.dumps(error), json.dumps([message]), *where[1]))
                    (failed if cur.rowcount else []).append(row["id"])
                else:
                    cur = self._tx("UPDATE jobs SET status=?, started=NULL, lease_token=NULL, lease_expires=NULL"
                                   f" WHERE {where[0]}", (PENDING, *where[1]))
                    (requeued if cur.rowcount else []).append(row["id"])
        return requeued, failed

    def pending_window(self, limit: int) -> list[Job]:
        """The first ``limit`` pending jobs in run order (what the router chooses from)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status=? ORDER BY number, created LIMIT ?",
                                    (PENDING, int(limit))).fetchall()
        return [_row_to_job(r) for r in rows]

    def cancel_pending(self, job_ids: list[str] | None = None) -> list[str]:
        """Cancel pending jobs (all of them when ``job_ids`` is None); returns the ids cancelled."""
        with self._lock:
            if job_ids is None:
                ids = [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE status=?", (PENDING,))]
            else:
                ids = [i for i in job_ids if (j := self.get(i)) is not None and j.status == PENDING]
            for job_id in ids:
                self._tx("UPDATE jobs SET status=?, finished=? WHERE id=? AND status=?",
                         (CANCELLED, time.time(), job_id, PENDING))
            return ids

    def delete_finished(self, job_ids: list[str] | None = None) -> int:
        with self._lock:
            marks = ",".join("?" for _ in FINISHED)
            if job_ids is None:
                return self._tx(f"DELETE FROM jobs WHERE status IN ({marks})", FINISHED).rowcount
            n = 0
            for job_id in job_ids:
                n += self._tx(f"DELETE FROM jobs WHERE id=? AND status IN ({marks})", (job_id, *FINISHED)).rowcount
            return n

    # -- reading --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def list(self, statuses: tuple[str, ...] | list[str] | None = None, limit: int = 100, offset: int = 0,
             newest_first: bool = True) -> tuple[list[Job], int]:
        statuses = tuple(statuses or STATUSES)
        marks = ",".join("?" for _ in statuses)
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created {order}, number {order}"
                " LIMIT ? OFFSET ?", (*statuses, int(limit), int(offset))).fetchall()
        return [_row_to_job(r) for r in rows], total

    def queue(self) -> tuple[list[Job], list[Job]]:
        """(running, pending in run order)."""
        with self._lock:
            running = [_row_to_job(r) for r in self._db.execute("SELECT * FROM jobs WHERE status=?", (RUNNING,))]
            pending = [_row_to_job(r) for r in self._db.execute(
                "SELECT * FROM jobs WHERE status=? ORDER BY number, created", (PENDING,))]
        return running, pending

    def count(self, *statuses: str) -> int:
        marks = ",".join("?" for _ in statuses)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)

"""The persistent job queue and history: one SQLite file in the data folder.

A job moves ``pending -> running -> completed | failed | cancelled``. The worker claims the pending job with the
lowest ``number`` (``front: true`` submissions get a negative number and jump ahead).

Crash/restart policy (see ``JobStore.recover``): when the server starts, a job still marked ``running`` was cut
off by a crash or a kill. It is marked ``failed`` with ``error.exception_type = "ServerRestarted"`` and is NOT
re-run automatically (a graceful stop does the same at shutdown, with ``"ServerStopped"``) (a job that crashed the process would otherwise crash it again on every start). Pending
jobs stay pending and run in their original order. Completed results (history rows and output files) are never
touched by a restart.

Every write is a single transaction under a lock, so a bad request can never leave half a row behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
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
    cached TEXT                     -- JSON list of cached node ids
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

    def to_dict(self) -> dict:
        return {
            "id": self.id, "number": self.number, "status": self.status, "graph": self.graph,
            "outputs": self.outputs, "client_id": self.client_id, "created": self.created,
            "started": self.started, "finished": self.finished, "ui": self.ui, "error": self.error,
            "executed": self.executed, "cached": self.cached,
        }


_JSON_COLS = {"graph": None, "outputs": None, "prompt": None, "extra_data": {}, "ui": {}, "error": None,
              "messages": [], "executed": [], "cached": []}


def _row_to_job(row: sqlite3.Row) -> Job:
    data: dict[str, Any] = dict(row)
    for col, default in _JSON_COLS.items():
        raw = data.get(col)
        data[col] = json.loads(raw) if raw is not None else (default.copy() if default is not None else None)
    return Job(**data)


class JobStore:
    """Thread-safe access to the jobs table (one connection, serialized by a lock; WAL journal)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

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
    def recover(self) -> list[str]:
        """Mark jobs left ``running`` by a previous process as failed; returns their ids."""
        with self._lock:
            ids = [r["id"] for r in self._db.execute("SELECT id FROM jobs WHERE status=?", (RUNNING,))]
            error = {"exception_type": "ServerRestarted",
                     "message": "the server stopped while this job was running; it was not re-run",
                     "node_id": None, "node_type": None}
            for job_id in ids:
                self._tx("UPDATE jobs SET status=?, finished=?, error=? WHERE id=?",
                         (FAILED, time.time(), json.dumps(error), job_id))
            return ids

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

    def claim_next(self) -> Job | None:
        """Atomically move the first pending job to running and return it."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE status=? ORDER BY number, created LIMIT 1",
                                   (PENDING,)).fetchone()
            if row is None:
                return None
            self._tx("UPDATE jobs SET status=?, started=? WHERE id=? AND status=?",
                     (RUNNING, time.time(), row["id"], PENDING))
            return self.get(row["id"])

    def finish(self, job_id: str, status: str, *, ui: dict | None = None, error: dict | None = None,
               messages: list | None = None, executed: list | None = None, cached: list | None = None) -> None:
        self._tx("UPDATE jobs SET status=?, finished=?, ui=?, error=?, messages=?, executed=?, cached=?"
                 " WHERE id=?",
                 (status, time.time(), json.dumps(ui or {}), _dump(error), json.dumps(messages or []),
                  json.dumps(executed or []), json.dumps(cached or []), job_id))

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

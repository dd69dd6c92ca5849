"""The baseline for the end-to-end figures: the least service of our design, over HTTP.

One Flask app, served as ours is (gunicorn, one worker, 8 threads), that stores a batch of
tasks in one durable commit (`POST /api/tasks/batch`) and runs them with the bare loop
design of bench/floor.py: a thread that makes every pass with the service's own statements
(complete, history, count down, promote, claim, events: one commit) and hands each claim
to one of 16 threads through a queue. There is no validation beyond reading three fields,
no admission, no log line, no metric, no recovery, no answer but each task's id and status.

What it reaches is what this machine gives one process of the design, HTTP included:
the service's e2e figures are to be read against it. The database (BENCH_MINIMAL_DB) is
created by `flask db upgrade`, as the service's is; the tasks' `started_at` and
`finished_at`, which the figures are read from, are written by the same statements.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from typing import Any

from flask import Flask, request

from app.storage.database import sqlite_time, utcnow
from bench.floor import SLOTS, bare_connection, one_pass, register

log = logging.getLogger("bench.minimal_service")

# A pass at least this often, as the service's polling safety net.
POLL_S = 1.0
# The wait before a pass that failed is made again.
FAILED_PASS_S = 0.05
# Rows per INSERT, as the service writes a batch (SQLite binds at most 32,766 values).
ROWS = 500
_COLUMNS = (
    "id, type, duration_ms, status, payload, priority, trigger_rule, max_attempts,"
    " retry_backoff_ms, pending_deps, attempts, failures, created_at, updated_at, batch_id,"
    " cancel_requested, queue"
)
_ROW = "(?, ?, ?, 'QUEUED', '{}', 0, 'all_success', 1, 1000, 0, 0, 0, ?, ?, ?, 0, 'default')"
_EVENT = "(?, ?, 0, 'QUEUED', 'submitted', ?)"


class Loop:
    """The bare loop design, running for as long as the process does."""

    def __init__(self, path: str) -> None:
        self.conn = bare_connection(path)
        self.wake = threading.Event()
        self._todo: queue.SimpleQueue[tuple[str, int, float]] = queue.SimpleQueue()
        self._ended: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        # The seconds each claimed task of another type than no-op sleeps, from its claim.
        self._sleeps: dict[str, float] = {}
        # Why the last pass failed, if it did: /health reports it.
        self.problem: str | None = None
        register(self.conn, "minimal")
        for _ in range(SLOTS):
            threading.Thread(target=self._slot, daemon=True).start()
        threading.Thread(target=self._run, name="loop", daemon=True).start()

    def _slot(self) -> None:
        while True:
            task_id, attempt, seconds = self._todo.get()
            if seconds:
                time.sleep(seconds)
            with self._lock:
                self._ended.append((task_id, attempt))
            self.wake.set()

    def _run(self) -> None:
        running = 0
        while True:
            self.wake.clear()
            with self._lock:
                ended, self._ended = self._ended, []
            try:
                claims = one_pass(
                    self.conn, ended, SLOTS - running + len(ended), True, self._sleeps
                )
            except sqlite3.Error as exc:  # the pass did nothing: try again with the same
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.problem = f"a pass failed: {exc}"
                log.warning("%s; trying again", self.problem)
                with self._lock:
                    self._ended[:0] = ended
                time.sleep(FAILED_PASS_S)
                continue
            self.problem = None
            running += len(claims) - len(ended)
            for task_id, attempt in claims:
                self._todo.put((task_id, attempt, self._sleeps.pop(task_id, 0.0)))
            self.wake.wait(POLL_S)


def _now() -> str:
    return sqlite_time(utcnow())


def create_app() -> Flask:
    """Return the app on BENCH_MINIMAL_DB, its loop running."""
    app = Flask(__name__)
    path = os.environ["BENCH_MINIMAL_DB"]
    loop = Loop(path)
    local = threading.local()

    def connection() -> sqlite3.Connection:
        if not hasattr(local, "conn"):
            local.conn = bare_connection(path)
        return local.conn

    @app.post("/api/tasks/batch")
    def submit_batch() -> tuple[dict[str, Any], int]:
        tasks = request.get_json()["tasks"]
        now = _now()
        batch_id = uuid.uuid4().hex
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(tasks), ROWS):
                part = tasks[start : start + ROWS]
                rows = [(t["id"], t["type"], t["duration_ms"], now, now, batch_id) for t in part]
                conn.execute(
                    f"INSERT INTO tasks ({_COLUMNS}) VALUES {', '.join([_ROW] * len(part))}",
                    [v for row in rows for v in row],
                )
                conn.execute(
                    "INSERT INTO task_events (task_id, type, attempt, status, reason, at)"
                    f" VALUES {', '.join([_EVENT] * len(part))}",
                    [v for t in part for v in (t["id"], t["type"], now)],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        loop.wake.set()
        answer = [{"id": t["id"], "status": "QUEUED"} for t in tasks]
        return {"batch_id": batch_id, "tasks": answer}, 201

    @app.get("/health")
    def health() -> dict[str, Any]:
        # What the bench's start-up waits for.
        if loop.problem is not None:
            return {"scheduler": {"state": "failing", "problem": loop.problem}}
        return {"scheduler": {"state": "running"}}

    return app


def __getattr__(name: str) -> Any:
    # `gunicorn bench.minimal_service:app` reads this attribute: build the app only then.
    if name == "app":
        return create_app()
    raise AttributeError(name)

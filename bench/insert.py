"""Batch submissions, server side: how fast `POST /api/tasks/batch`'s work stores tasks.

In this process, through the app's own service (`app.services.batch.submit_batch`, what
the route calls after reading the body), on a fresh database with the scheduler off: 10
batches of 10,000 tasks, every second task depending on the one before it (an edge row
each). From the first batch's validation to the last one's commit, in tasks per second,
on SQLite (FULL) and, with a PostgreSQL server, there (rows written with COPY).
"""

from __future__ import annotations

import time
from typing import Any

from bench.growth import open_app
from bench.server import Database, migrate

BATCHES = 10
BATCH = 10_000


def _bodies(prefix: str) -> list[dict[str, Any]]:
    bodies = []
    for b in range(BATCHES):
        items = []
        for i in range(b * BATCH, (b + 1) * BATCH):
            task: dict[str, Any] = {"id": f"{prefix}{i}", "type": "noop", "duration_ms": 1}
            if i % 2:
                task["dependencies"] = [f"{prefix}{i - 1}"]
            items.append(task)
        bodies.append({"tasks": items})
    return bodies


def batch_insert(db: Database) -> dict[str, Any]:
    """Store BATCHES x BATCH tasks through submit_batch; tasks per second."""
    from app.services.batch import submit_batch

    migrate(db)
    app = open_app(db)
    engine = app.extensions["store"].engine
    bodies = _bodies("i")
    began = time.perf_counter()
    for body in bodies:
        if not submit_batch(engine, body).created:
            raise RuntimeError("a batch was answered as a replay")
    took = time.perf_counter() - began
    engine.dispose()
    n = BATCHES * BATCH
    return {"tasks": n, "seconds": took, "tasks_per_s": n / took}

"""Our service end to end: throughput of independent tasks, a chain, and a fan-in.

Every figure comes from the tasks' own timestamps (started_at, finished_at), read back
from the database file after the run, so polling for completion adds no error.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any

from app.handlers import SIMULATE
from bench import db as store
from bench.client import Client
from bench.noop_handlers import NOOP, STAMP
from bench.server import Database

TIMEOUT_S = 600.0


def _task(task_id: str, deps: list[str] | None = None, kind: str = NOOP) -> dict[str, Any]:
    body: dict[str, Any] = {"id": task_id, "type": kind, "duration_ms": 1}
    if deps:
        body["dependencies"] = deps
    return body


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def throughput(
    client: Client,
    db: Database,
    prefix: str,
    n: int,
    batch: int,
    timeout_s: float = TIMEOUT_S,
    kind: str = NOOP,
) -> dict[str, Any]:
    """Submit `n` independent tasks of type `kind` (no-op ones unless told) in batches;
    time first submission to last finish."""
    bodies = [
        {"tasks": [_task(f"{prefix}-{i}", kind=kind) for i in range(start, min(start + batch, n))]}
        for start in range(0, n, batch)
    ]
    started = _utcnow()
    clock = time.perf_counter()
    for body in bodies:
        client.post("/api/tasks/batch", body)
    submit_s = time.perf_counter() - clock
    store.wait_finished(db, timeout_s)
    summary = store.span(db, prefix + "-")
    _check(summary, n)
    wall = (summary["last_finish"] - started).total_seconds()
    running = (summary["last_finish"] - summary["first_start"]).total_seconds()
    return {
        "tasks": n,
        "batch_size": batch,
        "submit_s": submit_s,
        "wall_s": wall,
        "tasks_per_s": n / wall,
        "run_tasks_per_s": n / running,
    }


def chain(
    client: Client, db: Database, prefix: str, n: int, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Submit an `n`-task chain as one batch; per hop = (last finish - first start)/(n-1)."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    tasks = [_task(ids[0])] + [_task(ids[i], [ids[i - 1]]) for i in range(1, n)]
    client.post("/api/tasks/batch", {"tasks": tasks})
    store.wait_finished(db, timeout_s)
    _check(store.span(db, prefix + "-"), n)
    first_start, _ = store.times(db, ids[0])
    _, last_finish = store.times(db, ids[-1])
    wall = (last_finish - first_start).total_seconds()
    return {"tasks": n, "wall_s": wall, "per_hop_ms": wall * 1000 / (n - 1)}


def fan_in(
    client: Client, db: Database, prefix: str, parents: int, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Submit `parents` tasks and one child of them all; the child's start lag after them.

    Two lags: to the child's recorded `started_at`, and to the moment its handler was
    called (the `stamp` type returns it), which also counts the hand-over to a thread.
    """
    ids = [f"{prefix}-p{i}" for i in range(parents)]
    child = f"{prefix}-child"
    client.post("/api/tasks/batch", {"tasks": [*map(_task, ids), _task(child, ids, STAMP)]})
    store.wait_finished(db, timeout_s)
    summary = store.span(db, prefix + "-p")
    _check(summary, parents)
    child_start, child_finish = store.times(db, child)
    last = summary["last_finish"]
    called = datetime.fromtimestamp(store.result(db, child)["called_at"], UTC)
    return {
        "parents": parents,
        "child_lag_ms": (child_start - last).total_seconds() * 1000,
        "handler_lag_ms": (called.replace(tzinfo=None) - last).total_seconds() * 1000,
        "total_s": (child_finish - summary["first_start"]).total_seconds(),
    }


# Tasks of the wait figure, one after the other, and how long each runs.
WAITS = 20
WAITED_TASK_MS = 50


def wait_latency(client: Client, prefix: str, waits: int = WAITS) -> dict[str, Any]:
    """Submit a task of WAITED_TASK_MS and at once wait for it with `?wait=`; how long
    after its recorded finish the answer arrived (one at a time, `waits` times)."""
    lags = []
    for k in range(waits):
        task_id = f"{prefix}-{k}"
        client.post("/api/tasks", {**_task(task_id, kind=SIMULATE), "duration_ms": WAITED_TASK_MS})
        answer = client.get(f"/api/tasks/{task_id}?wait=30")
        received = datetime.now(UTC)
        if answer["status"] != "COMPLETED":
            raise RuntimeError(f"{task_id} is {answer['status']} after its wait")
        finished = datetime.fromisoformat(answer["finished_at"].replace("Z", "+00:00"))
        lags.append((received - finished).total_seconds() * 1000)
    lags.sort()
    return {
        "waits": waits,
        "median_ms": statistics.median(lags),
        "p90_ms": lags[int(0.9 * (len(lags) - 1))],
    }


def _check(summary: dict[str, Any], expected: int) -> None:
    if summary["tasks"] != expected or summary["completed"] != expected:
        raise RuntimeError(
            f"expected {expected} completed tasks, found {summary['completed']} "
            f"of {summary['tasks']}"
        )

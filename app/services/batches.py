"""A whole run at once: `GET /api/batches/<id>`, and cancel or retry every task of it.

A batch is the tasks one `POST /api/tasks/batch` (or a schedule's firing) stored under
one batch id, and those their handlers added. Its summary counts them by status and says
where the run stands. Cancel and retry act on all of them in one transaction, by the rules
the single-task actions apply: a cancel ends every QUEUED task and asks every RUNNING one
to stop (their dependents outside the batch follow, as after single cancels); a retry
starts again from each task of the batch that failed or that a user cancelled, bringing
back what each held back.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app import events
from app.errors import InvalidParameter, InvalidState, NotFound
from app.schemas import ID_PATTERN
from app.services.actions import held_back, requeue
from app.statuses import RETRYABLE, TERMINAL, Status
from app.storage import cascade, database, eventlog
from app.storage.graph import batch_tasks, edges, ended_attempts
from app.storage.notify import announce
from app.storage.propagation import CANCEL, count_down_cut, cut_off, settle
from app.storage.reads import batch_roots, batch_summary

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger("app.batches")

MAX_BATCH_ID_LENGTH = 64
# What the batch page draws at most: tasks (in submission order), and attempts that ended
# on its timeline (the latest).
MAX_VIEW_TASKS = 2000
MAX_VIEW_ATTEMPTS = 5000
_FAILED = {Status.FAILED.value, Status.UPSTREAM_FAILED.value}


def check_batch_id(batch_id: str) -> None:
    """Raise invalid_parameter for a batch id no batch can have."""
    if len(batch_id) > MAX_BATCH_ID_LENGTH or not re.match(ID_PATTERN, batch_id):
        raise InvalidParameter(
            f"{batch_id[:70]!r} is not a batch id: batch ids use 1 to {MAX_BATCH_ID_LENGTH} "
            "characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit.",
            {"batch_id": "Not a batch id."},
        )


def summary(engine: Engine, batch_id: str) -> dict[str, Any]:
    """Return the batch's counts by status, its state, first start and last finish."""
    check_batch_id(batch_id)
    with database.read(engine) as conn:
        return _summary(conn, batch_id)


def view(engine: Engine, batch_id: str) -> dict[str, Any]:
    """Return what the batch page draws: the summary, the tasks (at most MAX_VIEW_TASKS;
    `truncated` says there are more), the edges among them, the attempts that ended (the
    latest MAX_VIEW_ATTEMPTS; `attempts_truncated` says there are more), and
    `events_after`: the event the page's stream resumes after to miss no later change.

    Everything is read in one snapshot, so the counts agree with the tasks' statuses; a
    change the snapshot holds may also come again from the stream (applying a task's
    status again changes nothing).
    """
    check_batch_id(batch_id)
    with database.snapshot_read(engine) as conn:
        after = eventlog.opening(conn).seq
        answer = _summary(conn, batch_id)
        found = batch_tasks(conn, batch_id, MAX_VIEW_TASKS + 1)
        shown = found[:MAX_VIEW_TASKS]
        ids = [task["id"] for task in shown]
        ended = ended_attempts(conn, ids, MAX_VIEW_ATTEMPTS + 1)
        return {
            "batch": answer,
            "tasks": shown,
            "edges": edges(conn, ids),
            "attempts": ended[-MAX_VIEW_ATTEMPTS:],
            "truncated": len(found) > MAX_VIEW_TASKS,
            "attempts_truncated": len(ended) > MAX_VIEW_ATTEMPTS,
            "limit": MAX_VIEW_TASKS,
            "events_after": after,
        }


def _summary(conn: Connection, batch_id: str) -> dict[str, Any]:
    rows = batch_summary(conn, batch_id)
    if not rows:
        raise NotFound(f"No batch {batch_id!r}.", {"batch_id": batch_id})
    counts = {s.value: 0 for s in Status}
    starts: list[datetime] = []
    finishes: list[datetime] = []
    for status, count, first, last in rows:
        counts[status] = int(count)
        if first is not None:
            starts.append(first)
        if last is not None:
            finishes.append(last)
    total = sum(counts.values())
    unfinished = counts[Status.QUEUED.value] + counts[Status.RUNNING.value]
    done = all(status in TERMINAL for status, n in counts.items() if n)
    return {
        "batch_id": batch_id,
        "state": _state(counts, unfinished, bool(starts)),
        "total": total,
        "counts": counts,
        "first_started_at": min(starts) if starts else None,
        "last_finished_at": max(finishes) if done and finishes else None,
    }


def _state(counts: dict[str, int], unfinished: int, started: bool) -> str:
    if unfinished:
        return "running" if counts[Status.RUNNING.value] or started else "queued"
    if counts[Status.COMPLETED.value] == sum(counts.values()):
        return "completed"
    if any(counts[s] for s in _FAILED):
        return "failed"
    return "cancelled"


def cancel(engine: Engine, batch_id: str) -> dict[str, Any]:
    """Cancel every unfinished task of the batch; answer its summary afterwards."""
    check_batch_id(batch_id)
    outcome = database.transaction(engine, lambda conn: _cancel(conn, batch_id))
    log.info(
        "batch %s cancelled by a user: %d queued task(s) cancelled, %d running asked to stop",
        batch_id,
        outcome["changed"]["cancelled"],
        outcome["changed"]["stopping"],
    )
    return outcome


def _cancel(conn: Connection, batch_id: str) -> dict[str, Any]:
    cascade.one_at_a_time(conn)
    found = cascade.unfinished_of_batch(conn, batch_id)
    if not found:
        answer = _summary(conn, batch_id)  # 404 for an unknown batch
        raise InvalidState(
            f"Batch {batch_id} has no QUEUED or RUNNING task to cancel; it is {answer['state']}.",
            {"batch_id": batch_id, "state": answer["state"]},
        )
    now = database.now(conn)
    queued = [(i, t, a) for i, t, a, s in found if s == Status.QUEUED.value]
    running = [(i, t, a) for i, t, a, s in found if s == Status.RUNNING.value]
    cancelled = set(cascade.cancel_queued_many(conn, [i for i, _, _ in queued], now))
    reason = "cancelled by a user with its batch"
    events.stage([(i, t, a, Status.CANCELLED, reason) for i, t, a in queued if i in cancelled])
    readied = settle(conn, dict.fromkeys(cancelled, Status.CANCELLED), now) if cancelled else 0
    stopping = cascade.ask_to_stop_many(conn, [i for i, _, _ in running], now)
    if stopping:
        stopped = cut_off(conn, dict.fromkeys(stopping, CANCEL), now)
        readied += count_down_cut(conn, stopped)
    if readied:
        announce(conn)  # all_done dependents may be ready now
    answer = _summary(conn, batch_id)
    answer["changed"] = {"cancelled": len(cancelled), "stopping": len(stopping)}
    return answer


def retry(engine: Engine, batch_id: str) -> dict[str, Any]:
    """Retry every task of the batch that failed or that a user cancelled, with what each
    held back; answer the batch's summary afterwards."""
    check_batch_id(batch_id)
    outcome = database.transaction(engine, lambda conn: _retry_batch(conn, batch_id))
    log.info(
        "batch %s retried by a user: %d task(s) retried", batch_id, outcome["changed"]["retried"]
    )
    return outcome


def _retry_batch(conn: Connection, batch_id: str) -> dict[str, Any]:
    cascade.one_at_a_time(conn)
    wanted = [task_id for task_id, _ in batch_roots(conn, batch_id)]
    # Locked, then read again: one may have changed since the read that found it.
    statuses = cascade.lock_all(conn, wanted)
    roots = [t for t in wanted if statuses.get(t) in RETRYABLE]
    requeued: set[str] = set()
    if roots:
        # Every root at once, with what each held back: one walk, one requeue, however
        # many tasks the batch has. A root whose own dependency outside the retried set
        # did not complete stays, as its single retry would refuse.
        with database.by_index(conn):
            requeued, edges = held_back(conn, roots)
            came_back = requeued & set(roots)
            if came_back:
                requeue(
                    conn, requeued, edges, came_back, "retried by a user with its batch", batch_id
                )
    answer = _summary(conn, batch_id)
    retried = len(requeued & set(roots))
    if not retried:
        raise InvalidState(
            f"Batch {batch_id} has no task to retry: none failed or was cancelled by a user, "
            "or each waits for a dependency outside the batch that did not complete.",
            {"batch_id": batch_id, "state": answer["state"]},
        )
    announce(conn)
    answer["changed"] = {"retried": retried}
    return answer

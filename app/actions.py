"""What a user does to a task after submitting it: cancel and retry, one transaction each."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update

from . import database, events
from .errors import InvalidState
from .events import Change
from .models import FAILED_LIKE, TERMINAL, Status
from .notify import announce
from .propagation import cut_off, settle
from .queries import check_task_id, dependencies_with_status, load_task, unknown_task
from .tables import chunks, deps, tasks

# Tasks that did not run because of another task, and come back when it is retried.
CAUGHT = or_(
    tasks.c.status == Status.UPSTREAM_FAILED.value,
    and_(tasks.c.status == Status.CANCELLED.value, tasks.c.error_code == "upstream_cancelled"),
)
BLOCKING = (*FAILED_LIKE, Status.CANCELLED.value)


def _locked(conn: Connection, task_id: str) -> Any:
    query = select(
        tasks.c.id, tasks.c.type, tasks.c.attempts, tasks.c.status, tasks.c.error_code
    ).where(tasks.c.id == task_id)
    row = conn.execute(query.with_for_update()).first()
    if row is None:
        raise unknown_task(task_id)
    return row


def cancel(engine: Engine, task_id: str) -> dict[str, Any]:
    """Cancel a QUEUED task at once, or ask a RUNNING one to stop; cascade to dependents."""
    check_task_id(task_id)
    with database.write(engine) as conn:
        row = _locked(conn, task_id)
        now = database.utcnow()
        if row.status == Status.QUEUED.value:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
                .values(
                    status=Status.CANCELLED.value,
                    error="Cancelled by a user before it started.",
                    error_code="cancelled",
                    finished_at=now,
                    updated_at=now,
                )
            )
            events.stage([(task_id, row.type, row.attempts, "CANCELLED", "cancelled by a user")])
            if settle(conn, {task_id: Status.CANCELLED}, now):
                announce(conn)  # all_done dependents may be ready now
        elif row.status == Status.RUNNING.value:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status == Status.RUNNING.value)
                .values(cancel_requested=True, updated_at=now)
            )
            # Its dependents that have not started will never see it succeed for them.
            stopped = cut_off(conn, [task_id], Status.CANCELLED, "was cancelled", now)
            settle(conn, dict.fromkeys(stopped, Status.CANCELLED), now)
        else:
            raise InvalidState(
                f"Task {task_id} is {row.status}; only QUEUED or RUNNING tasks can be cancelled.",
                {"id": task_id, "status": row.status},
            )
        task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def retry(engine: Engine, task_id: str) -> dict[str, Any]:
    """Requeue a FAILED or CANCELLED task with a fresh budget, and what it held back."""
    check_task_id(task_id)
    with database.write(engine) as conn:
        row = _locked(conn, task_id)
        if row.status == Status.UPSTREAM_FAILED.value or row.error_code == "upstream_cancelled":
            root = root_cause(conn, task_id)
            raise InvalidState(
                f"Task {task_id} did not run because {root} did not succeed; retry {root}.",
                {"id": task_id, "status": row.status, "root": root},
            )
        if row.status not in (Status.FAILED.value, Status.CANCELLED.value):
            raise InvalidState(
                f"Task {task_id} is {row.status}; only FAILED or CANCELLED tasks can be retried.",
                {"id": task_id, "status": row.status},
            )
        blocked = _blocking_dependency(conn, task_id)
        if blocked is not None:
            raise InvalidState(
                f"Task {task_id} depends on {blocked}, which did not succeed; retry {blocked}.",
                {"id": task_id, "root": blocked},
            )
        requeued = _held_back(conn, task_id)
        _requeue(conn, requeued, task_id)
        announce(conn)
        task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def root_cause(conn: Connection, task_id: str) -> str:
    """Follow the dependencies that stopped a task down to the one that failed itself."""
    current = task_id
    for _ in range(100_000):
        query = (
            select(tasks.c.id, tasks.c.status, tasks.c.error_code)
            .join(deps, deps.c.dependency_id == tasks.c.id)
            .where(deps.c.task_id == current, tasks.c.status.in_(BLOCKING))
            .order_by(tasks.c.id)
        )
        culprit = conn.execute(query).first()
        if culprit is None:
            return current
        current = culprit.id
    return current


def _blocking_dependency(conn: Connection, task_id: str) -> str | None:
    query = (
        select(tasks.c.id)
        .join(deps, deps.c.dependency_id == tasks.c.id)
        .where(deps.c.task_id == task_id, tasks.c.status.in_(BLOCKING))
        .order_by(tasks.c.id)
    )
    trigger = conn.execute(select(tasks.c.trigger_rule).where(tasks.c.id == task_id)).scalar()
    return None if trigger == "all_done" else conn.execute(query).scalar()


def _held_back(conn: Connection, root: str) -> set[str]:
    """Return the root and every dependent that did not run only because of it."""
    candidates = {root}
    frontier = [root]
    while frontier:
        found: list[str] = []
        for part in chunks(frontier):
            query = (
                select(tasks.c.id)
                .join(deps, deps.c.task_id == tasks.c.id)
                .where(deps.c.dependency_id.in_(part), CAUGHT)
            )
            found.extend(i for (i,) in conn.execute(query) if i not in candidates)
        frontier = list(dict.fromkeys(found))
        candidates.update(frontier)
    # Keep only those whose every failed or cancelled dependency comes back too.
    while True:
        edges = dependencies_with_status(conn, list(candidates - {root}))
        kept = {
            t
            for t in candidates
            if t == root or all(d in candidates or s not in BLOCKING for d, s in edges.get(t, []))
        }
        if kept == candidates:
            return kept
        candidates = kept


def _requeue(conn: Connection, requeued: set[str], root: str) -> None:
    now = database.utcnow()
    edges = dependencies_with_status(conn, list(requeued))
    changes: list[Change] = []
    for task_id in sorted(requeued, key=lambda t: (t != root, t)):
        pending = sum(1 for d, s in edges.get(task_id, []) if d in requeued or s not in TERMINAL)
        found = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(
                status=Status.QUEUED.value,
                pending_deps=pending,
                failures=0,
                run_at=None,
                error=None,
                error_code=None,
                result=None,
                progress=None,
                finished_at=None,
                cancel_requested=False,
                updated_at=now,
            )
            .returning(tasks.c.type, tasks.c.attempts)
        ).one()
        why = "retried by a user" if task_id == root else f"its dependency {root} was retried"
        changes.append((task_id, found.type, found.attempts, Status.QUEUED.value, why))
    events.stage(changes)
    _count_up(conn, requeued)


def _count_up(conn: Connection, requeued: set[str]) -> None:
    """Give back an unfinished dependency to each QUEUED dependent outside the requeued set."""
    waiting: Counter[str] = Counter()
    for part in chunks(list(requeued)):
        query = select(deps.c.task_id).where(deps.c.dependency_id.in_(part))
        waiting.update(t for (t,) in conn.execute(query) if t not in requeued)
    for task_id, count in waiting.items():
        conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status == Status.QUEUED.value)
            .values(pending_deps=tasks.c.pending_deps + count)
        )

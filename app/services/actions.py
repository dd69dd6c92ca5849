"""What a user does to a task after submitting it: cancel and retry, one transaction each."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, text, update

from app import events
from app.errors import InvalidState
from app.events import Change
from app.services.reads import check_task_id, load_task, unknown_task
from app.statuses import BLOCKING, Status
from app.storage import database, readiness
from app.storage.notify import announce
from app.storage.propagation import cut_off, settle
from app.storage.tables import chunks, deps, tasks

# Tasks that did not run because of another task, and come back when it is retried.
CAUGHT = or_(
    tasks.c.status == Status.UPSTREAM_FAILED.value,
    and_(tasks.c.status == Status.CANCELLED.value, tasks.c.error_code == "upstream_cancelled"),
)
RETRYABLE = (*BLOCKING,)
# How many tasks a walk down to the task to retry visits at most.
MAX_WALK = 100_000
USER_ACTIONS_KEY = zlib.crc32(b"task-scheduler:cancel-and-retry")


def _one_at_a_time(conn: Connection) -> None:
    """On PostgreSQL, queue this cancel or retry behind any other until it commits.

    Two of them lock the rows of one graph in different orders (a retry locks its task,
    then the dependents it brings back, then their dependencies), so together they could
    deadlock again and again under a burst of clicks; in line they cannot. Each is short,
    and SQLite's single writer already puts them in line.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": USER_ACTIONS_KEY})


def _locked(conn: Connection, task_id: str) -> Any:
    query = select(
        tasks.c.id,
        tasks.c.type,
        tasks.c.attempts,
        tasks.c.status,
        tasks.c.error_code,
        tasks.c.trigger_rule,
    ).where(tasks.c.id == task_id)
    row = conn.execute(query.with_for_update()).first()
    if row is None:
        raise unknown_task(task_id)
    return row


def cancel(engine: Engine, task_id: str) -> dict[str, Any]:
    """Cancel a QUEUED task at once, or ask a RUNNING one to stop; cascade to dependents."""
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: _cancel(conn, task_id))


def _cancel(conn: Connection, task_id: str) -> dict[str, Any]:
    _one_at_a_time(conn)
    row = _locked(conn, task_id)
    now = database.now(conn)
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
        events.stage([(task_id, row.type, row.attempts, Status.CANCELLED, "cancelled by a user")])
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
        if settle(conn, dict.fromkeys(stopped, Status.CANCELLED), now):
            announce(conn)  # all_done dependents of those cut off may be ready now
    else:
        raise InvalidState(
            f"Task {task_id} is {row.status}; only QUEUED or RUNNING tasks can be cancelled.",
            {"id": task_id, "status": row.status},
        )
    task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def retry(engine: Engine, task_id: str) -> dict[str, Any]:
    """Requeue a task that did not complete with a fresh budget, and what it held back.

    A task whose own dependency did not complete cannot run yet: the answer names the task
    to retry instead, found by following such dependencies down; retrying that one works.
    """
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: _retry(conn, task_id))


def _retry(conn: Connection, task_id: str) -> dict[str, Any]:
    _one_at_a_time(conn)
    row = _locked(conn, task_id)
    if row.status not in RETRYABLE:
        raise InvalidState(
            f"Task {task_id} is {row.status}; only FAILED, UPSTREAM_FAILED or CANCELLED "
            "tasks can be retried.",
            {"id": task_id, "status": row.status},
        )
    root = root_cause(conn, task_id, row.trigger_rule)
    if root != task_id:
        raise InvalidState(
            f"Task {task_id} did not run because {root} did not succeed; retry {root}.",
            {"id": task_id, "status": row.status, "root": root},
        )
    requeued, edges = _held_back(conn, task_id)
    _requeue(conn, requeued, edges, task_id)
    announce(conn)
    task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def root_cause(conn: Connection, task_id: str, trigger_rule: str = "all_success") -> str:
    """Return the task whose retry works: `task_id`, or below it the first dependency that
    did not complete and has none such of its own.

    The task's own dependencies are read under the readiness locks, so that "none stops
    it" stays true until the retry commits; the walk below only names the task to retry.
    """
    if trigger_rule != "all_success":
        return task_id
    stopped = readiness.blockers(readiness.dependencies(conn, [task_id]).get(task_id, []))
    if not stopped:
        return task_id
    current = min(stopped)
    task = tasks.alias("task")
    dependency = tasks.alias("dependency")
    below = (
        select(dependency.c.id)
        .select_from(
            deps.join(task, task.c.id == deps.c.task_id).join(
                dependency, dependency.c.id == deps.c.dependency_id
            )
        )
        .where(task.c.trigger_rule == "all_success", dependency.c.status.in_(BLOCKING))
        .order_by(dependency.c.id)
        .limit(1)
    )
    for _ in range(MAX_WALK):
        culprit = conn.execute(below.where(deps.c.task_id == current)).scalar()
        if culprit is None:
            break
        current = culprit
    return current


def _held_back(conn: Connection, root: str) -> tuple[set[str], readiness.Edges]:
    """Return the root and every dependent that did not run only because of it, with the
    dependencies of each as read under the readiness locks."""
    candidates = {root}
    frontier = [root]
    while frontier:
        found: list[str] = []
        for part in chunks(frontier):
            # Lock before reading dependents: a submission naming one of these holds it
            # FOR SHARE until it commits, and its new dependent must be seen here.
            locked = select(tasks.c.id).where(tasks.c.id.in_(part)).with_for_update()
            conn.execute(locked).all()
            query = (
                select(tasks.c.id)
                .join(deps, deps.c.task_id == tasks.c.id)
                .where(deps.c.dependency_id.in_(part), CAUGHT)
            )
            found.extend(i for (i,) in conn.execute(query) if i not in candidates)
        frontier = list(dict.fromkeys(found))
        candidates.update(frontier)
    edges = readiness.dependencies(conn, candidates)
    # Keep only those whose every dependency that did not complete comes back too.
    while True:
        kept = {
            t
            for t in candidates
            if t == root or not readiness.blockers(edges.get(t, []), candidates)
        }
        if kept == candidates:
            return kept, edges
        candidates = kept


def _requeue(conn: Connection, requeued: set[str], edges: readiness.Edges, root: str) -> None:
    now = database.now(conn)
    changes: list[Change] = []
    back: set[str] = set()
    for task_id in sorted(requeued, key=lambda t: (t != root, t)):
        pending = readiness.pending(edges.get(task_id, []), requeued)
        found = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(
                status=Status.QUEUED.value,
                pending_deps=pending,
                failures=0,
                # The submitter's run_at holds again; a backoff does not.
                not_before=tasks.c.run_at,
                error=None,
                error_code=None,
                result=None,
                progress=None,
                finished_at=None,
                cancel_requested=False,
                updated_at=now,
            )
            .returning(tasks.c.type, tasks.c.attempts)
        ).first()
        if found is None:
            continue  # pruned meanwhile: nothing left to bring back
        back.add(task_id)
        why = "retried by a user" if task_id == root else f"its dependency {root} was retried"
        changes.append((task_id, found.type, found.attempts, Status.QUEUED.value, why))
    events.stage(changes)
    _count_up(conn, back)


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

"""What a user does to a task after submitting it: cancel, retry, change while QUEUED, and
delete once finished; one transaction each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app import events
from app.errors import InvalidState
from app.events import Change
from app.services import queues
from app.services.reads import check_task_id, load_task, unknown_task
from app.statuses import CANCELLABLE, RETRYABLE, TERMINAL, Status
from app.storage import cascade, database, readiness, retention, roots
from app.storage.notify import announce
from app.storage.propagation import CANCEL, count_down_cut, cut_off, settle

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine


def _locked(conn: Connection, task_id: str) -> Any:
    row = cascade.locked(conn, task_id)
    if row is None:
        raise unknown_task(task_id)
    return row


def cancel(engine: Engine, task_id: str) -> dict[str, Any]:
    """Cancel a QUEUED task at once, or ask a RUNNING one to stop; cascade to dependents."""
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: _cancel(conn, task_id))


def _cancel(conn: Connection, task_id: str) -> dict[str, Any]:
    cascade.one_at_a_time(conn)
    row = _locked(conn, task_id)
    if row.status not in CANCELLABLE:
        raise InvalidState(
            f"Task {task_id} is {row.status}; only QUEUED or RUNNING tasks can be cancelled.",
            {"id": task_id, "status": row.status},
        )
    now = database.now(conn)
    if row.status == Status.QUEUED.value:
        cascade.cancel_queued(conn, task_id, now)
        events.stage([(task_id, row.type, row.attempts, Status.CANCELLED, "cancelled by a user")])
        if settle(conn, {task_id: Status.CANCELLED}, now):
            announce(conn)  # all_done dependents may be ready now
    else:
        cascade.ask_to_stop(conn, task_id, now)
        # Its dependents that have not started will never see it succeed for them.
        stopped = cut_off(conn, {task_id: CANCEL}, now)
        if count_down_cut(conn, stopped):
            announce(conn)  # all_done dependents of those cut off may be ready now
    task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def choices(engine: Engine, task_id: str) -> dict[str, Any]:
    """Say which of cancel and retry would succeed on the task now, by the rules they apply.

    `retry_instead` names the task to retry when the task's own retry would be refused
    for a dependency that did not complete; a later change can still make an action fail.
    """
    check_task_id(task_id)
    with database.read(engine) as conn:
        task = load_task(conn, task_id, with_payload=False)
        if task is None:
            raise unknown_task(task_id)
        status = task["status"]
        root = None
        if status in RETRYABLE:
            root = root_cause(conn, task_id, task["trigger_rule"], hold=False)
    return {
        "id": task_id,
        "status": status,
        "cancel": status in CANCELLABLE,
        "retry": root == task_id,
        "retry_instead": None if root in (None, task_id) else root,
    }


def retry(engine: Engine, task_id: str) -> dict[str, Any]:
    """Requeue a task that did not complete with a fresh budget, and what it held back.

    A task whose own dependency did not complete cannot run yet: the answer names the task
    to retry instead, found by following such dependencies down; retrying that one works.
    """
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: retry_in(conn, task_id))


def retry_in(conn: Connection, task_id: str) -> dict[str, Any]:
    """Retry a task inside the caller's transaction (see `retry`)."""
    cascade.one_at_a_time(conn)
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
    with database.by_index(conn):
        requeued, edges = held_back(conn, [task_id], checked=True)
        brought_back = f"its dependency {task_id} was retried"
        requeue(conn, requeued, edges, {task_id}, "retried by a user", brought_back)
    announce(conn)
    task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def root_cause(
    conn: Connection, task_id: str, trigger_rule: str = "all_success", *, hold: bool = True
) -> str:
    """Return the task whose retry works: `task_id`, or below it the first dependency that
    did not complete and has none such of its own.

    The task's own dependencies are read under the readiness locks, so that "none stops
    it" stays true until the retry commits (without `hold`, a plain read that only
    describes); the walk below only names the task to retry.
    """
    if trigger_rule != "all_success":
        return task_id
    found = readiness.dependencies(conn, [task_id], hold=hold)
    stopped = readiness.blockers(found.get(task_id, []))
    if not stopped:
        return task_id
    return roots.retry_root(conn, stopped)


def held_back(
    conn: Connection, roots: Sequence[str], *, checked: bool = False
) -> tuple[set[str], readiness.Edges]:
    """Return the roots and every dependent that did not run only because of them, with
    the dependencies of each as read under the readiness locks.

    A root, or a dependent, that still waits for a dependency that did not complete and
    does not come back is left behind, and so are the dependents it stops. `checked`:
    the caller found the roots free to run already (a single retry's root cause), so
    they are kept whatever their dependencies.
    """
    candidates = cascade.caught_by(conn, roots)
    edges = readiness.dependencies(conn, candidates)
    # Keep only those whose every dependency that did not complete comes back too. A
    # task left behind stays in the way of its own dependents among the candidates.
    below: dict[str, list[str]] = {}
    for task_id, pairs in edges.items():
        for dependency, _ in pairs:
            if dependency in candidates:
                below.setdefault(dependency, []).append(task_id)
    kept = set(roots) if checked else set()
    left = [
        t for t in candidates if t not in kept and readiness.blockers(edges.get(t, []), candidates)
    ]
    dropped: set[str] = set()
    while left:
        task_id = left.pop()
        if task_id not in dropped and task_id not in kept:
            dropped.add(task_id)
            left.extend(below.get(task_id, []))
    return candidates - dropped, edges


def requeue(
    conn: Connection,
    requeued: set[str],
    edges: readiness.Edges,
    roots: set[str],
    why_root: str,
    why_other: str,
) -> None:
    """Put `requeued` back in the queue with fresh budgets, each waiting for its
    unfinished dependencies; log the roots with `why_root`, the rest with `why_other`."""
    now = database.now(conn)
    pending = {t: readiness.pending(edges.get(t, []), requeued) for t in requeued}
    found = {r.id: r for r in cascade.requeue(conn, pending, now)}
    changes: list[Change] = []
    for task_id in sorted(found, key=lambda t: (t not in roots, t)):
        why = why_root if task_id in roots else why_other
        row = found[task_id]
        changes.append((task_id, row.type, row.attempts, Status.QUEUED.value, why))
    events.stage(changes)
    cascade.count_up(conn, set(found))


# Tasks a delete with its dependents removes at most.
MAX_DELETED = 10_000
EDITABLE = ("priority", "run_at", "queue")


def edit(engine: Engine, task_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change what may change while a task is QUEUED: its priority, run_at and queue.

    A new run_at holds the task back until then (or lets it start now, if past), unless a
    retry backoff holds it longer; a new queue's pause and limits govern it from now on.
    """
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: _edit(conn, task_id, changes))


def _edit(conn: Connection, task_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    row = _locked(conn, task_id)
    if row.status != Status.QUEUED.value:
        raise InvalidState(
            f"Task {task_id} is {row.status}; only a QUEUED task can be changed.",
            {"id": task_id, "status": row.status},
        )
    now = database.now(conn)
    values: dict[str, Any] = {n: changes[n] for n in ("priority", "queue") if n in changes}
    if "queue" in changes:
        queues.admit(conn, [changes["queue"]], now)
    if "run_at" in changes:
        values.update(_held_until(conn, task_id, changes["run_at"], now))
    cascade.edit_queued(conn, task_id, values, now)
    shown = ", ".join(f"{name} {_shown(changes[name])}" for name in EDITABLE if name in changes)
    events.stage([(task_id, row.type, row.attempts, Status.QUEUED, f"changed by a user: {shown}")])
    announce(conn)  # it may be ready now, or in a queue another instance serves
    task = load_task(conn, task_id, with_payload=True)
    assert task is not None
    return task


def _held_until(conn: Connection, task_id: str, run_at: Any, now: Any) -> dict[str, Any]:
    """Return the run_at and not_before of a task given a new `run_at` (None: none)."""
    old = cascade.times_of(conn, task_id)
    run_at = None if run_at is None else database.naive_utc(run_at)
    # A not_before beyond the old run_at is a retry backoff: it still holds.
    backoff = old.not_before
    if backoff is not None and old.run_at is not None and backoff <= old.run_at:
        backoff = None
    held = max((t for t in (run_at, backoff) if t is not None), default=None)
    return {"run_at": run_at, "not_before": held if held is not None and held > now else None}


def _shown(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def delete(engine: Engine, task_id: str, with_dependents: bool = False) -> list[str]:
    """Delete a finished task, once every task that depends on it has COMPLETED (the
    retention rule); with `with_dependents`, together with every task below it, which must
    all be finished. Return the ids deleted; raise invalid_state naming what blocks.
    """
    check_task_id(task_id)
    return database.transaction(engine, lambda conn: _delete(conn, task_id, with_dependents))


def _delete(conn: Connection, task_id: str, with_dependents: bool) -> list[str]:
    cascade.one_at_a_time(conn)
    row = _locked(conn, task_id)
    if row.status not in TERMINAL:
        raise InvalidState(
            f"Task {task_id} is {row.status}; only a finished task can be deleted.",
            {"id": task_id, "status": row.status},
        )
    wanted = [task_id]
    if with_dependents:
        found = cascade.dependents_below(conn, task_id, MAX_DELETED)
        if found is None:
            raise InvalidState(
                f"More than {MAX_DELETED:,} tasks depend on {task_id}; delete fewer at once.",
                {"id": task_id, "limit": MAX_DELETED},
            )
        statuses = cascade.lock_all(conn, found)
        wanted = [i for i in found if statuses.get(i) in TERMINAL]
    going = retention.removable(conn, wanted)
    if task_id not in going:
        blocking = sorted(cascade.blocking_dependents(conn, task_id, set(going)))
        raise InvalidState(
            f"Task {task_id} cannot be deleted: {len(blocking)} task(s) that depend on it "
            + ("did not complete" if with_dependents else "have not COMPLETED")
            + f", e.g. {blocking[0]}"
            + ("" if with_dependents else "; delete them first, or pass with_dependents=true")
            + ".",
            {"id": task_id, "blocking": blocking[:100]},
        )
    cascade.remove(conn, going)
    return going

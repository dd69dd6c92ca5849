"""Walks down dependency edges to where a task's trouble starts.

Two questions, two walks. A retry refused because a dependency did not complete names one
task to retry instead: `retry_root` goes down one path, through every all_success task
that has a dependency that did not complete (retrying such a task would not work), to
the first that has none. The blockers answer names every root cause: `unfinished_roots`
follows unfinished dependencies to the tasks that wait for none, and `failed_roots`
follows the dependencies that stopped a task, only through tasks that did not run
because of a dependency.

The two part at an all_success task a user cancelled while it waited, and whose
dependency then failed: the retry walks through it, for it cannot be retried while that
dependency has not completed; the blockers answer stops at it, a cause in its own right,
for retrying the failed dependency would not bring it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, or_, select

from app.statuses import BLOCKING, TERMINAL, Status
from app.storage import readiness
from app.storage.tables import deps, tasks

# How many tasks a walk down to the task to retry visits at most.
MAX_RETRY_WALK = 100_000
# How many tasks a walk to the root causes visits at most.
MAX_CAUSE_WALK = 10_000


def retry_root(conn: Connection, stopped: list[str]) -> str:
    """Return the task to retry for one that the dependencies `stopped` did not let run.

    From the lowest id among them, the walk goes on to the lowest dependency that did not
    complete, as long as the task it is at is all_success and has one.
    """
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
    for _ in range(MAX_RETRY_WALK):
        culprit = conn.execute(below.where(deps.c.task_id == current)).scalar()
        if culprit is None:
            break
        current = culprit
    return current


def dependencies_where(
    conn: Connection, ids: Iterable[str], keep: Any
) -> dict[str, list[tuple[str, str]]]:
    """Return, for each task, the dependencies (id, status) whose status `keep` accepts."""
    found = readiness.dependencies(conn, ids, hold=False)
    return {t: [(d, s) for d, s in pairs if keep(s)] for t, pairs in found.items()}


def unfinished_roots(conn: Connection, start: list[str]) -> list[str]:
    """Follow unfinished dependencies down to the tasks that wait for none."""
    return _walk(conn, start, lambda status: status not in TERMINAL)


def failed_roots(conn: Connection, start: list[str]) -> list[str]:
    """Follow the dependencies that stopped a task down to the tasks whose retry works.

    The walk goes on only through tasks that did not run because of a dependency; one
    that failed or was cancelled on its own is a root, whatever its dependencies did (an
    all_done task that ran after a failure and failed too), and so is a stopped task whose
    dependencies no longer stop it. A retry of the stopped task names one of these tasks,
    unless its walk passes a task a user cancelled (see above).
    """
    return _walk(conn, start, lambda status: status in BLOCKING, _stopped_by_upstream)


def _stopped_by_upstream(conn: Connection, ids: list[str]) -> list[str]:
    """Return those of `ids` that did not run because of a dependency."""
    query = select(tasks.c.id).where(
        tasks.c.id.in_(ids),
        or_(
            tasks.c.status == Status.UPSTREAM_FAILED.value,
            tasks.c.error_code == "upstream_cancelled",
        ),
    )
    return [task_id for (task_id,) in conn.execute(query)]


def _walk(
    conn: Connection,
    start: list[str],
    follow: Any,
    through: Callable[[Connection, list[str]], list[str]] | None = None,
) -> list[str]:
    """Walk dependencies whose status `follow` accepts, from the tasks `through` lets on
    (all by default); return the tasks where the walk stops."""
    seen = set(start)
    frontier = list(start)
    roots: list[str] = []
    while frontier and len(seen) < MAX_CAUSE_WALK:
        onward = frontier if through is None else through(conn, frontier)
        below = dependencies_where(conn, onward, follow)
        following: list[str] = []
        for task_id in frontier:
            children = [d for d, _ in below.get(task_id, [])]
            if not children:
                roots.append(task_id)
            following.extend(d for d in children if d not in seen)
        seen.update(following)
        frontier = list(dict.fromkeys(following))
    return sorted(dict.fromkeys(roots))

"""Readiness: what a task waits for, read under the locks that keep the answer true.

Every path that puts a task into QUEUED (a submission, a user's retry and what it brings
back, a requeue at shutdown or after a lost claim) counts its unfinished dependencies
here, the same way. On PostgreSQL the dependency rows are read FOR SHARE: a dependency
cannot finish unseen between this read and the commit, because its finish must wait for
the lock, and then counts the task down once it is QUEUED; one that finished first is
read as finished. SQLite's single writer serialises the same transactions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from sqlalchemy import Connection, select

from app.statuses import BLOCKING, UNFINISHED
from app.storage import jsonsets
from app.storage.tables import chunks, tasks

Edges = dict[str, list[tuple[str, str]]]


def statuses(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Return the status of each existing task among `ids`, held against finishing."""
    found: dict[str, str] = {}
    for part in chunks(ids):
        query = select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(part))
        found.update((i, s) for i, s in conn.execute(query.with_for_update(read=True)))
    return found


def dependencies(conn: Connection, task_ids: Iterable[str], *, hold: bool = True) -> Edges:
    """Return each task's dependencies as (id, status), in the order given.

    With `hold`, the dependency rows are held FOR SHARE; without, it is a plain read, for
    answers that only describe. One statement however many tasks (a retry reads the
    edges of thousands).
    """
    d = conn.dialect.name
    lock = " FOR SHARE OF dependency" if hold and d == "postgresql" else ""
    sql = (
        "SELECT e.task_id, dependency.id, dependency.status"
        f" FROM ({jsonsets.ids(d, 'ids')}) AS t"
        " JOIN task_dependencies e ON e.task_id = t.id"
        " JOIN tasks dependency ON dependency.id = e.dependency_id"
        f" ORDER BY e.task_id, e.position{lock}"
    )
    found: Edges = {}
    wanted = list(dict.fromkeys(task_ids))
    if not wanted:
        return found
    for task_id, dependency_id, status in conn.exec_driver_sql(
        sql, {"ids": jsonsets.of_ids(wanted)}
    ).all():
        found.setdefault(task_id, []).append((dependency_id, status))
    return found


def pending(pairs: Iterable[tuple[str, str]], coming_back: Collection[str] = ()) -> int:
    """Count the dependencies still to finish: unfinished, or requeued with the task."""
    return sum(1 for d, s in pairs if s in UNFINISHED or d in coming_back)


def blockers(pairs: Iterable[tuple[str, str]], coming_back: Collection[str] = ()) -> list[str]:
    """Return the dependencies that ended without completing and are not coming back."""
    return [d for d, s in pairs if s in BLOCKING and d not in coming_back]

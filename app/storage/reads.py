"""Reads for the API, the blockers answer and the CLI: pages of tasks and small lookups.

Each runs in the caller's read transaction; whole tasks with their dependencies are
loaded by storage/tasks.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, union_all

from app.storage.tables import RUNNING, chunks, instances, tasks
from app.storage.tasks import LIST_COLUMNS


def newest_first(
    conn: Connection,
    *,
    statuses: Sequence[str],
    task_type: str | None,
    batch_id: str | None,
    before: int | None,
    limit: int,
) -> list[Any]:
    """Return up to `limit` task rows newest first, filtered, from before seq `before`.

    Of several statuses, each one's newest `limit` are read by its own walk of a status
    index, and the page is the newest `limit` of those: never a scan of the other
    statuses' tasks, which `status IN (...)` ordered by seq would walk through.
    """
    each: list[str | None] = [*statuses] or [None]
    walks = [_newest(s, task_type, batch_id, before, limit) for s in each]
    if len(walks) == 1:
        return list(conn.execute(walks[0]).all())
    merged = union_all(*(select(*walk.subquery().c) for walk in walks)).subquery()
    query = select(*merged.c).order_by(merged.c.seq.desc()).limit(limit)
    return list(conn.execute(query).all())


def _newest(
    status: str | None, task_type: str | None, batch_id: str | None, before: int | None, limit: int
) -> Select[Any]:
    query = select(*LIST_COLUMNS).order_by(tasks.c.seq.desc()).limit(limit)
    if status is not None:
        query = query.where(tasks.c.status == status)
    if task_type is not None:
        query = query.where(tasks.c.type == task_type)
    if batch_id is not None:
        query = query.where(tasks.c.batch_id == batch_id)
    if before is not None:
        query = query.where(tasks.c.seq < before)
    return query


def status_of(conn: Connection, task_id: str) -> str | None:
    """Return a task's status, or None when the id is unknown."""
    status: str | None = conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar()
    return status


def why_not_running(conn: Connection, task_id: str) -> Any:
    """Return what says why a task is not running (its status, times, error code), or None."""
    columns = (
        tasks.c.id,
        tasks.c.type,
        tasks.c.queue,
        tasks.c.status,
        tasks.c.run_at,
        tasks.c.not_before,
        tasks.c.error_code,
    )
    return conn.execute(select(*columns).where(tasks.c.id == task_id)).first()


def outcomes(conn: Connection, ids: Sequence[str]) -> Iterator[tuple[str, str, str | None]]:
    """Yield the id, status and error of each stored task among `ids`."""
    for part in chunks(ids):
        query = select(tasks.c.id, tasks.c.status, tasks.c.error).where(tasks.c.id.in_(part))
        yield from conn.execute(query)


def batch_summary(conn: Connection, batch_id: str) -> list[Any]:
    """Return (status, count, first start, last finish) per status of the batch's tasks
    (read through the batch index: the batch's own tasks only)."""
    query = (
        select(
            tasks.c.status,
            func.count(),
            func.min(tasks.c.started_at),
            func.max(tasks.c.finished_at),
        )
        .where(tasks.c.batch_id == batch_id)
        .group_by(tasks.c.status)
    )
    return list(conn.execute(query))


def batch_roots(conn: Connection, batch_id: str) -> list[tuple[str, str]]:
    """Return (id, trigger rule) of the batch's tasks that failed or a user cancelled, in
    creation order: the tasks a retry of the whole batch starts from."""
    query = (
        select(tasks.c.id, tasks.c.trigger_rule)
        .where(
            tasks.c.batch_id == batch_id,
            or_(
                tasks.c.status == "FAILED",
                and_(tasks.c.status == "CANCELLED", tasks.c.error_code == "cancelled"),
            ),
        )
        .order_by(tasks.c.seq)
    )
    return [(r.id, r.trigger_rule) for r in conn.execute(query)]


def instances_with_load(conn: Connection) -> list[dict[str, Any]]:
    """Return every registered scheduler instance, oldest first, with how many RUNNING
    attempts it holds (counted through the index of RUNNING rows by worker)."""
    running = (
        select(tasks.c.worker, func.count().label("n"))
        .where(RUNNING)
        .group_by(tasks.c.worker)
        .subquery()
    )
    query = (
        select(instances, func.coalesce(running.c.n, 0).label("running"))
        .outerjoin(running, running.c.worker == instances.c.id)
        .order_by(instances.c.started_at, instances.c.id)
    )
    return [dict(r._mapping) for r in conn.execute(query)]


def last_attempt(conn: Connection, task_id: str) -> Any:
    """Return a task's status and its last attempt as its row tells it (number, instance,
    the instance's host key, start), or None when the id is unknown."""
    query = (
        select(
            tasks.c.status,
            tasks.c.attempts.label("attempt"),
            tasks.c.worker.label("instance"),
            instances.c.hostname.label("host"),
            tasks.c.started_at,
        )
        .select_from(tasks.outerjoin(instances, instances.c.id == tasks.c.worker))
        .where(tasks.c.id == task_id)
    )
    return conn.execute(query).first()

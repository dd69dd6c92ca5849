"""Queues as clients see them: the list with counts, limits set, pause and resume.

A task names its queue (`default` when it names none); a submission naming a new queue
adds it, up to MAX_QUEUES. A queue's settings live in its row, so every instance's next
claim honours a change: a paused queue starts nothing (its running tasks go on), a
concurrency limit caps its RUNNING tasks across every instance together, and a rate limit
caps its starts per second (a token bucket holding one second's worth, at least one).
On PostgreSQL a change waits for the claims under way to commit, so that once it is
answered no claim that read the settings before it can still start a task.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.config import QUEUE_NAME
from app.errors import InvalidParameter, InvalidState, NotFound, TooManyQueues
from app.limits import MAX_QUEUES
from app.schemas import ID_MESSAGE, MAX_QUEUE_NAME_LENGTH
from app.statuses import Status
from app.storage import counts, database
from app.storage import queues as rows
from app.storage import schedules as schedule_rows
from app.storage.notify import announce
from app.storage.queues import DEFAULT_QUEUE

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

log = logging.getLogger("app.queues")

# New queues are added one transaction at a time on PostgreSQL, so that two submissions
# cannot both count the same last free place under MAX_QUEUES.
NAMES_LOCK_KEY = zlib.crc32(b"task-scheduler:queue-names")


@dataclass(frozen=True)
class Changed:
    """A queue as a change left it, and what changed ("paused", "resumed", "limits")."""

    queue: dict[str, Any]
    change: str | None


def admit(conn: Connection, names: Iterable[str], now: datetime) -> None:
    """Add a row for each new queue among `names`, within MAX_QUEUES, or raise."""
    wanted = sorted(set(names) - {DEFAULT_QUEUE})
    if wanted:
        rows.share_names(conn)  # first: a deletion under way commits before rows are looked for
        _within_limit(conn, rows.register(conn, wanted, now))


def _within_limit(conn: Connection, added: list[str]) -> None:
    """Raise too_many_queues if the queues just `added` took the count past MAX_QUEUES."""
    added = [name for name in added if name != DEFAULT_QUEUE]
    if not added:
        return
    if conn.dialect.name == "postgresql":
        database.advisory_lock(conn, NAMES_LOCK_KEY)
    total = rows.count(conn)
    if total > MAX_QUEUES:
        raise TooManyQueues(
            f"At most {MAX_QUEUES} queues; this would add {len(added)}, to {total}.",
            {"limit": MAX_QUEUES, "new_queues": added},
        )


def check_name(name: str) -> str:
    """Return `name` if it may name a queue; raise invalid_parameter otherwise."""
    if not QUEUE_NAME.match(name):
        raise InvalidParameter(
            f"{name[:70]!r} is not a queue name.",
            {"name": ID_MESSAGE.format(max=MAX_QUEUE_NAME_LENGTH)},
        )
    return name


def listing(engine: Engine) -> list[dict[str, Any]]:
    """Return every queue, by name, with its settings and its tasks by status."""
    with database.read(engine) as conn:
        stored = {r.name: r for r in rows.rows(conn)}
        by_queue = counts.by_queue(conn)
    names = sorted({DEFAULT_QUEUE, *stored, *by_queue})
    return [_shape(name, stored.get(name), by_queue.get(name)) for name in names]


def get(engine: Engine, name: str) -> dict[str, Any]:
    """Return one queue, or raise not_found for a name no task or setting uses."""
    check_name(name)
    with database.read(engine) as conn:
        found = rows.rows(conn, [name])
        by_queue = counts.by_queue(conn)
    if not found and name != DEFAULT_QUEUE and name not in by_queue:
        raise NotFound(f"No queue named {name!r}.", {"name": name})
    return _shape(name, found[0] if found else None, by_queue.get(name))


def set_limits(engine: Engine, name: str, settings: dict[str, Any]) -> Changed:
    """Set a queue's limits (adding the queue if new); answer as it now stands."""
    return _change(engine, name, "limits", settings)


def pause(engine: Engine, name: str) -> Changed:
    """Stop the queue starting tasks (adding it if new); its running tasks go on."""
    return _change(engine, name, "paused", {"paused": True})


def resume(engine: Engine, name: str) -> Changed:
    """Let the queue start tasks again."""
    return _change(engine, name, "resumed", {"paused": False})


def _change(engine: Engine, name: str, change: str, values: dict[str, Any]) -> Changed:
    check_name(name)

    def work(conn: Connection) -> tuple[rows.QueueRow, bool]:
        # First, so that the claims under way commit before this change is answered.
        rows.hold(conn)
        now = database.now(conn)
        found: list[rows.QueueRow] = []
        while not found:
            _within_limit(conn, rows.register(conn, [name], now))
            # Empty if a deletion committed since the row was found: add it again, as a
            # change that came after the deletion would.
            found = rows.rows(conn, [name], lock=True)
        (before,) = found
        changed = any(getattr(before, column) != value for column, value in values.items())
        if changed:
            written = dict(values)
            if values.get("rate_limit_per_s", before.rate_limit_per_s) != before.rate_limit_per_s:
                # A new rate starts from a full bucket.
                written.update(tokens=None, tokens_at=None)
            rows.update(conn, name, now, **written)
            # Resumed, or given more room: instances waiting for work look again.
            announce(conn)
        (after,) = rows.rows(conn, [name])
        return after, changed

    after, changed = database.transaction(engine, work)
    if changed:
        log.info("queue %s %s: %s", name, change, _describe(after))
    with database.read(engine) as conn:
        tasks = counts.by_queue(conn).get(name)
    return Changed(_shape(name, after, tasks), change if changed else None)


def delete(engine: Engine, name: str) -> None:
    """Delete a queue that holds no task (of any status) and that no schedule names:
    its row and settings go. A task naming it later adds it again, open and unlimited."""
    check_name(name)
    if name == DEFAULT_QUEUE:
        raise InvalidState(
            "The default queue cannot be deleted: it holds every task that names no queue.",
            {"name": name},
        )

    def work(conn: Connection) -> None:
        # Alone: the submissions naming queues under way commit first (so their tasks are
        # counted); those after wait for this one. Pauses, limits and claims do not wait.
        rows.hold_names(conn)
        found = rows.rows(conn, [name])
        held = {s: n for s, n in counts.by_queue(conn).get(name, {}).items() if n}
        if held:
            total = sum(held.values())
            raise InvalidState(
                f"Queue {name!r} holds {total:,} task{'s' if total != 1 else ''}: only an "
                "empty queue can be deleted. Cancel or wait for its unfinished tasks, then "
                "delete or prune the finished ones (flask tasks prune).",
                {"tasks": held},
            )
        naming = [i for i, kind, body in schedule_rows.bodies(conn) if name in _queues(kind, body)]
        if naming:
            raise InvalidState(
                f"Queue {name!r} is named by {len(naming)} schedule"
                f"{'s' if len(naming) != 1 else ''}, whose next firing would add it again: "
                "change or delete them first.",
                {"schedules": naming[:20]},
            )
        if not found:
            raise NotFound(f"No queue named {name!r}.", {"name": name})
        rows.remove(conn, name)
        counts.forget_queue(conn, name)

    database.transaction(engine, work)
    log.info("queue %s deleted", name)


def _queues(kind: str, body: Any) -> set[str]:
    """The queues a schedule's tasks name (its body: one task, or a batch)."""
    items = [body] if kind == "task" else (body.get("tasks") or [])
    return {t.get("queue") or DEFAULT_QUEUE for t in items if isinstance(t, dict)}


def _unstored(name: str) -> rows.QueueRow:
    return rows.QueueRow(name, False, None, None, None, None, None, None)


def _describe(row: rows.QueueRow) -> str:
    limit = (
        "no concurrency limit"
        if row.concurrency_limit is None
        else (f"at most {row.concurrency_limit} running")
    )
    rate = (
        "no rate limit"
        if row.rate_limit_per_s is None
        else (f"at most {row.rate_limit_per_s:g} starts/s")
    )
    return f"{'paused' if row.paused else 'active'}, {limit}, {rate}"


def _shape(name: str, row: rows.QueueRow | None, tasks: dict[str, int] | None) -> dict[str, Any]:
    row = row or _unstored(name)
    by_status = tasks or {s.value: 0 for s in Status}
    return {
        "name": name,
        "state": "paused" if row.paused else "active",
        "paused": row.paused,
        "concurrency_limit": row.concurrency_limit,
        "rate_limit_per_s": row.rate_limit_per_s,
        "running": by_status.get(Status.RUNNING.value, 0),
        "counts": by_status,
        "updated_at": row.updated_at,
    }

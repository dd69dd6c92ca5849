"""Reads: one task, its status, its attempts, pages of tasks. Each one short read
transaction."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.errors import InvalidParameter, NotFound
from app.limits import DEFAULT_PAGE_SIZE
from app.schemas import ID_MESSAGE, ID_PATTERN, MAX_ID_LENGTH, MAX_TYPE_LENGTH
from app.statuses import Status
from app.storage import attempts, database, tasks
from app.storage.membership import host_name
from app.storage.reads import last_attempt, newest_first, status_of

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# The largest seq a database column holds; a cursor naming more was not issued here.
MAX_SEQ = 2**63 - 1
_ID = re.compile(ID_PATTERN)
# Batch ids are 32 hex digits; the column holds 64.
MAX_BATCH_ID_LENGTH = 64
# The longest cursor encode_cursor writes ("v1:" and 19 digits) is 30 characters.
MAX_CURSOR_LENGTH = 32


def is_identifier(value: str, max_length: int = MAX_ID_LENGTH) -> bool:
    """Tell whether `value` follows the id rules: only such values are ever stored."""
    return len(value) <= max_length and _ID.match(value) is not None


def unknown_task(task_id: str) -> NotFound:
    """Return the not_found error for `task_id`, saying why when it cannot be an id."""
    if is_identifier(task_id):
        return NotFound(f"No task has the id {task_id!r}.", {"id": task_id})
    # Cut short, so that the rule still fits in the message of a small error body.
    shown = repr(task_id)
    if len(task_id) > 64:
        shown = f"{task_id[:40]!r}... ({len(task_id):,} characters)"
    rule = ID_MESSAGE.format(max=MAX_ID_LENGTH)
    return NotFound(f"No task has the id {shown}; task ids {rule[0].lower()}{rule[1:]}")


def check_task_id(task_id: str) -> None:
    """Raise not_found for an id no task can have, before a query sees it.

    A URL can carry what a body cannot (NUL, which PostgreSQL refuses in text, or
    thousands of characters); no stored task has such an id, so none is looked up.
    """
    if not is_identifier(task_id):
        raise unknown_task(task_id)


def shape(row: Any, dependencies: list[str]) -> dict[str, Any]:
    """Return a task row as a dict with its dependencies, ready for the output schema."""
    task = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    task["dependencies"] = dependencies
    return task


def shape_rows(rows: Sequence[Any], edges: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Return rows of one query as `shape` does, their column names read once."""
    if not rows:
        return []
    names = list(rows[0]._fields)
    shaped = []
    for r in rows:
        task = dict(zip(names, r, strict=True))
        task["dependencies"] = edges.get(task["id"], [])
        shaped.append(task)
    return shaped


def load_task(conn: Connection, task_id: str, *, with_payload: bool) -> dict[str, Any] | None:
    """Return one task, or None when the id is unknown."""
    row = tasks.row(conn, task_id, with_payload=with_payload)
    if row is None:
        return None
    return shape(row, tasks.dependencies_of(conn, [task_id]).get(task_id, []))


def get_task(engine: Engine, task_id: str) -> dict[str, Any]:
    """Return one task with its payload and result."""
    check_task_id(task_id)
    with database.read(engine) as conn:
        task = load_task(conn, task_id, with_payload=True)
    if task is None:
        raise unknown_task(task_id)
    return task


def get_tasks(engine: Engine, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Return the stored tasks among `ids`, whole, in the order of `ids`, from one read."""
    with database.read(engine) as conn:
        rows = tasks.rows_by_id(conn, ids)
        edges = tasks.dependencies_of(conn, list(rows))
    return [shape(rows[i], edges.get(i, [])) for i in dict.fromkeys(ids) if i in rows]


def get_status(engine: Engine, task_id: str) -> dict[str, Any]:
    """Return a task's id and status."""
    check_task_id(task_id)
    with database.read(engine) as conn:
        status = status_of(conn, task_id)
    if status is None:
        raise unknown_task(task_id)
    return {"id": task_id, "status": status}


@dataclass(frozen=True)
class Page:
    """One page of tasks, newest first, and the cursor of the next page if any."""

    tasks: list[dict[str, Any]]
    next_cursor: str | None


def list_tasks(
    engine: Engine,
    *,
    statuses: Sequence[str] = (),
    task_type: str | None = None,
    batch_id: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> Page:
    """Return tasks newest first, filtered (in any of `statuses`, if given), one page at
    a time."""
    _check_filter("type", task_type, MAX_TYPE_LENGTH)
    _check_filter("batch_id", batch_id, MAX_BATCH_ID_LENGTH)
    before = None if cursor is None else decode_cursor(cursor)
    with database.read(engine) as conn:
        # One row more than the page tells whether there is a next one.
        rows = newest_first(
            conn,
            statuses=statuses,
            task_type=task_type,
            batch_id=batch_id,
            before=before,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        edges = tasks.dependencies_of(conn, [r.id for r in rows])
    page = shape_rows(rows, edges)
    return Page(page, encode_cursor(rows[-1].seq) if more else None)


def _check_filter(name: str, value: str | None, max_length: int) -> None:
    """Refuse a filter no stored value can equal (and PostgreSQL could not even compare)."""
    if value is not None and not is_identifier(value, max_length):
        raise InvalidParameter(
            f"{name} must be 1 to {max_length} characters from A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit.",
            {name: "Not a possible value."},
        )


def encode_cursor(seq: int) -> str:
    """Return an opaque cursor that resumes after the task numbered `seq`."""
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the position a cursor names, or raise `invalid_parameter`."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, number = raw.partition(":")
        seq = int(number) if number.isascii() and number.isdigit() else 0
        # Only the exact text encode_cursor writes: decoding alone forgives stray
        # characters and padding bits, so an edited cursor could name another page.
        if version != "v1" or not 1 <= seq <= MAX_SEQ or encode_cursor(seq) != cursor:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameter(
            "The cursor is malformed; use the one the previous page gave (the URL of its Link "
            "header, or the CLI's --cursor line).",
            {"cursor": "Not a cursor this server issued."},
        ) from None
    return seq


def get_attempts(engine: Engine, task_id: str) -> dict[str, Any]:
    """Return a task's attempts, oldest first: those that ended, then the running one."""
    check_task_id(task_id)
    with database.read(engine) as conn:
        last = last_attempt(conn, task_id)
        if last is None:
            raise unknown_task(task_id)
        ended, total = attempts.listing(conn, task_id)
    if last.status == Status.RUNNING:
        host = None if last.host is None else host_name(last.host)
        running = {"attempt": last.attempt, "instance": last.instance, "host": host}
        ended.append({**running, "started_at": last.started_at, **_UNFINISHED})
        total += 1
    return {"task_id": task_id, "attempts": ended, "total": total}


_UNFINISHED = {
    "outcome": "RUNNING",
    "finished_at": None,
    "error": None,
    "error_code": None,
    "traceback": None,
}

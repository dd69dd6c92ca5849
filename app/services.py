"""Submissions and queries: each one transaction, no HTTP."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from . import database
from .errors import DuplicateId, InvalidParameter, NotFound, UnknownDependency, ValidationFailed
from .models import FAILED_LIKE, TERMINAL, Status
from .store import chunks, deps, tasks

# Fields whose stored value must equal the resubmitted one for a replay to be identical.
COMPARED = ("type", "duration_ms", "dependencies", "payload")
LIST_COLUMNS = [c for c in tasks.c if c.name not in ("payload", "result")]
# The largest seq a database column holds; a cursor naming more was not issued here.
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True)
class Submitted:
    """A submission's answer: the task and whether this request created it."""

    task: dict[str, Any]
    created: bool


def submit(engine: Engine, data: dict[str, Any]) -> Submitted:
    """Store one validated task, or return the existing one for an identical replay."""
    wanted = _normalise(data)
    for attempt in range(2):
        try:
            with database.write(engine) as conn:
                existing = _load(conn, wanted["id"], with_payload=True)
                if existing is not None:
                    _check_replay(existing, wanted)
                    return Submitted(existing, created=False)
                return Submitted(_insert(conn, wanted), created=True)
        except IntegrityError:
            # Another instance inserted the same id between our read and our write.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    task_id = data.get("id") or uuid.uuid4().hex
    dependencies = list(dict.fromkeys(data.get("dependencies") or []))
    if task_id in dependencies:
        raise ValidationFailed(
            "A task cannot depend on itself.",
            {"dependencies": f"Contains the task's own id {task_id!r}."},
        )
    return {
        "id": task_id,
        "type": data["type"],
        "duration_ms": data["duration_ms"],
        "dependencies": dependencies,
        "payload": data.get("payload") or {},
    }


def _check_replay(existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    differ = []
    for name in COMPARED:
        ours, theirs = existing[name], wanted[name]
        if name == "dependencies":
            ours, theirs = set(ours), set(theirs)
        elif name == "payload":
            # Python holds 1 == 1.0 == True; as JSON they are three different bodies.
            ours, theirs = json.dumps(ours, sort_keys=True), json.dumps(theirs, sort_keys=True)
        if ours != theirs:
            differ.append(name)
    if differ:
        raise DuplicateId(
            f"A task with id {wanted['id']!r} already exists with a different "
            + ", ".join(differ)
            + ".",
            {"id": wanted["id"], "fields": differ},
        )


def _insert(conn: Connection, wanted: dict[str, Any]) -> dict[str, Any]:
    dependencies: list[str] = wanted["dependencies"]
    found: dict[str, str] = {}
    for part in chunks(dependencies):
        # FOR SHARE on PostgreSQL: a dependency cannot finish unseen while we commit.
        query = select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(part))
        found.update((i, s) for i, s in conn.execute(query.with_for_update(read=True)))
    missing = [d for d in dependencies if d not in found]
    if missing:
        raise UnknownDependency(
            f"{len(missing)} dependenc{'y does' if len(missing) == 1 else 'ies do'} not exist.",
            {"missing": missing},
        )
    now = database.utcnow()
    row: dict[str, Any] = {
        "id": wanted["id"],
        "type": wanted["type"],
        "duration_ms": wanted["duration_ms"],
        "payload": wanted["payload"],
        "status": Status.QUEUED.value,
        "pending_deps": sum(1 for s in found.values() if s not in TERMINAL),
        "created_at": now,
        "updated_at": now,
    }
    row.update(_born_terminal(dependencies, found, now))
    conn.execute(insert(tasks).values(**row))
    if dependencies:
        edges = [
            {"task_id": wanted["id"], "dependency_id": d, "position": i}
            for i, d in enumerate(dependencies)
        ]
        conn.execute(insert(deps), edges)
    return _shape({**_defaults(), **row}, dependencies)


def _born_terminal(dependencies: Sequence[str], found: dict[str, str], now: Any) -> dict[str, Any]:
    """Return the fields of a task whose dependency already failed or was cancelled."""
    failed = [d for d in dependencies if found[d] in FAILED_LIKE]
    cancelled = [d for d in dependencies if found[d] == Status.CANCELLED.value]
    if failed:
        status, code, culprit, verb = Status.UPSTREAM_FAILED, "upstream_failed", failed[0], "failed"
    elif cancelled:
        status, code, culprit, verb = (
            Status.CANCELLED,
            "upstream_cancelled",
            cancelled[0],
            "was cancelled",
        )
    else:
        return {}
    return {
        "status": status.value,
        "error": f"Dependency {culprit} {verb}, so this task will not run.",
        "error_code": code,
        "finished_at": now,
    }


def _defaults() -> dict[str, Any]:
    return {
        "result": None,
        "error": None,
        "error_code": None,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "worker": None,
    }


def _shape(row: Any, dependencies: list[str]) -> dict[str, Any]:
    task = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    task["dependencies"] = dependencies
    return task


def _load(conn: Connection, task_id: str, *, with_payload: bool) -> dict[str, Any] | None:
    columns = list(tasks.c) if with_payload else LIST_COLUMNS
    row = conn.execute(select(*columns).where(tasks.c.id == task_id)).first()
    if row is None:
        return None
    return _shape(row, _dependencies_of(conn, [task_id]).get(task_id, []))


def _dependencies_of(conn: Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for part in chunks(ids):
        query = (
            select(deps.c.task_id, deps.c.dependency_id)
            .where(deps.c.task_id.in_(part))
            .order_by(deps.c.task_id, deps.c.position)
        )
        for task_id, dependency_id in conn.execute(query):
            result.setdefault(task_id, []).append(dependency_id)
    return result


def get_task(engine: Engine, task_id: str) -> dict[str, Any]:
    """Return one task with its payload and result."""
    with database.read(engine) as conn:
        task = _load(conn, task_id, with_payload=True)
    if task is None:
        raise NotFound(f"No task has the id {task_id!r}.", {"id": task_id})
    return task


def get_status(engine: Engine, task_id: str) -> dict[str, Any]:
    """Return a task's id and status."""
    with database.read(engine) as conn:
        status = conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar()
    if status is None:
        raise NotFound(f"No task has the id {task_id!r}.", {"id": task_id})
    return {"id": task_id, "status": status}


@dataclass(frozen=True)
class Page:
    """One page of tasks, newest first, and the cursor of the next page if any."""

    tasks: list[dict[str, Any]]
    next_cursor: str | None


def list_tasks(
    engine: Engine,
    *,
    status: str | None = None,
    task_type: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """Return tasks newest first, filtered, one page at a time."""
    query = select(*LIST_COLUMNS).order_by(tasks.c.seq.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(tasks.c.status == status)
    if task_type is not None:
        query = query.where(tasks.c.type == task_type)
    if cursor is not None:
        query = query.where(tasks.c.seq < decode_cursor(cursor))
    with database.read(engine) as conn:
        rows = conn.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        edges = _dependencies_of(conn, [r.id for r in rows])
    page = [_shape(r, edges.get(r.id, [])) for r in rows]
    return Page(page, encode_cursor(rows[-1].seq) if more else None)


def encode_cursor(seq: int) -> str:
    """Return an opaque cursor that resumes after the task numbered `seq`."""
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the position a cursor names, or raise `invalid_parameter`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, number = raw.partition(":")
        seq = int(number)
        if version != "v1" or not 1 <= seq <= MAX_SEQ or not number.isdigit():
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameter(
            "The cursor is malformed; use the URL of the previous page's Link header.",
            {"cursor": "Not a cursor this server issued."},
        ) from None
    return seq

"""Submissions: validated tasks in, committed rows out, each in one transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from app import events
from app.errors import (
    ApiError,
    DuplicateId,
    QueueFull,
    TooManyQueues,
    UnknownDependency,
    ValidationFailed,
)
from app.services import queues
from app.services.admission import Admission
from app.services.reads import load_task
from app.statuses import FAILED_LIKE, UNFINISHED, Status
from app.storage import database, groups, readiness, tasks
from app.storage.notify import announce
from app.storage.queues import DEFAULT_QUEUE

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# What a client may set, with the value a task gets when the client leaves it out.
DEFAULTS: dict[str, Any] = {
    "payload": {},
    "priority": 0,
    "max_attempts": 1,
    "retry_backoff_ms": 1000,
    "timeout_ms": None,
    "run_at": None,
    "trigger_rule": "all_success",
    "queue": DEFAULT_QUEUE,
}
# Fields whose stored value must equal the resubmitted one for a replay to be identical.
COMPARED = ("type", "duration_ms", "dependencies", *DEFAULTS)
OUTPUT_DEFAULTS: dict[str, Any] = {
    "result": None,
    "error": None,
    "error_code": None,
    "progress": None,
    "attempts": 0,
    "started_at": None,
    "finished_at": None,
    "worker": None,
    "batch_id": None,
}


@dataclass(frozen=True)
class Submitted:
    """A submission's answer: the task and whether this request created it."""

    task: dict[str, Any]
    created: bool


# What direct callers get: every type, no queue limit. The API and the CLI pass the app's.
OPEN = Admission()


def submit(engine: Engine, data: dict[str, Any], admission: Admission = OPEN) -> Submitted:
    """Store one validated task, or return the existing one for an identical replay."""
    wanted = normalise(data)
    admission.check_types([wanted["type"]])

    def replayed(conn: Connection) -> Submitted | None:
        existing = load_task(conn, wanted["id"], with_payload=True)
        if existing is None:
            return None
        submitted = tasks.dependencies_of(conn, [wanted["id"]], submitted=True)
        check_replay(existing, wanted, submitted.get(wanted["id"], []))
        return Submitted(existing, created=False)

    def work(conn: Connection, looked: bool = True) -> Submitted:
        # `looked`: whether to look for a stored task first; when not, it is looked for
        # only before refusing, so that a replay answers as one whatever else changed.
        found = replayed(conn) if looked else None
        if found is not None:
            return found
        statuses = readiness.statuses(conn, wanted["dependencies"])
        missing = [d for d in wanted["dependencies"] if d not in statuses]
        try:
            if missing:
                raise unknown_dependencies(missing)
            row = new_row(wanted, statuses, database.now(conn))
            admission.make_room(conn, [row["status"]])
        except (UnknownDependency, QueueFull):
            found = None if looked else replayed(conn)
            if found is None:
                raise
            return found
        insert_tasks(conn, [row])
        return Submitted(answer(row), True)

    # A new id is the usual case: the write lock is not held for a read that finds
    # nothing. A stored id fails the insert on the unique key, and `work` answers.
    first = partial(work, looked=False)
    try:
        if engine.dialect.name == "sqlite":
            # Concurrent submissions share the write lock's turn and one commit.
            return groups.of(engine, (ApiError,)).run(work, first)
        return tasks.inserting(engine, work, first=first)
    except TooManyQueues:
        # Refused as its new queue was admitted, maybe before the stored task was looked
        # for (the refusal rolled the queue back): a replay answers as one.
        return tasks.inserting(engine, work)


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """Return a loaded task with its id, defaults, and de-duplicated dependencies."""
    task_id = data.get("id") or uuid.uuid4().hex
    dependencies = list(dict.fromkeys(data.get("dependencies") or []))
    if task_id in dependencies:
        raise ValidationFailed(
            "A task cannot depend on itself.",
            {"dependencies": f"Contains the task's own id {task_id!r}."},
        )
    wanted = {
        "id": task_id,
        "type": data["type"],
        "duration_ms": data["duration_ms"],
        "dependencies": dependencies,
        **DEFAULTS,
    }
    for name in DEFAULTS.keys() & data.keys():  # usually none: a batch's plain tasks
        value = data[name]
        if value is not None:
            wanted[name] = value
    if isinstance(wanted["run_at"], datetime):
        wanted["run_at"] = database.naive_utc(wanted["run_at"])
    return wanted


def check_replay(
    existing: dict[str, Any], wanted: dict[str, Any], submitted: Sequence[str]
) -> None:
    """Accept a resubmission identical to the stored task; raise duplicate_id otherwise.

    `submitted` are the dependencies the stored task was submitted with: those it adopted
    since (tasks a dependency added as it completed) are not the submitter's to repeat.
    """
    stored = {**existing, "dependencies": submitted}
    differ = [name for name in COMPARED if not _same(name, stored[name], wanted[name])]
    if differ:
        raise DuplicateId(
            f"A task with id {wanted['id']!r} already exists with a different body; it"
            f" differs in {', '.join(differ)}.",
            {"id": wanted["id"], "fields": differ},
        )


def _same(name: str, ours: Any, theirs: Any) -> bool:
    if name == "dependencies":
        return set(ours) == set(theirs)
    if name == "payload":
        # Python holds 1 == 1.0 == True; as JSON they are three different bodies.
        return json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    if name == "run_at" and ours is not None and theirs is not None:
        # Stored times keep microseconds on every backend we support.
        return bool(ours == theirs)
    return bool(ours == theirs) and type(ours) is type(theirs)


def unknown_dependencies(missing: Sequence[str]) -> UnknownDependency:
    """Return the error naming dependencies that do not exist."""
    noun = "dependency does" if len(missing) == 1 else "dependencies do"
    return UnknownDependency(f"{len(missing)} {noun} not exist.", {"missing": list(missing)})


# What a new row holds besides the task's own fields and times, until its dependencies
# say otherwise.
_BORN: dict[str, Any] = {
    "status": Status.QUEUED.value,
    "pending_deps": 0,
    "error": None,
    "error_code": None,
    "finished_at": None,
}
_UNFINISHED = frozenset(UNFINISHED)
_FAILED_LIKE = frozenset(FAILED_LIKE)
_CANCELLED = Status.CANCELLED.value


def new_row(
    wanted: dict[str, Any], statuses: dict[str, str], now: datetime, **extra: Any
) -> dict[str, Any]:
    """Return the row of a new task (with `extra` columns), given the statuses of its
    dependencies."""
    # Its dependencies too, as the insert and the answer take them. Made in one step: a
    # batch makes a row per task, in the write transaction on PostgreSQL.
    row = {**wanted, **_BORN, "not_before": wanted["run_at"], "created_at": now, "updated_at": now}
    if extra:
        row.update(extra)
    dependencies = wanted["dependencies"]
    if not dependencies:
        return row
    row["pending_deps"] = sum(statuses[d] in _UNFINISHED for d in dependencies)
    blocked = _blocked(wanted, statuses)
    if blocked is not None:
        status, code, culprit, verb = blocked
        row.update(
            status=status.value,
            error=f"Dependency {culprit} {verb}, so this task will not run.",
            error_code=code,
            finished_at=now,
        )
    return row


def born_status(wanted: dict[str, Any], statuses: dict[str, str]) -> str:
    """Return the status a new task is born with, given the statuses of its dependencies."""
    blocked = _blocked(wanted, statuses)
    return Status.QUEUED.value if blocked is None else blocked[0].value


def _blocked(
    wanted: dict[str, Any], statuses: dict[str, str]
) -> tuple[Status, str, str, str] | None:
    """Return why a new task is born terminal (its status, error code, the dependency and
    what it did), or None: an all_success task whose dependency failed or was cancelled."""
    dependencies = wanted["dependencies"]
    if not dependencies or wanted["trigger_rule"] != "all_success":
        return None
    cancelled = None  # the first one cancelled: a failed one, even after it, is named
    for dependency in dependencies:
        status = statuses[dependency]
        if status in _FAILED_LIKE:
            return Status.UPSTREAM_FAILED, "upstream_failed", dependency, "failed"
        if status == _CANCELLED and cancelled is None:
            cancelled = dependency
    if cancelled is not None:
        return Status.CANCELLED, "upstream_cancelled", cancelled, "was cancelled"
    return None


@dataclass
class NewRows:
    """A submission's new rows, each made as it is iterated, in submission order.

    Every status is known up front (the statuses of the tasks depended on and the one each
    new task is born with), so that a row can be made as the insert takes it. With
    `answers`, each row is also shaped as the API shows it, once the insert has it.
    """

    wanted: Sequence[dict[str, Any]]
    statuses: dict[str, str]
    now: datetime
    batch_id: str | None
    answers: list[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        statuses, now, batch_id, answers = self.statuses, self.now, self.batch_id, self.answers
        for task in self.wanted:
            row = new_row(task, statuses, now, batch_id=batch_id)
            yield row
            if answers is not None:
                answers.append(answer(row))

    def born(self) -> list[str]:
        """Return the statuses the new tasks are born with."""
        return [self.statuses[task["id"]] for task in self.wanted]


def answer(row: dict[str, Any]) -> dict[str, Any]:
    """Return a new task's row as the API shows it (`reads.shape`'s form: the row with
    its dependencies)."""
    return {**OUTPUT_DEFAULTS, **row}


def insert_tasks(
    conn: Connection, rows: Sequence[dict[str, Any]] | NewRows
) -> list[dict[str, Any]]:
    """Admit the rows' queues, insert the rows (each with its `dependencies` list) and
    their edges, and announce them; return the rows inserted.

    `NewRows` are made as they are taken: on PostgreSQL the COPY takes each as it is made,
    so that making the next overlaps the server storing the last.
    """
    if isinstance(rows, NewRows):
        queues.admit(conn, {task["queue"] for task in rows.wanted}, rows.now)
    elif rows:
        queues.admit(conn, {r["queue"] for r in rows}, rows[0]["created_at"])
    inserted = tasks.insert_rows(conn, rows)
    events.stage((r["id"], r["type"], 0, r["status"], r["error"] or "submitted") for r in inserted)
    announce(conn)
    return inserted

"""Whole graphs in one transaction: `POST /api/tasks/batch`.

A batch is all or nothing: every task is validated, the graph is checked for cycles, and
only then is the whole of it inserted in one write transaction. Dependencies may name
tasks that already exist or tasks of the same batch, in any order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError, fields, validate

from app.dag import find_cycle, topological_order
from app.errors import (
    BodyTooLarge,
    DependencyCycle,
    DuplicateId,
    QueueFull,
    TooManyQueues,
    UnknownDependency,
    UnknownTaskType,
    ValidationFailed,
)
from app.jsonbody import json_size
from app.schemas import (
    ID_PATTERN,
    MAX_PAYLOAD_BYTES,
    SERVER_SET,
    TRIGGER_RULES,
    TaskIn,
    TaskOut,
    Timestamp,
    task_details,
    validation_details,
)
from app.services.admission import Admission
from app.services.reads import shape
from app.services.submissions import (
    OPEN,
    NewRows,
    answer,
    born_status,
    check_replay,
    insert_tasks,
    normalise,
    unknown_dependencies,
)
from app.storage import counts, database, readiness, tasks

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

MAX_BATCH_TASKS = 100_000

_task_in = TaskIn()
_task_out = TaskOut()


@dataclass(frozen=True)
class BatchSubmitted:
    """A batch's answer: its id, its tasks in submission order, and whether it is new."""

    batch_id: str
    tasks: list[dict[str, Any]]
    created: bool


# The rows of a batch stored on SQLite, for its answer to be shaped after the commit.
Unshaped = list[dict[str, Any]] | None


def submit_batch(
    engine: Engine, body: dict[str, Any], admission: Admission = OPEN
) -> BatchSubmitted:
    """Validate and store a whole graph, or return the existing one for a replay."""
    wanted = parse_batch(body, partial(_type_problem, admission))
    admission.check_types(task["type"] for task in wanted)
    order = creation_order(wanted)

    def work(conn: Connection, looked: bool = True) -> tuple[BatchSubmitted, Unshaped]:
        # `looked`: whether to look for the stored batch first; when not, it is looked
        # for only before refusing, so that a replay answers as one whatever else changed.
        replayed = _replay(conn, wanted) if looked else None
        if replayed is not None:
            return replayed, None
        batch_id = uuid.uuid4().hex
        try:
            rows = planned_rows(conn, wanted, order, batch_id)
            # The whole batch fits under the queue limit, or none of it is stored.
            admission.make_room(conn, rows.born())
        except (UnknownDependency, QueueFull):
            replayed = None if looked else _replay(conn, wanted)
            if replayed is None:
                raise
            return replayed, None
        if conn.dialect.name == "sqlite":
            # Shaped once the write lock is free: the scheduler's passes wait for it.
            return BatchSubmitted(batch_id, [], created=True), insert_tasks(conn, rows)
        # No lock waits on PostgreSQL's insert: each row is shaped as the COPY sends the next.
        rows = replace(rows, answers=[])
        insert_tasks(conn, rows)
        return BatchSubmitted(batch_id, rows.answers or [], created=True), None

    # Looked for before the write transaction, where nothing waits on it. When none of
    # the ids is stored (the usual case), the insert does not look again: the unique id
    # refuses one stored since, and `work` answers. When one is, the batch is a replay or
    # refused, and `work` finds out before writing anything.
    with database.read(engine) as conn:
        stored_before = tasks.existing(conn, [task["id"] for task in wanted])
    first = None if stored_before else partial(work, looked=False)
    try:
        stored, unshaped = tasks.inserting(engine, work, first=first)
    except TooManyQueues:
        if first is None:
            raise
        # Refused as a new queue was admitted, before looking again for stored ids (the
        # refusal rolled the queue back): one stored since makes it a replay or refused.
        stored, unshaped = tasks.inserting(engine, work)
    if unshaped is None:
        return stored
    return replace(stored, tasks=[answer(row) for row in unshaped])


# The invalid tasks of a batch whose unknown fields are compared with the known ones.
GUESSED_TASKS = 20


def parse_batch(
    body: dict[str, Any], type_problem: Callable[[str], str | None] | None = None
) -> list[dict[str, Any]]:
    """Return the batch's tasks validated and normalised, or raise what is wrong.

    With `type_problem`, an answer that refuses invalid tasks also names those whose type
    it finds a problem with (no handler runs it), so that one answer shows every kind of
    mistake; a batch whose only mistake is a type is left to the caller to refuse.
    """
    unknown = sorted(set(body) - {"tasks"})
    if unknown:
        raise ValidationFailed(
            "A batch is an object with one field, tasks.",
            {name: "Unknown field." for name in unknown},
        )
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise ValidationFailed(
            "The batch has no tasks.", {"tasks": "Must be a non-empty array of tasks."}
        )
    if len(items) > MAX_BATCH_TASKS:
        raise BodyTooLarge(
            f"A batch holds at most {MAX_BATCH_TASKS:,} tasks; this one has {len(items):,}."
        )
    wanted: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    refused: set[int] = set()
    for index, item in enumerate(items):
        try:
            wanted.append(normalise(load_task(item)))
        except ValidationError as exc:
            # The first few invalid tasks say which field a misspelt one meant: enough to
            # show the mistake, and a cost that a batch of any size cannot multiply.
            guess = len(refused) < GUESSED_TASKS
            refused.add(index)
            found = task_details(exc) if guess else validation_details(exc, (), SERVER_SET)
            details.update(_keyed(index, found))
        except ValidationFailed as exc:
            refused.add(index)
            details.update(_keyed(index, exc.details or {}))
    if refused and type_problem is not None:
        problems: dict[str, str | None] = {}  # by type: a batch repeats a few types
        for index, item in enumerate(items):
            key = f"tasks.{index}.type"
            task_type = _field(item, "type")
            if key in details or not isinstance(task_type, str):
                continue
            if task_type not in problems:
                problems[task_type] = type_problem(task_type)
            problem = problems[task_type]
            if problem is not None:
                refused.add(index)
                details[key] = problem
    if refused:
        invalid = len(refused)
        raise ValidationFailed(
            f"{invalid} of {len(items)} tasks {'is' if invalid == 1 else 'are'} invalid; "
            "nothing was stored.",
            details,
        )
    _check_unique(wanted)
    return wanted


def _type_problem(admission: Admission, task_type: str) -> str | None:
    """Say why no handler runs `task_type`, if none does."""
    try:
        admission.check_types([task_type])
    except UnknownTaskType as unknown:
        return unknown.message
    return None


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else None


def _keyed(index: int, details: dict[str, Any]) -> dict[str, Any]:
    prefix = f"tasks.{index}"
    return {prefix if name == "_" else f"{prefix}.{name}": text for name, text in details.items()}


def _check_unique(wanted: Sequence[dict[str, Any]]) -> None:
    first_index: dict[str, int] = {}
    repeated: list[str] = []
    details: dict[str, str] = {}
    for index, task in enumerate(wanted):
        first = first_index.setdefault(task["id"], index)
        if first != index:
            repeated.append(task["id"])
            details[f"tasks.{index}.id"] = f"The id {task['id']!r} is also the id of tasks.{first}."
    if repeated:
        raise ValidationFailed(
            f"The id {repeated[0]!r} appears more than once in the batch.", details
        )


def creation_order(wanted: Sequence[dict[str, Any]]) -> list[str]:
    """Return the batch's ids, dependencies first, or raise `dependency_cycle`."""
    ids = [task["id"] for task in wanted]
    edges = {task["id"]: task["dependencies"] for task in wanted}
    order = topological_order(ids, edges)
    if len(order) == len(ids):
        return order
    placed = set(order)
    cycle = find_cycle([i for i in ids if i not in placed], edges)
    assert cycle is not None, "Kahn's algorithm left nodes that are on no cycle"
    shown = " -> ".join(cycle if len(cycle) <= 6 else [*cycle[:3], "...", *cycle[-2:]])
    raise DependencyCycle(
        f"The dependencies form a cycle of {len(cycle) - 1} tasks: {shown}.", {"cycle": cycle}
    )


def new_rows(
    conn: Connection, wanted: Sequence[dict[str, Any]], order: list[str], batch_id: str | None
) -> list[dict[str, Any]]:
    """Return the batch's rows in submission order, each state computed after its deps."""
    return list(planned_rows(conn, wanted, order, batch_id))


def planned_rows(
    conn: Connection, wanted: Sequence[dict[str, Any]], order: list[str], batch_id: str | None
) -> NewRows:
    """Return the batch's rows to make, or raise `unknown_dependency`."""
    members = {task["id"] for task in wanted}
    outside = list(
        dict.fromkeys(d for task in wanted for d in task["dependencies"] if d not in members)
    )
    statuses = readiness.statuses(conn, outside)
    missing = [d for d in outside if d not in statuses]
    if missing:
        raise unknown_dependencies(missing)
    by_id = {task["id"]: task for task in wanted}
    for task_id in order:
        # Later members see this one as it is born: QUEUED, or already terminal.
        statuses[task_id] = born_status(by_id[task_id], statuses)
    return NewRows(wanted, statuses, database.now(conn), batch_id)


def _replay(conn: Connection, wanted: Sequence[dict[str, Any]]) -> BatchSubmitted | None:
    """Return the stored batch when this one replays it; None when every id is new."""
    ids = [task["id"] for task in wanted]
    found = tasks.existing(conn, ids)
    if not found:
        return None
    existing = _load_existing(conn, [i for i in ids if i in found])
    submitted = tasks.dependencies_of(conn, list(existing), submitted=True)
    differ: dict[str, list[str]] = {}
    for task in wanted:
        if task["id"] in existing:
            try:
                check_replay(existing[task["id"]], task, submitted.get(task["id"], []))
            except DuplicateId as exc:
                differ[task["id"]] = (exc.details or {})["fields"]
    if differ:
        raise DuplicateId(
            (
                f"{len(differ)} tasks of the batch already exist with a different body."
                if len(differ) > 1
                else f"A task of the batch, {next(iter(differ))!r}, already exists with a "
                "different body."
            ),
            {"ids": list(differ), "fields": differ},
        )
    # A batch's tasks are stored in one transaction, stamped with one creation time. The
    # tasks their completions add later join the batch with later times: not the
    # submitter's, they are not counted.
    batch_ids = {(task["batch_id"], task["created_at"]) for task in existing.values()}
    batch_id, created_at = batch_ids.pop() if len(batch_ids) == 1 else (None, None)
    if (
        len(found) < len(ids)
        or batch_id is None
        or counts.in_batch(conn, batch_id, created_at) != len(ids)
    ):
        raise DuplicateId(
            f"{len(found)} of the batch's {len(ids)} tasks already exist, but not as one "
            "batch of exactly these tasks; resubmit only the new ones.",
            {"ids": list(existing)},
        )
    return BatchSubmitted(batch_id, [existing[i] for i in ids], created=False)


def _load_existing(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Return the stored tasks among `ids`, with dependencies, in the order of `ids`."""
    rows = tasks.rows_by_id(conn, ids)
    edges = tasks.dependencies_of(conn, ids)
    return {i: shape(rows[i], edges.get(i, [])) for i in ids}


# -- validation ----------------------------------------------------------------------
# TaskIn takes about 25 µs per task: 2.5 s of a 100,000-task batch. Plain tasks are
# checked here by hand in a tenth of that; anything unusual, or wrong, goes to TaskIn,
# so this path only ever accepts what TaskIn accepts, and errors read the same.


def load_task(item: Any) -> dict[str, Any]:
    """Return one task as `TaskIn` loads it, or raise its ValidationError."""
    if not isinstance(item, dict):
        raise ValidationError({"_": ["Must be a JSON object (a task)."]})
    if _plainly_valid(item):
        return item
    loaded: dict[str, Any] = _task_in.load(item)
    return loaded


def _plainly_valid(item: dict[str, Any]) -> bool:
    if not (item.keys() <= _CHECKS.keys() and item.keys() >= _REQUIRED):
        return False
    for name, value in item.items():
        if value is None:
            if name not in _NULLABLE:
                return False
        elif not _CHECKS[name](value):
            return False
    return True


def _limits(field: Any, kind: type[validate.Range] | type[validate.Length]) -> tuple[Any, Any]:
    """Return the bounds that TaskIn's own validator on `field` enforces."""
    bound = next(v for v in field.validators if isinstance(v, kind))
    assert getattr(bound, "min_inclusive", True) and getattr(bound, "max_inclusive", True)
    return bound.min, bound.max


_ID = re.compile(ID_PATTERN)


def _identifier(field: Any) -> Callable[[Any], bool]:
    low, high = _limits(field, validate.Length)
    # fullmatch: the pattern's `$` alone would let a trailing newline through.
    return lambda v: type(v) is str and low <= len(v) <= high and _ID.fullmatch(v) is not None


def _integer(name: str) -> Callable[[Any], bool]:
    low, high = _limits(_task_in.fields[name], validate.Range)
    return lambda v: type(v) is int and low <= v <= high


def _dependencies() -> Callable[[Any], bool]:
    field: Any = _task_in.fields["dependencies"]
    _, most = _limits(field, validate.Length)
    each = _identifier(field.inner)
    return lambda v: type(v) is list and len(v) <= most and all(map(each, v))


def _payload(value: Any) -> bool:
    # Keys of a parsed JSON object are always strings; what needs checking is the size,
    # and a lone surrogate (an escape JSON allows, with no UTF-8 form): TaskIn says which.
    if type(value) is not dict:
        return False
    try:
        return not value or json_size(value) <= MAX_PAYLOAD_BYTES
    except ValueError:
        return False


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "id": _identifier(_task_in.fields["id"]),
    "type": _identifier(_task_in.fields["type"]),
    "duration_ms": _integer("duration_ms"),
    "dependencies": _dependencies(),
    "payload": _payload,
    "priority": _integer("priority"),
    "max_attempts": _integer("max_attempts"),
    "retry_backoff_ms": _integer("retry_backoff_ms"),
    "timeout_ms": _integer("timeout_ms"),
    # A time needs parsing: TaskIn does it.
    "run_at": lambda v: False,
    "trigger_rule": lambda v: v in TRIGGER_RULES,
}
_REQUIRED = {name for name, field in _task_in.fields.items() if field.required}
_NULLABLE = {name for name, field in _task_in.fields.items() if field.allow_none}


# -- output --------------------------------------------------------------------------
# TaskOut spends 30 µs a task calling 23 fields one by one: 3 s for 100,000, and over half
# of a page of 100. Its plain fields write the value as it is, so they are copied in one
# step; a stored (naive UTC) time is written as Timestamp writes it; anything else goes
# through TaskOut's own field.


def dump_tasks(
    tasks: Sequence[dict[str, Any]], schema: TaskOut = _task_out
) -> list[dict[str, Any]]:
    """Return `tasks` exactly as `schema` (a TaskOut, maybe with fields left out) dumps
    them, faster."""
    items = list(schema.dump_fields.items())
    keys = [field.data_key or name for name, field in items]
    values_of = itemgetter(*(name for name, _ in items))
    converted = [(n, f.data_key or n, f) for n, f in items if not _passes_through(f)]
    # A batch's tasks share their creation time: each distinct time is written once.
    written: dict[datetime, str] = {}
    dumped: list[dict[str, Any]] = []
    for task in tasks:
        try:
            out = dict(zip(keys, values_of(task), strict=True))
        except KeyError:
            dumped.append(schema.dump(task, many=False))
            continue
        for name, key, field in converted:
            value = task[name]
            if value is None and field.allow_none:
                out[key] = None
            elif type(field) is Timestamp and type(value) is datetime and value.tzinfo is None:
                text = written.get(value)
                if text is None:
                    text = written[value] = value.isoformat(timespec="milliseconds") + "Z"
                out[key] = text  # as Timestamp writes
            else:
                out[key] = field.serialize(name, task)
        dumped.append(out)
    return dumped


def _passes_through(field: Any) -> bool:
    """Tell whether a TaskOut field writes a JSON value unchanged."""
    if type(field) is fields.List:
        return type(field.inner) is fields.String
    if type(field) is fields.Dict:
        return field.key_field is None and field.value_field is None
    if type(field) is fields.Integer:
        return not field.as_string
    return type(field) in (fields.String, fields.Raw)

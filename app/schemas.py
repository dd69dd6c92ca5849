"""Marshmallow schemas: what a client may send, and what the API answers."""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from app.errors import ValidationFailed
from app.jsonbody import json_size

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z"
ID_MESSAGE = "Use 1 to {max} characters from A-Z a-z 0-9 . _ : - starting with a letter or digit."
MAX_ID_LENGTH = 128
MAX_TYPE_LENGTH = 64
MAX_QUEUE_NAME_LENGTH = 64
MAX_DURATION_MS = 86_400_000
MAX_DEPENDENCIES = 1000
MAX_PAYLOAD_BYTES = 64 * 1024
TRIGGER_RULES = ("all_success", "all_done")
BLOCKER_KINDS = (
    "dependency",
    "run_at",
    "backoff",
    "queue_paused",
    "no_slot",
    "no_handler",
    "queue_not_served",
    "queue_limit",
    "queue_rate",
    "shutdown",
)
# The OpenAPI document turns a field with this metadata key into a reference to the named
# enum schema (app/http/openapi.py lists them), so a client generator makes one enum of it.
ENUM = "x-enum"
TASK_ERROR_CODES = (
    "handler_error",
    "timeout",
    "interrupted",
    "cancelled",
    "upstream_failed",
    "upstream_cancelled",
    "queue_full",
    "duplicate_id",
    "unknown_task_type",
    "too_many_queues",
    "validation_error",
    "invalid_added_tasks",
)


def _identifier(max_length: int) -> list[validate.Validator]:
    message = ID_MESSAGE.format(max=max_length)
    return [
        validate.Length(min=1, max=max_length, error=message),
        validate.Regexp(ID_PATTERN, error=message),
    ]


class StrictInteger(fields.Integer):
    """A JSON integer: not a boolean, not a float, not a string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Must be a JSON integer (not a string, float or boolean).")
        return value


class UtcTime(fields.AwareDateTime):
    """An ISO 8601 time, converted to UTC; one whose UTC falls outside years 1-9999 is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Must be a time from year 1 to 9999 in UTC.") from None


class Timestamp(fields.Field):
    """ISO 8601 UTC with milliseconds and `Z`, as the original API wrote it."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        # Not strftime: its %Y drops the leading zeros of years before 1000 on glibc.
        return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class TaskIn(Schema):
    """A task as submitted to `POST /api/tasks`."""

    class Meta:
        unknown = RAISE

    id = fields.String(validate=_identifier(MAX_ID_LENGTH))
    type = fields.String(required=True, validate=_identifier(MAX_TYPE_LENGTH))
    duration_ms = StrictInteger(
        required=True,
        validate=validate.Range(
            min=1, max=MAX_DURATION_MS, error=f"Must be between 1 and {MAX_DURATION_MS}."
        ),
    )
    dependencies = fields.List(
        fields.String(validate=_identifier(MAX_ID_LENGTH)),
        allow_none=True,
        validate=validate.Length(
            max=MAX_DEPENDENCIES, error=f"At most {MAX_DEPENDENCIES} dependencies."
        ),
        error_messages={"invalid": "Must be a JSON array of task ids."},
    )
    payload = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        error_messages={"invalid": "Must be a JSON object."},
    )
    priority = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=-1000, max=1000, error="Must be between -1000 and 1000."),
    )
    max_attempts = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=1, max=100, error="Must be between 1 and 100."),
    )
    retry_backoff_ms = StrictInteger(
        allow_none=True,
        validate=validate.Range(
            min=0, max=MAX_DURATION_MS, error=f"Must be between 0 and {MAX_DURATION_MS}."
        ),
    )
    timeout_ms = StrictInteger(
        allow_none=True,
        validate=validate.Range(
            min=1, max=MAX_DURATION_MS, error=f"Must be between 1 and {MAX_DURATION_MS}."
        ),
    )
    run_at = UtcTime(
        allow_none=True,
        default_timezone=UTC,
        error_messages={"invalid": "Must be an ISO 8601 time, e.g. 2026-11-27T14:19:54Z."},
    )
    trigger_rule = fields.String(
        allow_none=True,
        validate=validate.OneOf(TRIGGER_RULES, error="Must be all_success or all_done."),
        metadata={ENUM: "TriggerRule", "description": "Null or absent: all_success."},
    )
    queue = fields.String(
        allow_none=True,
        validate=_identifier(MAX_QUEUE_NAME_LENGTH),
        metadata={
            "description": "The queue whose pause and limits govern its start. Null or "
            "absent: `default`."
        },
    )

    @validates("payload")
    def _payload_size(self, value: dict[str, Any] | None, **kwargs: Any) -> None:
        if value is None:
            return
        try:
            size = json_size(value)
        except UnicodeEncodeError:  # "\ud800" in a body: JSON may escape it, UTF-8 cannot
            raise ValidationError(
                "Must hold no lone UTF-16 surrogate (such as \\ud800): it has no UTF-8 form."
            ) from None
        except ValueError:  # only a handler's add_tasks can give them: JSON has none
            raise ValidationError("Must hold no NaN or Infinity, which JSON has not.") from None
        if size > MAX_PAYLOAD_BYTES:
            raise ValidationError(
                f"Must be at most {MAX_PAYLOAD_BYTES} bytes as compact UTF-8 JSON."
            )


class TaskOut(Schema):
    """A task as the API shows it: the original seven fields first."""

    id = fields.String()
    type = fields.String()
    duration_ms = fields.Integer()
    status = fields.String(metadata={ENUM: "Status"})
    dependencies = fields.List(fields.String())
    created_at = Timestamp()
    updated_at = Timestamp()
    payload = fields.Dict(allow_none=True)
    priority = fields.Integer()
    max_attempts = fields.Integer()
    retry_backoff_ms = fields.Integer()
    timeout_ms = fields.Integer(allow_none=True)
    run_at = Timestamp(allow_none=True)
    trigger_rule = fields.String(metadata={ENUM: "TriggerRule"})
    batch_id = fields.String(allow_none=True)
    queue = fields.String()
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    error_code = fields.String(
        allow_none=True,
        metadata={
            "description": "Why the task failed or was cancelled: "
            + ", ".join(TASK_ERROR_CODES)
            + ". An open set: new codes may come, so a client must accept one it does not know."
        },
    )
    progress = fields.Integer(allow_none=True)
    attempts = fields.Integer()
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)
    worker = fields.String(allow_none=True)


class TaskStatusOut(Schema):
    """The answer of `GET /api/tasks/<id>/status`."""

    id = fields.String()
    status = fields.String(metadata={ENUM: "Status"})


# marshmallow's message for a field the schema does not have.
UNKNOWN_FIELD = "Unknown field."


# A body with more unknown fields than this is not misspelt: no field meant is looked for.
MAX_GUESSED_FIELDS = 3


def unknown_field(name: str, known: Collection[str], server_set: Collection[str] = ()) -> str:
    """Say what is wrong with a field a body gave that is not one of `known`: one the
    server sets, or (when a known one is spelt closely) which was meant."""
    if name in server_set:
        return "Set by the server; a submission cannot give it."
    meant = _meant(name, tuple(sorted(known)))
    if meant is None:
        return UNKNOWN_FIELD
    # `timeout` is not simply renamed `timeout_ms`: its value may be in other units.
    unit = next((u for suffix, u in _UNITS.items() if meant.endswith(suffix)), None)
    said = ""
    if unit is not None and not name.lower().endswith(meant[meant.rindex("_") :]):
        said = f" ({unit})"
    return f"Unknown field; did you mean {meant!r}{said}?"


# The units fields are given in, by the suffix of their names (the first that fits).
_UNITS = {"_per_s": "per second", "_ms": "in milliseconds", "_s": "in seconds"}
# Names given for a field that spell it too differently for a guess.
_ALIASES = {
    "concurrency": "concurrency_limit",
    "max_concurrency": "concurrency_limit",
    "rate": "rate_limit_per_s",
    "rate_limit": "rate_limit_per_s",
    "rate_per_s": "rate_limit_per_s",
    "rate_limit_per_second": "rate_limit_per_s",
    "timeout": "timeout_ms",
    "duration": "duration_ms",
    "retry_backoff": "retry_backoff_ms",
    "backoff_ms": "retry_backoff_ms",
    "max_retries": "max_attempts",
    "deps": "dependencies",
    "depends_on": "dependencies",
    # As other job systems name them.
    "eta": "run_at",
    "countdown": "run_at",
    "delay": "run_at",
    "scheduled_at": "run_at",
    "retries": "max_attempts",
    "args": "payload",
    "kwargs": "payload",
    "params": "payload",
    "task_type": "type",
    "queue_name": "queue",
}


def _meant(name: str, known: tuple[str, ...]) -> str | None:
    """Return the field of `known` that `name` spells closely, if one does."""
    alias = _ALIASES.get(name.lower())
    if alias in known:
        return alias
    if not any(abs(len(k) - len(name)) <= 3 for k in known):
        return None  # no name of about its length: nothing to compare, nothing kept
    return _close(name.lower(), known)


@lru_cache(maxsize=1024)
def _close(name: str, known: tuple[str, ...]) -> str | None:
    # Only names of about the same length are compared, and kept: a long one costs nothing.
    alike = [k for k in known if abs(len(k) - len(name)) <= 3]
    close = difflib.get_close_matches(name, alike, n=1, cutoff=0.75)
    return close[0] if close else None


def validation_details(
    error: ValidationError, known: Collection[str] = (), server_set: Collection[str] = ()
) -> dict[str, Any]:
    """Flatten marshmallow's messages into one sentence per field; with the fields the
    schema has (`known`) and those the server sets, an unknown one says more."""
    messages = error.messages if isinstance(error.messages, dict) else {"_": error.messages}
    details: dict[str, Any] = {str(name): _first_message(value) for name, value in messages.items()}
    if not (known or server_set):
        return details
    unknown = [name for name, message in details.items() if message == UNKNOWN_FIELD]
    guess = bool(known) and len(unknown) <= MAX_GUESSED_FIELDS
    for name in unknown:
        if guess or name in server_set:
            details[name] = unknown_field(name, known if guess else (), server_set)
    return details


def _first_message(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        return _first_message(value[0])
    if isinstance(value, dict) and value:
        key, inner = next(iter(value.items()))
        return f"item {key}: {_first_message(inner)}"
    return "Invalid value."


class ErrorOut(Schema):
    """The one JSON error shape every failure answers with."""

    error = fields.String(required=True, metadata={"description": "One sentence on what failed."})
    code = fields.String(
        required=True, metadata={"description": "A stable, machine-readable code."}
    )
    details = fields.Dict(
        keys=fields.String(), metadata={"description": "What exactly failed, when known."}
    )


class BatchIn(Schema):
    """A whole graph as submitted to `POST /api/tasks/batch`."""

    class Meta:
        unknown = RAISE

    tasks = fields.List(
        fields.Nested(TaskIn),
        required=True,
        validate=validate.Length(min=1, max=100_000),
    )


class BatchOut(Schema):
    """The answer of `POST /api/tasks/batch`: the batch id and its tasks in the order sent."""

    batch_id = fields.String(required=True)
    tasks = fields.List(fields.Nested(TaskOut), required=True)


CATCH_UP = {
    "oneOf": [
        {"type": "string", "enum": ["skip", "last"]},
        {"type": "integer", "minimum": 1, "maximum": 100},
    ],
    "description": "After downtime: skip the missed firings (run the latest only if it is "
    "under a minute late), run only the last, or run up to this many of the latest.",
}
# What a firing appends to an id: "." and its instant, YYYYMMDDTHHMMSSZ.
FIRING_SUFFIX_LENGTH = len(".20261205T030000Z")
# A firing's batch id is `<schedule id>.<instant>`, and a batch id holds 64 characters.
MAX_SCHEDULE_ID_LENGTH = 64 - FIRING_SUFFIX_LENGTH


class ScheduledTaskIn(TaskIn):
    """The task of a schedule: a task body without id (each firing names it)."""

    class Meta:
        unknown = RAISE
        exclude = ("id",)


class _ScheduleFields(Schema):
    """What a schedule is made of, as a client sends it (validated by the service)."""

    class Meta:
        unknown = RAISE

    cron = fields.String(
        metadata={
            "description": "A cron expression of 5 fields; exactly one of cron and interval_s."
        }
    )
    interval_s = fields.Integer(
        validate=validate.Range(min=1, max=366 * 86_400),
        metadata={"description": "Seconds between firings, counted from when the timing was set."},
    )
    timezone = fields.String(
        metadata={"description": "The IANA time zone cron is read in (default UTC)."}
    )
    task = fields.Nested(
        ScheduledTaskIn,
        metadata={
            "description": "The task each firing creates, without id; exactly one of "
            "task and batch."
        },
    )
    batch = fields.Nested(
        BatchIn,
        metadata={"description": "The batch each firing creates, as for POST /api/tasks/batch."},
    )
    catch_up = fields.Raw(metadata=CATCH_UP)
    overlap = fields.String(
        validate=validate.OneOf(["skip", "allow"]),
        metadata={
            "description": "skip: no firing while a task of the previous one is "
            "unfinished (default allow)."
        },
    )
    paused = fields.Boolean(metadata={"description": "A paused schedule does not fire."})


class ScheduleIn(_ScheduleFields):
    """A schedule as created by `POST /api/schedules`."""

    id = fields.String(
        required=True,
        validate=_identifier(MAX_SCHEDULE_ID_LENGTH),
        metadata={"description": "Each firing's tasks are named after it and the instant."},
    )


class ScheduleEdit(_ScheduleFields):
    """A change to a schedule, `PATCH /api/schedules/<id>`: any of its fields but id."""


class LastFiringOut(Schema):
    """What a schedule did at the last instant it handled."""

    at = Timestamp(allow_none=True)
    outcome = fields.String(
        required=True, validate=validate.OneOf(["fired", "skipped", "missed", "failed"])
    )
    batch_id = fields.String(
        allow_none=True, metadata={"description": "The batch of the last firing's tasks."}
    )
    error = fields.String(allow_none=True)


class FiringCountsOut(Schema):
    """How many instants a schedule handled, by outcome."""

    fired = fields.Integer(required=True)
    skipped = fields.Integer(required=True)
    missed = fields.Integer(required=True)
    failed = fields.Integer(required=True)


class ScheduleOut(Schema):
    """A schedule as the API shows it."""

    id = fields.String(required=True)
    cron = fields.String(required=True, allow_none=True)
    interval_s = fields.Integer(required=True, allow_none=True)
    timezone = fields.String(required=True)
    task = fields.Dict(metadata={"description": "The task each firing creates."})
    batch = fields.Dict(metadata={"description": "The batch each firing creates."})
    catch_up = fields.Raw(required=True, metadata=CATCH_UP)
    overlap = fields.String(required=True)
    paused = fields.Boolean(required=True)
    next_firings = fields.List(
        Timestamp(), required=True, metadata={"description": "The next five (none if paused)."}
    )
    last_firing = fields.Nested(LastFiringOut, required=True, allow_none=True)
    counts = fields.Nested(FiringCountsOut, required=True)
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)


class TaskEdit(Schema):
    """A change to a QUEUED task, `PATCH /api/tasks/<id>`: any of these fields."""

    class Meta:
        unknown = RAISE

    priority = TaskIn._declared_fields["priority"]
    run_at = TaskIn._declared_fields["run_at"]
    queue = TaskIn._declared_fields["queue"]


BATCH_STATES = ("queued", "running", "completed", "failed", "cancelled")


class BatchSummaryOut(Schema):
    """A batch as `GET /api/batches/<id>` shows it."""

    batch_id = fields.String(required=True)
    state = fields.String(
        required=True,
        validate=validate.OneOf(BATCH_STATES),
        metadata={
            "description": "queued: nothing started yet; running: some unfinished; completed: "
            "all COMPLETED; failed: all finished, some FAILED or UPSTREAM_FAILED; cancelled: "
            "all finished, some CANCELLED, none failed."
        },
    )
    total = fields.Integer(required=True)
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Its tasks by status, every status included."},
    )
    first_started_at = Timestamp(
        allow_none=True, metadata={"description": "The earliest start of its tasks' last attempts."}
    )
    last_finished_at = Timestamp(
        allow_none=True, metadata={"description": "The last finish, once every task finished."}
    )
    changed = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "What a cancel (cancelled, stopping) or retry (retried) did; "
            "absent from GET."
        },
    )


class BatchViewTaskOut(Schema):
    """A task as the batch page draws it: a node of the graph."""

    id = fields.String()
    type = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


class BatchViewAttemptOut(Schema):
    """An attempt that ended, as the batch page's timeline draws it."""

    task_id = fields.String()
    attempt = fields.Integer()
    instance = fields.String(allow_none=True)
    outcome = fields.String()
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


class StrictNumber(fields.Float):
    """A finite JSON number: not a boolean, not a string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Must be a JSON number (not a string or boolean).")
        if not math.isfinite(value):
            raise ValidationError("Must be a finite number.")
        return float(value)


MAX_CONCURRENCY_LIMIT = 100_000
MIN_RATE_PER_S = 0.001
MAX_RATE_PER_S = 100_000


class QueueLimitsIn(Schema):
    """A queue's limits, `PUT /api/queues/<name>`: each null or absent means none."""

    class Meta:
        unknown = RAISE

    concurrency_limit = StrictInteger(
        allow_none=True,
        validate=validate.Range(
            min=1,
            max=MAX_CONCURRENCY_LIMIT,
            error=f"Must be null or from 1 to {MAX_CONCURRENCY_LIMIT} (pause the queue to "
            "start nothing).",
        ),
        metadata={"description": "Its RUNNING tasks at most, across every instance."},
    )
    rate_limit_per_s = StrictNumber(
        allow_none=True,
        validate=validate.Range(
            min=MIN_RATE_PER_S,
            max=MAX_RATE_PER_S,
            error=f"Must be null or from {MIN_RATE_PER_S} to {MAX_RATE_PER_S}.",
        ),
        metadata={
            "description": "Its starts per second at most, across every instance; up to one "
            "second's worth (at least one) may start at once."
        },
    )


class QueueOut(Schema):
    """A queue as the API shows it."""

    name = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(["active", "paused"]))
    paused = fields.Boolean(required=True)
    concurrency_limit = fields.Integer(required=True, allow_none=True)
    rate_limit_per_s = fields.Float(required=True, allow_none=True)
    running = fields.Integer(required=True, metadata={"description": "Its RUNNING tasks."})
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Its tasks by status, every status included."},
    )
    updated_at = Timestamp(
        allow_none=True, metadata={"description": "When its settings last changed."}
    )


ATTEMPT_OUTCOMES = ("RUNNING", "COMPLETED", "FAILED", "CANCELLED", "QUEUED")


class AttemptOut(Schema):
    """One attempt of a task, as its history shows it."""

    attempt = fields.Integer(required=True, metadata={"description": "1 for the first."})
    outcome = fields.String(
        required=True,
        metadata={
            ENUM: "AttemptOutcome",
            "description": "How it ended: COMPLETED, FAILED (retried or not) or CANCELLED; "
            "QUEUED when it was put back in the queue without spending a try (its instance "
            "stopped); RUNNING for the attempt running now.",
        },
    )
    instance = fields.String(
        required=True, allow_none=True, metadata={"description": "The scheduler instance."}
    )
    host = fields.String(
        required=True, allow_none=True, metadata={"description": "The host it ran on."}
    )
    started_at = Timestamp(required=True, allow_none=True)
    finished_at = Timestamp(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)
    error_code = fields.String(required=True, allow_none=True)
    traceback = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The handler's traceback when it raised (8,000 characters)."},
    )


class AttemptsOut(Schema):
    """The answer of `GET /api/tasks/<id>/attempts`."""

    task_id = fields.String(required=True)
    attempts = fields.List(
        fields.Nested(AttemptOut),
        required=True,
        metadata={"description": "Oldest first; the latest 100 when there are more."},
    )
    total = fields.Integer(
        required=True, metadata={"description": "Attempts in all, the running one included."}
    )


class InstanceOut(Schema):
    """A scheduler instance as `GET /api/instances` shows it."""

    id = fields.String(required=True)
    host = fields.String(required=True)
    pid = fields.Integer(required=True)
    started_at = Timestamp(required=True)
    heartbeat_at = Timestamp(required=True, metadata={"description": "Its last heartbeat."})
    state = fields.String(
        required=True,
        metadata={
            ENUM: "InstanceState",
            "description": "running; draining while it stops; stale when its last heartbeat "
            "is older than its lease.",
        },
    )
    running = fields.Integer(required=True, metadata={"description": "Attempts it holds now."})
    slots = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "Its MAX_CONCURRENT_TASKS (null: an older version's)."},
    )
    lease_s = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Its LEASE_S: it heartbeats every third of it, and is declared "
            "dead once silent that long (null: an older version's, judged by the judge's)."
        },
    )
    types = fields.List(
        fields.String(),
        required=True,
        allow_none=True,
        metadata={"description": "The task types it claims; null: every type."},
    )
    queues = fields.List(
        fields.String(),
        required=True,
        allow_none=True,
        metadata={"description": "The queues it serves; null: every queue."},
    )


def load_task_edit(body: dict[str, Any]) -> dict[str, Any]:
    """Return the fields a client asked to change, or raise validation_failed."""
    try:
        loaded: dict[str, Any] = _task_edit.load(body)
    except ValidationError as exc:
        details = validation_details(exc, EDIT_FIELDS)
        for name, message in details.items():
            if message == UNKNOWN_FIELD and name in SERVER_SET:
                details[name] = (
                    f"Set by the server: {_EDITS} (cancel or retry a task with POST "
                    "/api/tasks/<id>/cancel or /retry)."
                )
            elif message == UNKNOWN_FIELD and name in TASK_FIELDS:
                details[name] = f"Fixed once submitted: {_EDITS}."
        raise ValidationFailed("The change is invalid.", details) from None
    if not loaded:
        raise ValidationFailed(
            "Nothing to change: send priority, run_at or queue.", {"_schema": "Empty."}
        )
    if "priority" in loaded and loaded["priority"] is None:
        loaded["priority"] = 0
    if "queue" in loaded and loaded["queue"] is None:
        loaded["queue"] = "default"
    return loaded


def load_queue_limits(body: dict[str, Any]) -> dict[str, Any]:
    """Return the limits a client sent (absent as null), or raise validation_failed."""
    try:
        loaded: dict[str, Any] = _queue_limits_in.load(body)
    except ValidationError as exc:
        details = validation_details(exc, QUEUE_LIMIT_FIELDS)
        for name, message in details.items():
            if message == UNKNOWN_FIELD and name.lower() in ("paused", "pause"):
                details[name] = "Not a limit: POST /api/queues/<name>/pause (or /resume)."
        raise ValidationFailed("The queue's limits are invalid.", details) from None
    return {name: loaded.get(name) for name in QueueLimitsIn._declared_fields}


class BlockerOut(Schema):
    """One reason a task is not running."""

    kind = fields.String(
        required=True, validate=validate.OneOf(BLOCKER_KINDS), metadata={ENUM: "BlockerKind"}
    )
    task_id = fields.String(metadata={"description": "The dependency, for kind dependency."})
    type = fields.String(
        metadata={"description": "The task type no running scheduler can run, for no_handler."}
    )
    status = fields.String(metadata={ENUM: "Status", "description": "The dependency's status."})
    until = Timestamp(
        metadata={"description": "When the wait ends, for run_at, backoff and queue_rate."}
    )
    queue = fields.String(
        metadata={"description": "The task's queue, for the kinds that start with queue_."}
    )
    limit = fields.Integer(
        metadata={"description": "The queue's concurrency limit, for queue_limit."}
    )


class BlockersOut(Schema):
    """The answer of `GET /api/tasks/<id>/blockers`."""

    id = fields.String(required=True)
    status = fields.String(required=True, metadata={ENUM: "Status"})
    blockers = fields.List(fields.Nested(BlockerOut), required=True)
    root_causes = fields.List(fields.String(), required=True)
    root_causes_truncated = fields.Boolean(
        required=True,
        metadata={
            "description": "The walk to the root causes stopped after 100,000 tasks: "
            "more root causes may lie below those listed."
        },
    )


class DatabaseHealth(Schema):
    """The database's part of `GET /health`."""

    dialect = fields.String(required=True, metadata={"description": "sqlite or postgresql."})
    status = fields.String(required=True, metadata={ENUM: "DatabaseStatus"})
    reason = fields.String(
        metadata={
            "description": "When not ok: a stable code such as shutting_down or disk_full. "
            "An open set: new codes may come."
        }
    )
    error = fields.String(metadata={"description": "When not ok: what is wrong, in words."})


class SchedulerHealth(Schema):
    """The scheduler's part of `GET /health`: only `state` when it is disabled."""

    state = fields.String(required=True, metadata={ENUM: "SchedulerState"})
    instance = fields.String(metadata={"description": "This scheduler's instance id."})
    max_concurrent = fields.Integer(metadata={"description": "Its MAX_CONCURRENT_TASKS."})
    running = fields.Integer(metadata={"description": "The attempts it is executing."})
    types = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "The task types it claims; null: every type."},
    )
    queues = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "The queues it serves (SCHEDULER_QUEUES); null: every queue."},
    )
    problem = fields.String(
        metadata={"description": "What keeps it from its job, when something does."}
    )
    listening = fields.Boolean(
        metadata={
            "description": "Whether other instances' wake-ups reach it: notifications on "
            "PostgreSQL, other processes' on a SQLite file."
        }
    )


class HealthOut(Schema):
    """The answer of `GET /health`."""

    status = fields.String(required=True, metadata={ENUM: "HealthStatus"})
    database = fields.Nested(DatabaseHealth, required=True)
    scheduler = fields.Nested(SchedulerHealth, required=True)


_task_in = TaskIn()
_queue_limits_in = QueueLimitsIn()
_task_edit = TaskEdit()
# The fields a submitted task may give, and those of a task that only the server sets.
TASK_FIELDS = frozenset(f.data_key or n for n, f in _task_in.load_fields.items())
SERVER_SET = frozenset(f.data_key or n for n, f in TaskOut().fields.items()) - TASK_FIELDS
# The fields of a change to a task, and of a queue's limits.
EDIT_FIELDS = frozenset(_task_edit.load_fields)
QUEUE_LIMIT_FIELDS = frozenset(_queue_limits_in.load_fields)
*_FIRST_EDITS, _LAST_EDIT = sorted(EDIT_FIELDS)
_EDITS = f"a PATCH changes only {', '.join(_FIRST_EDITS)} and {_LAST_EDIT}"


def task_details(error: ValidationError) -> dict[str, Any]:
    """`validation_details` of a task body: an unknown field says whether the server sets
    it, or which field was meant."""
    return validation_details(error, TASK_FIELDS, SERVER_SET)


def load_task(body: dict[str, Any]) -> dict[str, Any]:
    """Return the task a client sent, loaded, or raise validation_failed naming each field."""
    try:
        loaded: dict[str, Any] = _task_in.load(body)
    except ValidationError as exc:
        details = task_details(exc)
        if details.get("tasks") == UNKNOWN_FIELD:  # a batch, sent to the one task's route
            details["tasks"] = 'A batch\'s field: send {"tasks": [...]} to /api/tasks/batch.'
            raise ValidationFailed(
                "The task is invalid: this route takes one task; a batch goes to "
                "POST /api/tasks/batch.",
                details,
            ) from None
        raise ValidationFailed("The task is invalid.", details) from None
    return loaded

"""The OpenAPI 3 document of the API, generated from the marshmallow schemas."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask

from app.errors import ApiError
from app.http.errors import HTTP_CODES
from app.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from app.schemas import (
    ATTEMPT_OUTCOMES,
    BLOCKER_KINDS,
    ENUM,
    ID_PATTERN,
    MAX_QUEUE_NAME_LENGTH,
    MAX_SCHEDULE_ID_LENGTH,
    TRIGGER_RULES,
    AttemptOut,
    AttemptsOut,
    BatchIn,
    BatchOut,
    BatchSummaryOut,
    BlockerOut,
    BlockersOut,
    DatabaseHealth,
    ErrorOut,
    HealthOut,
    InstanceOut,
    QueueLimitsIn,
    QueueOut,
    ScheduledTaskIn,
    ScheduleEdit,
    ScheduleIn,
    ScheduleOut,
    SchedulerHealth,
    TaskEdit,
    TaskIn,
    TaskOut,
    TaskStatusOut,
    Timestamp,
)
from app.statuses import Status

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
JSON = "application/json"

DESCRIPTION = (
    "A persistent DAG task scheduler. Every response is JSON; timestamps are ISO 8601 UTC "
    "with milliseconds and `Z`. Every error has the shape of the `Error` schema. Every `/api` "
    "route rejects unknown query parameters, and any given more than once, with "
    "`400 invalid_parameter`; a method a route "
    "does not serve gets `405 method_not_allowed` with an `Allow` header, and an unknown route "
    "`404 not_found`.\n\n"
    "Authentication is optional: when the server's `API_TOKEN` setting is set, every `/api` "
    "route needs `Authorization: Bearer <token>` and answers `401 unauthorized` without it "
    "(`/health` too when `AUTH_OPS_ROUTES` is true); when it is unset the API is open. When "
    "`MAX_QUEUED_TASKS` is set, a submission that would take the number of `QUEUED` tasks "
    "past it gets `429 queue_full` with a `Retry-After` header (a batch counts whole).\n\n"
    "A database fault is never a 500: `503 database_unavailable` (nothing changed; repeat "
    "after `Retry-After`), `503 outcome_unknown` (the commit may have happened; repeat the "
    "same submission with the same id, answered as a replay if it was stored) or "
    "`507 storage_full` (nothing stored; space must be freed first)."
)
# The license of setup.cfg's metadata, as an SPDX identifier.
LICENSE = {"name": "MIT", "identifier": "MIT"}
# Relative to the document: the server that serves it serves the API.
SERVERS = [{"url": "/", "description": "The server that serves this document."}]
# The closed sets of values, each one enum schema that every field holding it refers to.
ENUMS: dict[str, tuple[str, list[str]]] = {
    "Status": ("Where a task is in its life.", [s.value for s in Status]),
    "TriggerRule": (
        "When a task with dependencies may run: all_success once every dependency "
        "completed, all_done once every dependency is terminal, whatever the outcome.",
        list(TRIGGER_RULES),
    ),
    "BlockerKind": ("Why a task is not running.", list(BLOCKER_KINDS)),
    "AttemptOutcome": ("How an attempt ended, or RUNNING.", list(ATTEMPT_OUTCOMES)),
    "InstanceState": (
        "What a scheduler instance is doing; stale: no heartbeat for its lease, so it is dead "
        "or cut off, and the next scheduler to look recovers its attempts.",
        ["running", "draining", "stale"],
    ),
    "HealthStatus": ("ok: the database and the scheduler can do their job.", ["ok", "unavailable"]),
    "DatabaseStatus": (
        "unreachable: a read fails; unusable: the schema was never migrated, or by an "
        "older version (run flask db upgrade); refusing_writes: reads work, but the last "
        "write was refused and none has committed since.",
        ["ok", "unreachable", "unusable", "refusing_writes"],
    ),
    "SchedulerState": (
        "stopped: this process runs no scheduler loop; disabled: SCHEDULER_ENABLED is false.",
        ["starting", "running", "draining", "stopped", "disabled"],
    ),
}
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "The value of the server's `API_TOKEN` setting; needed only when it is set.",
}
# Either the bearer token or nothing: which one the server wants depends on its settings.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]

TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The task's id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN},
}

QUEUE_NAME = {
    "name": "queue_name",
    "in": "path",
    "required": True,
    "description": "The queue's name.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_QUEUE_NAME_LENGTH,
        "pattern": ID_PATTERN,
    },
}
WITH_DEPENDENTS = {
    "name": "with_dependents",
    "in": "query",
    "description": "true: delete every task below it too (all must be finished).",
    "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
}
WAIT = {
    "name": "wait",
    "in": "query",
    "description": "Answer once the task is terminal, or after this many seconds (at most "
    "60) with the task as it is then. The request holds no database connection meanwhile; "
    "past `MAX_WAITING_REQUESTS` waiting requests a worker answers `503 too_many_waiting`.",
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
}
EVENT_FILTERS = [
    {
        "name": "task_id",
        "in": "query",
        "description": "Only this task's events (also taken as `task`; not both).",
        "schema": {"type": "string", "maxLength": 128, "pattern": ID_PATTERN},
    },
    {
        "name": "task",
        "in": "query",
        "description": "The same filter as `task_id`.",
        "schema": {"type": "string", "maxLength": 128, "pattern": ID_PATTERN},
    },
    {
        "name": "batch_id",
        "in": "query",
        "description": "Only the events of this batch's tasks (also taken as `batch`; not "
        "both), as `GET /api/tasks?batch_id=` lists them.",
        "schema": {"type": "string", "maxLength": 128, "pattern": ID_PATTERN},
    },
    {
        "name": "batch",
        "in": "query",
        "description": "The same filter as `batch_id`.",
        "schema": {"type": "string", "maxLength": 128, "pattern": ID_PATTERN},
    },
    {
        "name": "type",
        "in": "query",
        "description": "Only these task types (comma-separated, at most 20).",
        "schema": {"type": "string"},
    },
    {
        "name": "status",
        "in": "query",
        "description": "Only changes to these statuses (comma-separated).",
        "schema": {"type": "string"},
    },
    {
        "name": "Last-Event-ID",
        "in": "header",
        "description": "Resume after this event (the `id` of the last one received): every "
        "later event still retained is sent, in order. Without it, or empty, the stream "
        "starts now.",
        "schema": {"type": "string", "pattern": "^[ \t]*([0-9]{1,18})?[ \t]*$"},
    },
]
EVENT_STREAM = (
    "Server-sent events. At once: `retry: 1000`. Then, for each state change in the "
    "order of its number: `id: <seq>`, `event: task`, `data:` a JSON object (`seq`, `at`, "
    "`task_id`, `batch_id`, `type`, `attempt`, `status`, `reason`), a blank line; "
    "`: keepalive` comments while nothing happens. The stream ends after "
    "`EVENT_STREAM_MAX_S`; reconnect with `Last-Event-ID`."
)
BATCH_ID = {
    "name": "batch_id",
    "in": "path",
    "required": True,
    "description": "The batch's id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": ID_PATTERN},
}
SCHEDULE_ID = {
    "name": "schedule_id",
    "in": "path",
    "required": True,
    "description": "The schedule's id.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SCHEDULE_ID_LENGTH,
        "pattern": ID_PATTERN,
    },
}
PAGE_PARAMETERS = [
    {
        "name": "limit",
        "in": "query",
        "description": "The page size.",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "default": DEFAULT_PAGE_SIZE,
        },
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "Where the page starts: copy it from the previous page's `Link` header.",
        "schema": {"type": "string"},
    },
]

LIST_PARAMETERS = [
    {
        "name": "status",
        "in": "query",
        "description": (
            "Only tasks in this status, or in any of several, comma-separated "
            "(`FAILED,UPSTREAM_FAILED`); in any case (`failed` is `FAILED`)."
        ),
        "schema": {"type": "string"},
    },
    {
        "name": "type",
        "in": "query",
        "description": "Only tasks of this type.",
        "schema": {"type": "string"},
    },
    {
        "name": "batch_id",
        "in": "query",
        "description": "Only the tasks of this batch.",
        "schema": {"type": "string"},
    },
    *PAGE_PARAMETERS,
]

LOCATION = {
    "Location": {"description": "The new task's URL.", "schema": {"type": "string"}},
}
LINK = {
    "Link": {
        "description": 'The next page, as `<url>; rel="next"`; absent on the last page.',
        "schema": {"type": "string"},
    },
}
ALLOW = {
    "Allow": {
        "description": "The methods the route serves.",
        "required": True,
        "schema": {"type": "string"},
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before submitting again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}
RETRY_AFTER_DATABASE = {
    "Retry-After": {
        "description": "Seconds to wait before repeating the request.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "The scheme to use: `Bearer`.",
        "schema": {"type": "string"},
    },
}
# Answers every route can give, defined once under components/responses.
SHARED_RESPONSES: dict[str, tuple[str, dict[str, Any]]] = {
    "Unauthorized": (
        "`unauthorized`: `API_TOKEN` is set and the request has no `Authorization: Bearer` "
        "header with it.",
        WWW_AUTHENTICATE,
    ),
    "MethodNotAllowed": ("`method_not_allowed`: the route does not serve this method.", ALLOW),
    "QueueFull": (
        "`queue_full`: `MAX_QUEUED_TASKS` is set and this submission would take the QUEUED "
        "count past it; nothing was stored.",
        RETRY_AFTER,
    ),
    "InternalError": ("`internal_error`: a bug; never with a traceback.", {}),
    "DatabaseUnavailable": (
        "`database_unavailable`: the database could not be reached or gave up before "
        "committing (a restart, no free connection, SQLite locked); nothing was changed, "
        "repeat the request after `Retry-After`. `outcome_unknown`: the connection failed "
        "while the commit was in flight, so the change may or may not be stored; repeat "
        "the same request (a submission with the same id and body is answered as a replay "
        "if it was stored). `database_unusable` (no `Retry-After`): the database was never "
        "migrated, or by an older version (an operator must run `flask db upgrade`), or the "
        "server refuses the login DATABASE_URL gives. "
        "`details.reason` names the cause.",
        RETRY_AFTER_DATABASE,
    ),
    "StorageFull": (
        "`storage_full`: the disk (or SQLite's size limit) refused the write; nothing was "
        "stored, and repeating it fails until space is freed.",
        {},
    ),
}


def spec_for(app: Flask) -> dict[str, Any]:
    """Return the app's OpenAPI document, built on first use and then reused."""
    document = app.extensions.get("openapi")
    if document is None:
        document = app.extensions["openapi"] = build_spec()
    return document


def error_codes() -> list[str]:
    """Return every `code` an error body can carry."""
    codes = {"internal_error", "http_error", ApiError.code, *HTTP_CODES.values()}
    pending = list(ApiError.__subclasses__())
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


def _json(schema: str | dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _errors(database: str = "reads", public: bool = False, **by_status: str) -> dict[str, Any]:
    """Return error responses keyed by status (`e400=...`), each in the `Error` shape.

    Every route also answers 405 and 500 from the shared ones, and 401 with a token set
    unless it is `public`; a route that reads the database 503, and one that writes it 507.
    """
    answers = {key.removeprefix("e"): _json("Error", text) for key, text in by_status.items()}
    shared = {"405": "MethodNotAllowed", "500": "InternalError"}
    if not public:
        shared["401"] = "Unauthorized"
    if database in ("reads", "writes"):
        shared["503"] = "DatabaseUnavailable"
    if database == "writes":
        shared["507"] = "StorageFull"
    return {**answers, **shared}


def _operation(
    operation_id: str, summary: str, responses: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def _body(schema: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {JSON: {"schema": schema}}}


def _paths() -> dict[str, dict[str, Any]]:
    """Return every route's operations, keyed by OpenAPI path and method."""
    bad_parameter = "`invalid_parameter`: an unknown query parameter."
    not_found = "`not_found`: no task has this id."
    task_ops = {"parameters": [TASK_ID]}
    return {
        "/api/tasks": {
            "post": _operation(
                "submit_task",
                "Submit a task",
                {
                    "201": _json("TaskOut", "Created and durably committed.", headers=LOCATION),
                    "200": _json("TaskOut", "The same id with an identical body: a safe retry."),
                    **_errors(
                        "writes",
                        e400="`validation_error`, `invalid_json`, `unknown_dependency`, "
                        "`unknown_task_type` or `invalid_parameter`.",
                        e409="`duplicate_id`: the id exists with a different body.",
                        e413="`body_too_large`: a body over 1 MiB.",
                        e415="`unsupported_media_type`: not `application/json`, or not UTF-8.",
                    ),
                    "429": "QueueFull",
                },
                requestBody=_body("TaskIn", "The task."),
            ),
            "get": _operation(
                "list_tasks",
                "List tasks newest first, a page at a time, without payload and result",
                {
                    "200": _json(
                        {"type": "array", "items": "TaskSummary"}, "A page.", headers=LINK
                    ),
                    **_errors(
                        e400="`invalid_parameter`: an unknown parameter or status, a limit out "
                        "of range, a type or batch_id no task can have, or a cursor this server "
                        "did not issue."
                    ),
                },
                parameters=LIST_PARAMETERS,
            ),
        },
        "/api/tasks/batch": {
            "post": _operation(
                "submit_batch",
                "Submit a whole graph in one transaction",
                {
                    "201": _json("BatchOut", "Stored; tasks in the order they were sent."),
                    "200": _json("BatchOut", "The identical batch again: a safe retry."),
                    **_errors(
                        "writes",
                        e400="`validation_error`, `invalid_json`, `dependency_cycle`, "
                        "`unknown_dependency`, `unknown_task_type` or `invalid_parameter`.",
                        e409="`duplicate_id`: some ids exist, but not as exactly this batch.",
                        e413="`body_too_large`: over 100,000 tasks or 32 MiB.",
                        e415="`unsupported_media_type`: not `application/json`, or not UTF-8.",
                    ),
                    "429": "QueueFull",
                },
                requestBody=_body("BatchIn", "1 to 100,000 tasks, each as for POST /api/tasks."),
            ),
        },
        "/api/tasks/{task_id}": {
            **task_ops,
            "get": _operation(
                "get_task",
                "Show one task with its payload and result; with `wait`, once it has ended",
                {
                    "200": _json(
                        "TaskOut", "The task (with `wait`: terminal, or the deadline came)."
                    ),
                    **_errors(
                        e400="`invalid_parameter`: an unknown parameter, or a wait that is "
                        "not a number from 0 to 60.",
                        e404=not_found,
                    ),
                    "503": _json(
                        "Error",
                        "`too_many_waiting`: this worker already holds `MAX_WAITING_REQUESTS` "
                        "waiting requests; or `database_unavailable` / `outcome_unknown` as "
                        "on every route that reads the database.",
                        headers=RETRY_AFTER_DATABASE,
                    ),
                },
                parameters=[WAIT],
            ),
            "patch": _operation(
                "edit_task",
                "Change a QUEUED task's priority, run_at or queue",
                {
                    "200": _json("TaskOut", "The task as changed."),
                    **_errors(
                        "writes",
                        e400="`validation_error` naming each field that is wrong (an "
                        "empty body, a field that cannot change), `invalid_json` or "
                        "`invalid_parameter`.",
                        e404=not_found,
                        e409="`invalid_state`: the task is not QUEUED; `too_many_queues`: a "
                        "new queue past the most there may be.",
                        e413="`body_too_large`.",
                        e415="`unsupported_media_type`: not `application/json`, or not UTF-8.",
                    ),
                },
                requestBody=_body("TaskEdit", "The fields to change."),
            ),
            "delete": _operation(
                "delete_task",
                "Delete a finished task once every task depending on it COMPLETED",
                {
                    "204": {"description": "Deleted (with the tasks below it, if asked)."},
                    **_errors(
                        "writes",
                        e400="`invalid_parameter`: with_dependents not true or false, or an "
                        "unknown parameter.",
                        e404=not_found,
                        e409="`invalid_state`: the task is not finished, or tasks that "
                        "depend on it keep it (`details.blocking` names them).",
                    ),
                },
                parameters=[WITH_DEPENDENTS],
            ),
        },
        "/api/tasks/{task_id}/status": {
            **task_ops,
            "get": _operation(
                "get_status",
                "Show a task's status",
                {
                    "200": _json("TaskStatusOut", "The task's status."),
                    **_errors(e400=bad_parameter, e404=not_found),
                },
            ),
        },
        "/api/tasks/{task_id}/cancel": {
            **task_ops,
            "post": _operation(
                "cancel_task",
                "Cancel a QUEUED task, or ask a RUNNING one to stop; dependents follow",
                {
                    "200": _json("TaskOut", "The task as it is after the request."),
                    **_errors(
                        "writes",
                        e400=bad_parameter,
                        e404=not_found,
                        e409="`invalid_state`: the task is already terminal.",
                    ),
                },
            ),
        },
        "/api/tasks/{task_id}/retry": {
            **task_ops,
            "post": _operation(
                "retry_task",
                "Requeue a FAILED or CANCELLED task and the dependents it held back",
                {
                    "200": _json("TaskOut", "The task, QUEUED again."),
                    **_errors(
                        "writes",
                        e400=bad_parameter,
                        e404=not_found,
                        e409="`invalid_state`: not FAILED or CANCELLED, or stopped by a "
                        "dependency (`details.root` names the task to retry instead).",
                    ),
                },
            ),
        },
        "/api/tasks/{task_id}/attempts": {
            **task_ops,
            "get": _operation(
                "task_attempts",
                "Show a task's attempts: how each ended, where it ran, its error and traceback",
                {
                    "200": _json("AttemptsOut", "Its attempts, oldest first."),
                    **_errors(e400=bad_parameter, e404=not_found),
                },
            ),
        },
        "/api/events": {
            "get": _operation(
                "stream_events",
                "Stream task state changes as they commit (server-sent events)",
                {
                    "200": {
                        "description": EVENT_STREAM,
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(
                        e400="`invalid_parameter`: an unknown parameter or status, a filter "
                        "no task can match, a `Last-Event-ID` that is not a number."
                    ),
                    "503": _json(
                        "Error",
                        "`too_many_streams`: this worker already holds `MAX_EVENT_STREAMS` "
                        "streams; or `database_unavailable` as on every route that reads.",
                        headers=RETRY_AFTER_DATABASE,
                    ),
                },
                parameters=EVENT_FILTERS,
            ),
        },
        "/api/instances": {
            "get": _operation(
                "list_instances",
                "List the registered scheduler instances, oldest first",
                {
                    "200": _json({"type": "array", "items": "InstanceOut"}, "Every instance."),
                    **_errors(e400=bad_parameter),
                },
            ),
        },
        "/api/tasks/{task_id}/blockers": {
            **task_ops,
            "get": _operation(
                "task_blockers",
                "Say why a task is not running, down to the root causes",
                {
                    "200": _json("BlockersOut", "What holds the task."),
                    **_errors(e400=bad_parameter, e404=not_found),
                },
            ),
        },
        **_schedule_paths(),
        **_queue_paths(),
        **_batch_paths(),
        "/api/openapi.json": {
            "get": _operation(
                "openapi_document",
                "This document",
                {
                    "200": _json({"type": "object"}, "The OpenAPI document."),
                    **_errors("none", public=True, e400=bad_parameter),
                },
                security=[],  # public, even with API_TOKEN set
            ),
        },
        "/health": {
            "get": _operation(
                "health",
                "Report the database and the scheduler",
                {
                    "200": _json("HealthOut", "Both can do their job."),
                    "503": _json(
                        "HealthOut",
                        "The database is unreachable or refusing writes (`database.error` "
                        "says what is wrong), or the scheduler is not healthy.",
                    ),
                    **_errors("none"),
                },
            ),
        },
    }


def _schedule_paths() -> dict[str, dict[str, Any]]:
    """Return the operations of the schedule routes."""
    bad_parameter = "`invalid_parameter`: an unknown query parameter."
    not_found = "`not_found`: no schedule has this id."
    invalid = (
        "`validation_error` naming each field that is wrong (a cron expression, a time "
        "zone, an interval below 1, both or neither of cron and interval_s or of task and "
        "batch, a task or batch that would not be a valid submission), `invalid_json` or "
        "`invalid_parameter`."
    )
    media = "`unsupported_media_type`: not `application/json`."
    one = {"parameters": [SCHEDULE_ID]}
    return {
        "/api/schedules": {
            "post": _operation(
                "create_schedule",
                "Create a recurring schedule",
                {
                    "201": _json("ScheduleOut", "Created.", headers=LOCATION),
                    "200": _json("ScheduleOut", "The same id and body: a safe retry."),
                    **_errors(
                        "writes",
                        e400=invalid,
                        e409="`duplicate_id`: the id exists with a different body.",
                        e413="`body_too_large`: a body over 32 MiB.",
                        e415=media,
                    ),
                },
                requestBody=_body("ScheduleIn", "The schedule."),
            ),
            "get": _operation(
                "list_schedules",
                "List schedules by id, with their next and last firings",
                {
                    "200": _json(
                        {"type": "array", "items": "ScheduleOut"}, "A page.", headers=LINK
                    ),
                    **_errors(e400="`invalid_parameter`: an unknown parameter or a bad limit."),
                },
                parameters=PAGE_PARAMETERS,
            ),
        },
        "/api/schedules/{schedule_id}": {
            **one,
            "get": _operation(
                "get_schedule",
                "Show one schedule",
                {
                    "200": _json("ScheduleOut", "The schedule."),
                    **_errors(e400=bad_parameter, e404=not_found),
                },
            ),
            "patch": _operation(
                "edit_schedule",
                "Pause, resume or change a schedule; a new timing counts from now",
                {
                    "200": _json("ScheduleOut", "The schedule as changed."),
                    **_errors(
                        "writes", e400=invalid, e404=not_found, e413="`body_too_large`.", e415=media
                    ),
                },
                requestBody=_body("ScheduleEdit", "The fields to change."),
            ),
            "delete": _operation(
                "delete_schedule",
                "Delete a schedule; the tasks it created stay",
                {
                    "204": {"description": "Deleted."},
                    **_errors("writes", e400=bad_parameter, e404=not_found),
                },
            ),
        },
    }


def _batch_paths() -> dict[str, dict[str, Any]]:
    bad_id = "`invalid_parameter`: not a batch id, or an unknown query parameter."
    not_found = "`not_found`: no task has this batch id."
    one = {"parameters": [BATCH_ID]}
    return {
        "/api/batches/{batch_id}": {
            **one,
            "get": _operation(
                "get_batch",
                "Show a batch: its tasks by status, its state, first start and last finish",
                {
                    "200": _json("BatchSummaryOut", "The batch."),
                    **_errors(e400=bad_id, e404=not_found),
                },
            ),
        },
        "/api/batches/{batch_id}/cancel": {
            **one,
            "post": _operation(
                "cancel_batch",
                "Cancel every QUEUED task of a batch and ask every RUNNING one to stop",
                {
                    "200": _json("BatchSummaryOut", "The batch afterwards, with `changed`."),
                    **_errors(
                        "writes",
                        e400=bad_id,
                        e404=not_found,
                        e409="`invalid_state`: no task of the batch is QUEUED or RUNNING.",
                    ),
                },
            ),
        },
        "/api/batches/{batch_id}/retry": {
            **one,
            "post": _operation(
                "retry_batch",
                "Retry every task of a batch that failed or a user cancelled",
                {
                    "200": _json("BatchSummaryOut", "The batch afterwards, with `changed`."),
                    **_errors(
                        "writes",
                        e400=bad_id,
                        e404=not_found,
                        e409="`invalid_state`: nothing to retry.",
                    ),
                },
            ),
        },
    }


def _queue_paths() -> dict[str, dict[str, Any]]:
    bad_name = (
        "`invalid_parameter`: not a queue name, an unknown query parameter, or (pause and "
        "resume) a body."
    )
    too_many = "`too_many_queues`: a new queue past the most queues there may be (200)."
    one = {"parameters": [QUEUE_NAME]}
    changed = "The queue as it now stands."
    return {
        "/api/queues": {
            "get": _operation(
                "list_queues",
                "List every queue with its state, limits and tasks by status",
                {
                    "200": _json({"type": "array", "items": "QueueOut"}, "Every queue, by name."),
                    **_errors(e400="`invalid_parameter`: an unknown query parameter."),
                },
            ),
        },
        "/api/queues/{queue_name}": {
            **one,
            "get": _operation(
                "get_queue",
                "Show one queue",
                {
                    "200": _json("QueueOut", "The queue."),
                    **_errors(
                        e400=bad_name, e404="`not_found`: no task or setting names this queue."
                    ),
                },
            ),
            "put": _operation(
                "set_queue_limits",
                "Set a queue's concurrency and rate limits (absent or null: none)",
                {
                    "200": _json("QueueOut", changed),
                    **_errors(
                        "writes",
                        e400="`validation_error` naming each field that is wrong, "
                        "`invalid_json` or " + bad_name,
                        e409=too_many,
                        e413="`body_too_large`.",
                        e415="`unsupported_media_type`: not `application/json`, or not UTF-8.",
                    ),
                },
                requestBody=_body("QueueLimitsIn", "The limits; a limit left out is none."),
            ),
            "delete": _operation(
                "delete_queue",
                "Delete a queue that holds no task and that no schedule names",
                {
                    "204": {"description": "Deleted: its row and settings are gone."},
                    **_errors(
                        "writes",
                        e400=bad_name,
                        e404="`not_found`: no task or setting names this queue.",
                        e409="`invalid_state`: the default queue, a queue holding tasks "
                        "(`details.tasks` counts them by status), or one a schedule names "
                        "(`details.schedules`).",
                    ),
                },
            ),
        },
        "/api/queues/{queue_name}/pause": {
            **one,
            "post": _operation(
                "pause_queue",
                "Stop a queue starting tasks; its running tasks go on",
                {
                    "200": _json("QueueOut", changed),
                    **_errors("writes", e400=bad_name, e409=too_many),
                },
            ),
        },
        "/api/queues/{queue_name}/resume": {
            **one,
            "post": _operation(
                "resume_queue",
                "Let a paused queue start tasks again",
                {
                    "200": _json("QueueOut", changed),
                    **_errors("writes", e400=bad_name, e409=too_many),
                },
            ),
        },
    }


def build_spec() -> dict[str, Any]:
    """Build the OpenAPI document of every route from the marshmallow schemas."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(
        title="Task Scheduler",
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[marshmallow],
        info={"description": DESCRIPTION, "license": LICENSE},
        servers=SERVERS,
        security=SECURITY,
    )
    marshmallow.map_to_openapi_type(Timestamp, "string", "date-time")
    for name, (description, values) in ENUMS.items():
        spec.components.schema(name, {"type": "string", "enum": values, "description": description})
    spec.components.schema("Error", schema=ErrorOut)
    spec.components.schema("TaskIn", schema=TaskIn)
    spec.components.schema("TaskOut", schema=TaskOut)
    spec.components.schema("TaskSummary", schema=TaskOut(exclude=("payload", "result")))
    spec.components.schema("TaskStatusOut", schema=TaskStatusOut)
    spec.components.schema("BatchIn", schema=BatchIn)
    spec.components.schema("BatchOut", schema=BatchOut)
    spec.components.schema("ScheduledTaskIn", schema=ScheduledTaskIn)
    spec.components.schema("ScheduleIn", schema=ScheduleIn)
    spec.components.schema("ScheduleEdit", schema=ScheduleEdit)
    spec.components.schema("ScheduleOut", schema=ScheduleOut)
    spec.components.schema("TaskEdit", schema=TaskEdit)
    spec.components.schema("BatchSummaryOut", schema=BatchSummaryOut)
    spec.components.schema("QueueLimitsIn", schema=QueueLimitsIn)
    spec.components.schema("QueueOut", schema=QueueOut)
    spec.components.schema("AttemptOut", schema=AttemptOut)
    spec.components.schema("AttemptsOut", schema=AttemptsOut)
    spec.components.schema("InstanceOut", schema=InstanceOut)
    spec.components.schema("BlockerOut", schema=BlockerOut)
    spec.components.schema("BlockersOut", schema=BlockersOut)
    spec.components.schema("DatabaseHealth", schema=DatabaseHealth)
    spec.components.schema("SchedulerHealth", schema=SchedulerHealth)
    spec.components.schema("HealthOut", schema=HealthOut)
    spec.components.security_scheme("bearerAuth", BEARER)
    for name, (description, headers) in SHARED_RESPONSES.items():
        extra = {"headers": dict(headers)} if headers else {}
        spec.components.response(name, _json("Error", description, **extra))
    for path, operations in _paths().items():
        parameters = operations.pop("parameters", None)
        spec.path(path=path, operations=operations, parameters=parameters)
    document = spec.to_dict()
    schemas = document["components"]["schemas"]
    # An open set, like a task's error_code: a client generated today must still read a
    # code that a later version adds. The codes known today are its examples.
    code = schemas["Error"]["properties"]["code"]
    code["examples"] = error_codes()
    code["description"] += (
        " An open set: the codes this version answers are listed in `examples`; new codes "
        "may come, so a client must accept one it does not know."
    )
    for schema in schemas.values():
        _refer_to_enums(schema.get("properties", {}))
    _portable_patterns(document)
    return document


def _refer_to_enums(properties: dict[str, Any]) -> None:
    """Replace each property marked with an enum's name by a reference to that enum schema.

    A nullable one becomes `anyOf` the enum and `null`: a type list with `null` in the enum
    makes client generators write one enum class per variant.
    """
    for name, prop in properties.items():
        enum = prop.pop(ENUM, None)
        if enum is None:
            continue
        assert enum in ENUMS, f"{name}: no enum schema {enum}"
        ref: dict[str, Any] = {"$ref": f"#/components/schemas/{enum}"}
        types = prop.get("type")
        nullable = isinstance(types, list) and "null" in types
        replaced = {"anyOf": [ref, {"type": "null"}]} if nullable else ref
        if "description" in prop:
            replaced["description"] = prop["description"]
        properties[name] = replaced


def _portable_patterns(node: Any) -> None:
    """Rewrite Python's end-of-string anchor `\\Z` as `$`, which JSON Schema understands."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            pattern = item.get("pattern")
            if isinstance(pattern, str) and pattern.endswith("\\Z"):
                item["pattern"] = pattern[:-2] + "$"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)

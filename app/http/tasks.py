"""HTTP routes: parse, call a service, dump. No business logic lives here."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from marshmallow import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import InvalidParameter, ValidationFailed
from app.http.openapi import spec_for
from app.jsonbody import read_json_object
from app.runtime import metrics
from app.schemas import TaskIn, TaskOut, TaskStatusOut, validation_details
from app.services import actions, batch, reads, submissions
from app.services.blockers import blockers
from app.storage import database, dbfaults
from app.storage.models import Status

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 32 * 1024 * 1024

bp = Blueprint("tasks", __name__, url_prefix="/api")
ops = Blueprint("ops", __name__)

task_in = TaskIn()
task_out = TaskOut()
tasks_out = TaskOut(many=True, exclude=("payload", "result"))
status_out = TaskStatusOut()


def _engine() -> Any:
    return current_app.extensions["store"].engine


def _only_parameters(*allowed: str) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise InvalidParameter(
            f"Unknown query parameter {unknown[0]!r}; this route accepts "
            + (", ".join(allowed) if allowed else "none")
            + ".",
            {name: "Unknown parameter." for name in unknown},
        )


@bp.post("/tasks")
def submit_task() -> tuple[Response, int]:
    """Accept one task; 201 once it is committed, 200 for an identical replay."""
    _only_parameters()
    body = read_json_object(request, MAX_BODY_BYTES)
    try:
        data = task_in.load(body)
    except ValidationError as exc:
        raise ValidationFailed("The task is invalid.", validation_details(exc)) from None
    submitted = submissions.submit(_engine(), data, current_app.extensions["admission"])
    response = jsonify(task_out.dump(submitted.task))
    if not submitted.created:
        return response, 200
    current_app.extensions["metrics"].submitted([submitted.task["type"]])
    current_app.extensions["scheduler"].wake()
    response.headers["Location"] = url_for("tasks.get_task", task_id=submitted.task["id"])
    return response, 201


@bp.post("/tasks/batch")
def submit_batch() -> tuple[Response, int]:
    """Accept a whole graph in one transaction; 201 once committed, 200 for a replay."""
    _only_parameters()
    body = read_json_object(request, MAX_BATCH_BYTES)
    submitted = batch.submit_batch(_engine(), body, current_app.extensions["admission"])
    response = jsonify({"batch_id": submitted.batch_id, "tasks": batch.dump_tasks(submitted.tasks)})
    if not submitted.created:
        return response, 200
    current_app.extensions["metrics"].submitted(t["type"] for t in submitted.tasks)
    current_app.extensions["scheduler"].wake()
    return response, 201


@bp.get("/tasks")
def list_tasks() -> Response:
    """List tasks newest first, a page at a time, with a Link to the next page."""
    _only_parameters("status", "type", "batch_id", "limit", "cursor")
    status = request.args.get("status")
    if status is not None and status not in Status.__members__:
        raise InvalidParameter(
            f"Unknown status {status[:32]!r}; use one of " + ", ".join(Status) + ".",
            {"status": "Unknown status."},
        )
    page = reads.list_tasks(
        _engine(),
        status=status,
        task_type=request.args.get("type"),
        batch_id=request.args.get("batch_id"),
        limit=_limit(request.args.get("limit")),
        cursor=request.args.get("cursor"),
    )
    response = jsonify(tasks_out.dump(page.tasks))
    if page.next_cursor is not None:
        args = {**request.args.to_dict(), "cursor": page.next_cursor}
        link = url_for("tasks.list_tasks", _external=True, **args)
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    # str.isdigit alone accepts "²", which int() refuses; the length spares int() huge input.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4 or not 1 <= int(raw) <= 1000:
        raise InvalidParameter(
            "limit must be an integer from 1 to 1000.", {"limit": "Out of range."}
        )
    return int(raw)


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Response:
    """Show one task with its payload and result."""
    _only_parameters()
    return jsonify(task_out.dump(reads.get_task(_engine(), task_id)))


@bp.get("/tasks/<task_id>/status")
def get_status(task_id: str) -> Response:
    """Show a task's status, as the original API did."""
    _only_parameters()
    return jsonify(status_out.dump(reads.get_status(_engine(), task_id)))


@bp.post("/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    """Cancel a QUEUED task, or ask a RUNNING one to stop; dependents follow."""
    _only_parameters()
    task = actions.cancel(_engine(), task_id)
    if task["status"] == "RUNNING":
        current_app.extensions["scheduler"].cancel_running(task_id, task["attempts"])
    return jsonify(task_out.dump(task))


@bp.post("/tasks/<task_id>/retry")
def retry_task(task_id: str) -> Response:
    """Requeue a FAILED or CANCELLED task and the dependents it held back."""
    _only_parameters()
    task = actions.retry(_engine(), task_id)
    current_app.extensions["scheduler"].wake()
    return jsonify(task_out.dump(task))


@bp.get("/tasks/<task_id>/blockers")
def task_blockers(task_id: str) -> Response:
    """Say why a task is not running, down to the root causes."""
    _only_parameters()
    return jsonify(blockers(_engine(), task_id))


@ops.get("/health")
def health() -> tuple[Response, int]:
    """Report the database and the scheduler; 503 when either cannot do its job."""
    engine = _engine()
    storage = _database_health(engine)
    scheduler = current_app.extensions["scheduler"]
    state: dict[str, Any]
    if not current_app.config["SCHEDULER_ENABLED"]:
        state, healthy = {"state": "disabled"}, True
    else:
        problem = scheduler.problem()
        healthy = problem is None
        state = {
            "state": scheduler.state,
            "instance": scheduler.id,
            "max_concurrent": scheduler.max_concurrent,
            "running": scheduler.running_count(),
            "types": scheduler.types or None,  # None: every type
        }
        if problem is not None:
            state["problem"] = problem
        if engine.dialect.name == "postgresql":
            # Informational: without LISTEN, work from elsewhere waits for the next poll.
            state["listening"] = scheduler.listening()
    ok = healthy and storage["status"] == "ok"
    body = {"status": "ok" if ok else "unavailable", "database": storage, "scheduler": state}
    return jsonify(body), 200 if ok else 503


def _database_health(engine: Any) -> dict[str, Any]:
    """Say whether the database serves reads and writes, and if not, what is wrong.

    `status` is `ok`, `unreachable` (a read fails) or `refusing_writes` (reads work, but
    this process's last write was refused, as by a full disk, and none has committed
    since); `reason` is a stable code and `error` a sentence an operator can act on.
    """
    storage: dict[str, Any] = {"dialect": engine.dialect.name}
    try:
        with database.read(engine) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        fault = dbfaults.classify(exc)
        if fault is None:
            problem = f"the database failed a trivial query ({type(exc).__name__})"
            return {**storage, "status": "unreachable", "reason": "error", "error": problem}
        return {**storage, "status": "unreachable", "reason": fault.reason, "error": fault.problem}
    refused = dbfaults.refusing_writes(engine)
    if refused is None:
        return {**storage, "status": "ok"}
    fault, age_s = refused
    problem = f"writes are refused: {fault.problem} (last refused {age_s:.0f} s ago)"
    return {**storage, "status": "refusing_writes", "reason": fault.reason, "error": problem}


@ops.get("/metrics")
def scrape() -> Response:
    """Expose the metrics in the Prometheus text format; open, like /health."""
    body = current_app.extensions["metrics"].exposition()
    return Response(body, 200, content_type=metrics.CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Serve the OpenAPI 3 document of every route, generated from the schemas."""
    _only_parameters()
    return jsonify(spec_for(current_app))

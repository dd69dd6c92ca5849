"""HTTP routes: parse, call a service, dump. No business logic lives here."""

from __future__ import annotations

import logging
import math
import re

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from app import parts
from app.errors import InvalidParameter
from app.http.inputs import json_body, no_body, only_parameters, page_limit, statuses
from app.http.openapi import spec_for
from app.limits import MAX_BATCH_BYTES, MAX_BODY_BYTES
from app.schemas import AttemptsOut, TaskOut, TaskStatusOut, load_task, load_task_edit
from app.services import actions, batch, reads, submissions
from app.services.blockers import blockers
from app.services.waiting import MAX_WAIT_S
from app.statuses import Status

bp = Blueprint("tasks", __name__, url_prefix="/api")
# A retry takes no fields: what it would change, it keeps.
RETRY_KEEPS = (
    "A retry keeps the task's fields (max_attempts, payload, ...) and gives it a fresh "
    "budget of max_attempts."
)
log = logging.getLogger("app.actions")

task_out = TaskOut()
tasks_out = TaskOut(many=True, exclude=("payload", "result"))
status_out = TaskStatusOut()
attempts_out = AttemptsOut()


@bp.post("/tasks")
def submit_task() -> tuple[Response, int]:
    """Accept one task; 201 once it is committed, 200 for an identical replay."""
    only_parameters()
    body = json_body(MAX_BODY_BYTES)
    data = load_task(body)
    submitted = submissions.submit(parts.engine(), data, parts.admission())
    response = jsonify(task_out.dump(submitted.task))
    if not submitted.created:
        return response, 200
    parts.metrics().submitted([submitted.task["type"]])
    parts.scheduler().wake()
    response.headers["Location"] = url_for("tasks.get_task", task_id=submitted.task["id"])
    return response, 201


@bp.post("/tasks/batch")
def submit_batch() -> tuple[Response, int]:
    """Accept a whole graph in one transaction; 201 once committed, 200 for a replay."""
    only_parameters()
    body = json_body(MAX_BATCH_BYTES, shape='{"tasks": [...]}')
    submitted = batch.submit_batch(parts.engine(), body, parts.admission())
    response = jsonify({"batch_id": submitted.batch_id, "tasks": batch.dump_tasks(submitted.tasks)})
    if not submitted.created:
        return response, 200
    parts.metrics().submitted(t["type"] for t in submitted.tasks)
    parts.scheduler().wake()
    return response, 201


@bp.get("/tasks")
def list_tasks() -> Response:
    """List tasks newest first, a page at a time, with a Link to the next page."""
    only_parameters("status", "type", "batch_id", "limit", "cursor", listed=("status",))
    page = reads.list_tasks(
        parts.engine(),
        statuses=statuses(request.args.get("status")),
        task_type=request.args.get("type"),
        batch_id=request.args.get("batch_id"),
        limit=page_limit(request.args.get("limit")),
        cursor=request.args.get("cursor"),
    )
    response = jsonify(batch.dump_tasks(page.tasks, tasks_out))
    if page.next_cursor is not None:
        args = {**request.args.to_dict(), "cursor": page.next_cursor}
        link = url_for("tasks.list_tasks", _external=True, **args)
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Response:
    """Show one task with its payload and result; with `wait`, once it has ended (or
    after that many seconds, as it is then)."""
    only_parameters("wait")
    raw = request.args.get("wait")
    if raw is None:
        return jsonify(task_out.dump(reads.get_task(parts.engine(), task_id)))
    return jsonify(task_out.dump(parts.waiters().wait(task_id, _wait_seconds(raw))))


# Seconds as digits, with a fraction or not: nothing else that float() takes (1e3, nan,
# +5, 1_0, other scripts' digits, spaces).
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?\Z")


def _wait_seconds(raw: str) -> float:
    seconds = float(raw) if _SECONDS.match(raw) else math.nan
    if not 0 <= seconds <= MAX_WAIT_S:  # NaN too
        raise InvalidParameter(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}.",
            {"wait": "Not a number from 0 to 60."},
        )
    return seconds


@bp.patch("/tasks/<task_id>")
def edit_task(task_id: str) -> Response:
    """Change a QUEUED task's priority, run_at or queue."""
    only_parameters()
    changes = load_task_edit(json_body(MAX_BODY_BYTES))
    task = actions.edit(parts.engine(), task_id, changes)
    parts.metrics().task_action("edited")
    parts.scheduler().wake()
    return jsonify(task_out.dump(task))


@bp.delete("/tasks/<task_id>")
def delete_task(task_id: str) -> tuple[str, int]:
    """Delete a finished task once its dependents completed (or with them)."""
    only_parameters("with_dependents")
    raw = request.args.get("with_dependents", "false")
    if raw not in ("true", "false"):
        raise InvalidParameter(
            "with_dependents must be true or false.", {"with_dependents": "Not true or false."}
        )
    deleted = actions.delete(parts.engine(), task_id, with_dependents=raw == "true")
    parts.metrics().task_action("deleted", len(deleted))
    log.info("task %s deleted by a user, %d task(s) in all", task_id, len(deleted))
    return "", 204


@bp.get("/tasks/<task_id>/status")
def get_status(task_id: str) -> Response:
    """Show a task's status, as the original API did."""
    only_parameters()
    return jsonify(status_out.dump(reads.get_status(parts.engine(), task_id)))


@bp.post("/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    """Cancel a QUEUED task, or ask a RUNNING one to stop; dependents follow."""
    only_parameters()
    no_body()
    task = actions.cancel(parts.engine(), task_id)
    parts.metrics().task_action("cancelled")
    if task["status"] == Status.RUNNING:
        parts.scheduler().cancel_running(task_id, task["attempts"])
    return jsonify(task_out.dump(task))


@bp.post("/tasks/<task_id>/retry")
def retry_task(task_id: str) -> Response:
    """Requeue a FAILED or CANCELLED task and the dependents it held back."""
    only_parameters()
    no_body(RETRY_KEEPS)
    task = actions.retry(parts.engine(), task_id)
    parts.metrics().task_action("retried")
    parts.scheduler().wake()
    return jsonify(task_out.dump(task))


@bp.get("/tasks/<task_id>/attempts")
def task_attempts(task_id: str) -> Response:
    """Show a task's attempts: how each ended, where it ran, its error and traceback."""
    only_parameters()
    return jsonify(attempts_out.dump(reads.get_attempts(parts.engine(), task_id)))


@bp.get("/tasks/<task_id>/blockers")
def task_blockers(task_id: str) -> Response:
    """Say why a task is not running, down to the root causes."""
    only_parameters()
    return jsonify(blockers(parts.engine(), task_id))


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """Serve the OpenAPI 3 document of every route, generated from the schemas."""
    only_parameters()
    return jsonify(spec_for(current_app))

"""HTTP routes of recurring schedules: create, read, list, edit (pause, resume), delete."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from app import parts
from app.http.inputs import json_body, only_parameters, page_limit
from app.limits import MAX_BATCH_BYTES
from app.services import schedules

bp = Blueprint("schedules", __name__, url_prefix="/api")


@bp.post("/schedules")
def create_schedule() -> tuple[Response, int]:
    """Create a schedule; 201 once committed, 200 for an identical replay."""
    only_parameters()
    spec = schedules.parse_new(json_body(MAX_BATCH_BYTES), parts.admission())
    created = schedules.create(parts.engine(), spec)
    response = jsonify(schedules.shape(created.schedule))
    if not created.created:
        return response, 200
    response.headers["Location"] = url_for("schedules.get_schedule", schedule_id=spec["id"])
    return response, 201


@bp.get("/schedules")
def list_schedules() -> Response:
    """List schedules by id, a page at a time, with a Link to the next page."""
    only_parameters("limit", "cursor")
    limit = page_limit(request.args.get("limit"))
    page = schedules.listing(parts.engine(), request.args.get("cursor"), limit)
    response = jsonify([schedules.shape(row) for row in page])
    if len(page) == limit:
        args = {**request.args.to_dict(), "cursor": page[-1]["id"]}
        link = url_for("schedules.list_schedules", _external=True, **args)
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


@bp.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str) -> Response:
    """Show one schedule with its next firings and its last one."""
    only_parameters()
    return jsonify(schedules.shape(schedules.get(parts.engine(), schedule_id)))


@bp.patch("/schedules/<schedule_id>")
def edit_schedule(schedule_id: str) -> Response:
    """Pause, resume or change a schedule; a new timing counts from now."""
    only_parameters()
    changes = schedules.parse_edit(json_body(MAX_BATCH_BYTES))
    edited = schedules.edit(parts.engine(), schedule_id, changes, parts.admission())
    return jsonify(schedules.shape(edited))


@bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str) -> tuple[str, int]:
    """Delete a schedule; the tasks it created stay."""
    only_parameters()
    schedules.delete(parts.engine(), schedule_id)
    return "", 204

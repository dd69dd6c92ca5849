"""HTTP routes of queues: list, show, set limits, pause, resume and delete."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import parts
from app.http.inputs import json_body, no_body, only_parameters
from app.limits import MAX_BODY_BYTES
from app.schemas import QueueOut, load_queue_limits
from app.services import queues

bp = Blueprint("queues", __name__, url_prefix="/api")

queue_out = QueueOut()


@bp.get("/queues")
def list_queues() -> Response:
    """List every queue by name, with its state, limits and tasks by status."""
    only_parameters()
    return jsonify(queue_out.dump(queues.listing(parts.engine()), many=True))


@bp.get("/queues/<queue_name>")
def get_queue(queue_name: str) -> Response:
    """Show one queue."""
    only_parameters()
    return jsonify(queue_out.dump(queues.get(parts.engine(), queue_name)))


@bp.put("/queues/<queue_name>")
def set_queue_limits(queue_name: str) -> Response:
    """Set a queue's concurrency and rate limits (null: none); adds the queue if new."""
    only_parameters()
    queues.check_name(queue_name)
    limits = load_queue_limits(json_body(MAX_BODY_BYTES))
    return _answer(queues.set_limits(parts.engine(), queue_name, limits))


@bp.post("/queues/<queue_name>/pause")
def pause_queue(queue_name: str) -> Response:
    """Stop a queue starting tasks (its running ones go on); adds the queue if new."""
    only_parameters()
    no_body()
    return _answer(queues.pause(parts.engine(), queue_name))


@bp.post("/queues/<queue_name>/resume")
def resume_queue(queue_name: str) -> Response:
    """Let a paused queue start tasks again."""
    only_parameters()
    no_body()
    return _answer(queues.resume(parts.engine(), queue_name))


@bp.delete("/queues/<queue_name>")
def delete_queue(queue_name: str) -> tuple[str, int]:
    """Delete a queue that holds no task and that no schedule names."""
    only_parameters()
    queues.delete(parts.engine(), queue_name)
    parts.metrics().queue_changed("deleted")
    return "", 204


def _answer(changed: queues.Changed) -> Response:
    if changed.change is not None:
        parts.metrics().queue_changed(changed.change)
        parts.scheduler().wake()
    return jsonify(queue_out.dump(changed.queue))

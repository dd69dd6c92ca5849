"""HTTP routes of a whole run: its summary, and cancel or retry all of it."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import parts
from app.http.inputs import no_body, only_parameters
from app.schemas import BatchSummaryOut
from app.services import batches

bp = Blueprint("batches", __name__, url_prefix="/api")

summary_out = BatchSummaryOut()


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """Show a batch: its tasks by status, its state, its first start and last finish."""
    only_parameters()
    return jsonify(summary_out.dump(batches.summary(parts.engine(), batch_id)))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """Cancel every QUEUED task of the batch and ask every RUNNING one to stop."""
    only_parameters()
    no_body()
    answer = batches.cancel(parts.engine(), batch_id)
    parts.metrics().task_action("batch_cancelled")
    parts.scheduler().honour_cancel_requests()
    return jsonify(summary_out.dump(answer))


@bp.post("/batches/<batch_id>/retry")
def retry_batch(batch_id: str) -> Response:
    """Retry every task of the batch that failed or was cancelled by a user."""
    only_parameters()
    no_body()
    answer = batches.retry(parts.engine(), batch_id)
    parts.metrics().task_action("batch_retried")
    parts.scheduler().wake()
    return jsonify(summary_out.dump(answer))

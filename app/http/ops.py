"""Operations routes outside the API: `/health` for load balancers, `/metrics` for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app import parts
from app.runtime import metrics
from app.services.health import report

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health() -> tuple[Response, int]:
    """Report the database and the scheduler; 503 when either cannot do its job."""
    enabled = current_app.config["SCHEDULER_ENABLED"]
    body, ok = report(parts.engine(), parts.scheduler() if enabled else None)
    return jsonify(body), 200 if ok else 503


@ops.get("/metrics")
def scrape() -> Response:
    """Expose the metrics in the Prometheus text format; open, like /health."""
    body = parts.metrics().exposition()
    return Response(body, 200, content_type=metrics.CONTENT_TYPE)

"""Operations routes outside the API: `/health` for load balancers, `/metrics` for Prometheus."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from app import parts
from app.runtime import metrics
from app.storage.health import database_health

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health() -> tuple[Response, int]:
    """Report the database and the scheduler; 503 when either cannot do its job."""
    engine = parts.engine()
    storage = database_health(engine)
    scheduler = parts.scheduler()
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
            "queues": list(scheduler.queues) or None,  # None: every queue
        }
        if problem is not None:
            state["problem"] = problem
        listening = scheduler.listening()
        if listening is not None:
            # Informational: without it, work from elsewhere waits for the next poll.
            state["listening"] = listening
    ok = healthy and storage["status"] == "ok"
    body = {"status": "ok" if ok else "unavailable", "database": storage, "scheduler": state}
    return jsonify(body), 200 if ok else 503


@ops.get("/metrics")
def scrape() -> Response:
    """Expose the metrics in the Prometheus text format; open, like /health."""
    body = parts.metrics().exposition()
    return Response(body, 200, content_type=metrics.CONTENT_TYPE)

"""Operations routes outside the API: `/health` for load balancers, `/metrics` for Prometheus."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app import parts
from app.runtime import metrics
from app.storage import database, dbfaults

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health() -> tuple[Response, int]:
    """Report the database and the scheduler; 503 when either cannot do its job."""
    engine = parts.engine()
    storage = _database_health(engine)
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
    body = parts.metrics().exposition()
    return Response(body, 200, content_type=metrics.CONTENT_TYPE)

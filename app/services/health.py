"""The health report: `GET /health` of the API, and of `flask scheduler run`'s endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.storage.health import database_health

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.runtime.scheduler import Scheduler


def report(engine: Engine, scheduler: Scheduler | None) -> tuple[dict[str, Any], bool]:
    """Report the database and the scheduler (None: disabled in this process); the report
    and whether both can do their job."""
    storage = database_health(engine)
    state: dict[str, Any]
    if scheduler is None:
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
    return {"status": "ok" if ok else "unavailable", "database": storage, "scheduler": state}, ok

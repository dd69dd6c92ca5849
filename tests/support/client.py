"""Driving an app through its test client: submit, read and wait; the one error shape."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import start_scheduler
from app.statuses import TERMINAL
from tests.support.apps import AppFactory
from tests.support.waiting import wait_for

HOUR_MS = "3600000"
MAX_ERROR_BYTES = 2048
# The original service's task fields, which come first and in this order.
ORIGINAL_FIELDS = [
    "id",
    "type",
    "duration_ms",
    "status",
    "dependencies",
    "created_at",
    "updated_at",
]


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """Check the one error shape (small, JSON, a sentence and a code) and return its body."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    assert len(response.get_data()) < MAX_ERROR_BYTES
    body = response.get_json()
    assert set(body) <= {"error", "code", "details"}
    assert isinstance(body["error"], str) and body["error"]
    assert body["code"] == code
    assert isinstance(body.get("details", {}), dict)
    return body


def running_app(make_app: AppFactory, handlers: dict[str, Any] | None = None, **env: str) -> Flask:
    """Build an app whose scheduler runs, with an hour-long polling interval and `handlers`."""
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL=HOUR_MS, **env)
    for name, handler in (handlers or {}).items():
        app.extensions["registry"].register(name, handler)
    start_scheduler(app)
    return app


def submit(client: FlaskClient, task_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    """Submit a 1 ms simulated task (fields overridable) and return it."""
    body = {"id": task_id, "type": "simulate", "duration_ms": 1, "dependencies": list(deps)}
    response = client.post("/api/tasks", json={**body, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def task(client: FlaskClient, task_id: str) -> dict[str, Any]:
    """Return a task as the API shows it."""
    return client.get(f"/api/tasks/{task_id}").get_json()


def wait_status(client: FlaskClient, task_id: str, *statuses: str) -> dict[str, Any]:
    """Wait until the task has one of `statuses` and return it."""

    def reached() -> dict[str, Any] | None:
        found = task(client, task_id)
        return found if found["status"] in statuses else None

    return wait_for(reached, what=f"{task_id} to be {' or '.join(statuses)}")


def wait_terminal(client: FlaskClient, *ids: str) -> dict[str, dict[str, Any]]:
    """Wait until every task is terminal and return them by id."""

    def done() -> dict[str, dict[str, Any]] | None:
        found = {i: task(client, i) for i in ids}
        return found if all(t["status"] in TERMINAL for t in found.values()) else None

    return wait_for(done, what=f"{len(ids)} tasks to finish")

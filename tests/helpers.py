"""Helpers for tests that drive a running scheduler over HTTP."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from app import start_scheduler
from app.handlers import HandlerFailed, TaskContext
from tests.conftest import AppFactory, wait_for

HOUR_MS = "3600000"
TERMINAL = {"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"}


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


class Gate:
    """A handler that blocks until released (ignoring cancel unless told to honour it)."""

    def __init__(self, honour_cancel: bool = False) -> None:
        self.release = threading.Event()
        self.honour_cancel = honour_cancel
        self.started: list[str] = []

    def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        self.started.append(ctx.id)
        ctx.progress(50)
        while not self.release.wait(0.01):
            if self.honour_cancel and ctx.cancel.is_set():
                raise HandlerFailed("stopped on request")
        return {"released": ctx.id}


class Switch:
    """A handler that fails until `works` is set."""

    def __init__(self) -> None:
        self.works = False
        self.calls = 0

    def __call__(self, ctx: TaskContext) -> str:
        self.calls += 1
        if not self.works:
            raise HandlerFailed("not yet")
        return "ok"

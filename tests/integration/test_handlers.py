"""The handler registry: modules from TASK_HANDLERS, strict types, the simulated default."""

from __future__ import annotations

import pytest

from app import create_app, start_scheduler
from app.config import ConfigError
from tests.support.apps import AppFactory
from tests.support.client import HOUR_MS, assert_error, submit, wait_status


def test_a_handler_module_runs_its_types_and_refuses_others(make_app: AppFactory) -> None:
    app = make_app(
        SCHEDULER_ENABLED="true",
        POLLING_INTERVAL=HOUR_MS,
        TASK_HANDLERS="tests.support.sample_handlers",
    )
    start_scheduler(app)
    client = app.test_client()
    submit(client, "d", type="double", payload={"n": 21})
    submit(client, "s", type="simulate")
    refused = client.post("/api/tasks", json={"type": "etl", "duration_ms": 1})
    body = assert_error(refused, 400, "unknown_task_type")
    assert body["details"]["accepted"] == ["double", "simulate", "stubborn"]
    assert wait_status(client, "d", "COMPLETED")["result"] == {"n": 42}
    assert wait_status(client, "s", "COMPLETED")["result"] is None


def test_a_handler_calling_sys_exit_fails_its_task_and_its_slot_runs_on(
    make_app: AppFactory,
) -> None:
    app = make_app(
        SCHEDULER_ENABLED="true",
        MAX_CONCURRENT_TASKS="1",
        TASK_HANDLERS="tests.support.exiting_handlers",
    )
    start_scheduler(app)
    client = app.test_client()
    submit(client, "quits", type="quits")
    failed = wait_status(client, "quits", "FAILED")
    assert failed["error"] == "The handler raised SystemExit: 1"
    (attempt,) = client.get("/api/tasks/quits/attempts").get_json()["attempts"]
    assert "sys.exit(1)" in attempt["traceback"]
    # The instance's one slot runs the next tasks: the exit did not end its thread.
    for task_id in ("after-1", "after-2"):
        submit(client, task_id, type="simulate")
        assert wait_status(client, task_id, "COMPLETED")["attempts"] == 1


def test_without_handlers_every_type_simulates(make_app: AppFactory) -> None:
    client = make_app().test_client()
    assert client.post("/api/tasks", json={"type": "anything", "duration_ms": 1}).status_code == 201


def test_strict_types_without_handlers_accepts_only_simulate(make_app: AppFactory) -> None:
    client = make_app(STRICT_TASK_TYPES="true").test_client()
    assert_error(
        client.post("/api/tasks", json={"type": "etl", "duration_ms": 1}), 400, "unknown_task_type"
    )
    batch = {
        "tasks": [
            {"id": "ok", "type": "simulate", "duration_ms": 1},
            {"id": "no", "type": "etl", "duration_ms": 1},
        ]
    }
    assert_error(client.post("/api/tasks/batch", json=batch), 400, "unknown_task_type")
    assert client.get("/api/tasks/ok").status_code == 404
    assert client.post("/api/tasks", json={"type": "simulate", "duration_ms": 1}).status_code == 201


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ("tests.no_such_module", "cannot be imported"),
        ("json", "has no register"),
    ],
)
def test_a_bad_handler_module_stops_start_up(sqlite_url: str, modules: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app({"DATABASE_URL": sqlite_url, "TASK_HANDLERS": modules})

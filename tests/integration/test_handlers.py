"""The handler registry: modules from TASK_HANDLERS, strict types, the simulated default."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_a_batch_refused_for_its_fields_names_its_unknown_types_too(
    make_app: AppFactory,
) -> None:
    """One answer shows every kind of mistake: not the fields first, the types next time."""
    client = make_app(STRICT_TASK_TYPES="true").test_client()
    batch = {
        "tasks": [
            {"id": "no-duration", "type": "simulate"},
            {"id": "typo", "type": "simulatte", "duration_ms": 1},
            {"id": "both", "type": "etl"},
            {"id": "fine", "type": "simulate", "duration_ms": 1},
        ]
    }
    body = assert_error(client.post("/api/tasks/batch", json=batch), 400, "validation_error")
    assert body["error"] == "3 of 4 tasks are invalid; nothing was stored."
    assert sorted(body["details"]) == [
        "tasks.0.duration_ms",
        "tasks.1.type",
        "tasks.2.duration_ms",
        "tasks.2.type",
    ]
    assert body["details"]["tasks.1.type"].startswith("No handler runs the task type 'simulatte'")
    assert client.get("/api/tasks/fine").status_code == 404


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


HANDLER_MODULES = {
    "broken_syntax": "def register(registry)\n    pass\n",
    "raises_at_import": "raise RuntimeError('no config file')\n",
    "imports_a_missing_one": "import no_such_dependency_here\n",
    "exits_at_import": "import sys\nsys.exit(3)\n",
    "raises_in_register": "def register(registry):\n    raise KeyError('API_KEY')\n",
    "first_sum": "def register(registry):\n    registry.register('sum', lambda ctx: 1)\n",
    "second_sum": "def register(registry):\n    registry.register('sum', lambda ctx: 2)\n",
    "own_simulate": "def register(registry):\n    registry.register('simulate', lambda ctx: 1)\n",
    "bad_type": "def register(registry):\n    registry.register('bad type!', lambda ctx: 1)\n",
    "not_callable": "def register(registry):\n    registry.register('x1', 42)\n",
}


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ("broken_syntax", "'broken_syntax' failed to import: SyntaxError: "),
        ("raises_at_import", "failed to import: RuntimeError: no config file"),
        (
            "imports_a_missing_one",
            "'imports_a_missing_one' failed to import: ModuleNotFoundError: No module named "
            "'no_such_dependency_here'",
        ),
        ("exits_at_import", "'exits_at_import' failed to import: SystemExit: 3"),
        ("raises_in_register", "register\\(registry\\) raised KeyError: 'API_KEY'"),
        ("first_sum,second_sum", "'first_sum' and 'second_sum' both register the task type 'sum'"),
        ("own_simulate", "the type 'simulate' is built in"),
        ("bad_type", "'bad type!' cannot name a task type"),
        ("not_callable", "the handler of 'x1' is 'int', not a function"),
    ],
)
def test_a_handler_module_that_cannot_serve_stops_start_up_saying_why(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    modules: str,
    message: str,
) -> None:
    """Before, the first three stopped with a traceback, and the rest started: the second
    `sum` silently replaced the first, `simulate` replaced the built-in sleep, the bad
    type could never be submitted and the number failed every task of its type."""
    for name, source in HANDLER_MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        create_app({"DATABASE_URL": sqlite_url, "TASK_HANDLERS": modules})
    for name in HANDLER_MODULES:
        sys.modules.pop(name, None)


def test_one_module_may_register_a_type_again(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "twice.py").write_text(
        "def register(registry):\n"
        "    registry.register('sum', lambda ctx: 1)\n"
        "    registry.register('sum', lambda ctx: 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = create_app({"DATABASE_URL": sqlite_url, "TASK_HANDLERS": "twice"})
    assert app.extensions["registry"].registered() == ["sum"]
    sys.modules.pop("twice", None)

"""POST /api/tasks/batch, black-box: whole graphs in one transaction, all or nothing."""

from __future__ import annotations

import itertools
import json
import re
import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from app import start_scheduler
from app.handlers import TaskContext
from app.storage import tasks as tasks_module
from app.storage.tables import deps, task_events, tasks
from tests.support.apps import AppFactory
from tests.support.bodies import INVALID_FIELDS
from tests.support.client import HOUR_MS, assert_error, wait_terminal
from tests.support.store import count, set_status

GENERATED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def t(task_id: str | None, *dependencies: str, **fields: Any) -> dict[str, Any]:
    """Return a valid task body depending on `dependencies`; no id when `task_id` is None."""
    body = {"type": "simulate", "duration_ms": 10, "dependencies": list(dependencies), **fields}
    return body if task_id is None else {"id": task_id, **body}


def post_batch(client: FlaskClient, items: Any, **extra: Any) -> TestResponse:
    return client.post("/api/tasks/batch", json={"tasks": items, **extra})


def created(client: FlaskClient, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Submit a batch; fail the test unless it was created."""
    response = post_batch(client, items)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def submit(client: FlaskClient, task_id: str, *dependencies: str) -> None:
    response = client.post("/api/tasks", json=t(task_id, *dependencies))
    assert response.status_code == 201, response.get_json()


def pending_deps(app: Flask) -> dict[str, int]:
    """Return each task's count of unfinished dependencies, as the scheduler sees it."""
    with app.extensions["store"].engine.connect() as conn:
        return dict(conn.execute(select(tasks.c.id, tasks.c.pending_deps)).all())


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["id"]: task for task in body["tasks"]}


# -- success -------------------------------------------------------------------------


def test_graph_in_reverse_order_is_stored_with_dependencies(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    items = [t("join", "left", "right"), t("right", "root"), t("left", "root"), t("root")]

    body = created(client, items)

    assert list(body) == ["batch_id", "tasks"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["batch_id"])
    assert [task["id"] for task in body["tasks"]] == ["join", "right", "left", "root"]
    assert [task["dependencies"] for task in body["tasks"]] == [
        ["left", "right"],
        ["root"],
        ["root"],
        [],
    ]
    assert {task["status"] for task in body["tasks"]} == {"QUEUED"}
    assert {task["batch_id"] for task in body["tasks"]} == {body["batch_id"]}
    for task in body["tasks"]:
        assert client.get(f"/api/tasks/{task['id']}").get_json() == task
    assert pending_deps(app) == {"join": 2, "right": 1, "left": 1, "root": 0}
    assert count(app, deps) == 4


def test_every_field_is_stored_and_answered_as_get_shows_it(client: FlaskClient) -> None:
    full = t(
        "full",
        "plain",
        payload={"n": [1, 2.5, None], "s": "é"},
        priority=-7,
        max_attempts=3,
        retry_backoff_ms=0,
        timeout_ms=5000,
        run_at="2030-01-02T03:04:05.678+01:00",
        trigger_rule="all_done",
    )
    nulls = t("nulls", payload=None, priority=None, timeout_ms=None, run_at=None)

    body = created(client, [full, t("plain"), nulls])

    task = by_id(body)["full"]
    assert task["payload"] == {"n": [1, 2.5, None], "s": "é"}
    assert (task["priority"], task["max_attempts"], task["retry_backoff_ms"]) == (-7, 3, 0)
    assert (task["timeout_ms"], task["trigger_rule"]) == (5000, "all_done")
    assert task["run_at"] == "2030-01-02T02:04:05.678Z"
    defaults = by_id(body)["nulls"]
    assert (defaults["payload"], defaults["priority"], defaults["timeout_ms"]) == ({}, 0, None)
    assert (defaults["run_at"], defaults["trigger_rule"]) == (None, "all_success")
    for task in body["tasks"]:
        assert client.get(f"/api/tasks/{task['id']}").get_json() == task


def test_tasks_without_an_id_get_generated_ones(client: FlaskClient) -> None:
    body = created(client, [t(None), t("named"), t(None, "named")])

    ids = [task["id"] for task in body["tasks"]]
    assert ids[1] == "named"
    assert len(set(ids)) == 3
    assert all(GENERATED_ID.match(i) for i in ids)
    assert body["tasks"][2]["dependencies"] == ["named"]
    assert client.get(f"/api/tasks/{ids[2]}").get_json()["batch_id"] == body["batch_id"]


def test_a_chain_of_10000_is_one_batch(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    ids = [f"c{i}" for i in range(10_000)]
    items = [t(ids[0])] + [t(current, previous) for previous, current in itertools.pairwise(ids)]

    body = created(client, items)

    assert [task["id"] for task in body["tasks"]] == ids
    last = client.get("/api/tasks/c9999").get_json()
    assert (last["dependencies"], last["status"]) == (["c9998"], "QUEUED")
    assert last["batch_id"] == body["batch_id"]
    waiting = pending_deps(app)
    assert waiting["c0"] == 0
    assert sum(waiting.values()) == 9_999
    assert count(app, deps) == 9_999


def test_dependencies_on_stored_tasks_propagate_at_once(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    for task_id, status in [("ok", "COMPLETED"), ("bad", "FAILED"), ("gone", "CANCELLED")]:
        submit(client, task_id)
        set_status(app, task_id, status)
    submit(client, "busy")
    # Dependents first, so the batch's own order is what puts them right.
    items = [
        t("both", "cancelled", "twice"),
        t("twice", "once"),
        t("after_cleanup", "cleanup"),
        t("cleanup", "twice", "busy", trigger_rule="all_done"),
        t("once", "bad"),
        t("cancelled", "gone"),
        t("fine", "ok"),
    ]

    body = created(client, items)

    states = {i: (task["status"], task["error_code"]) for i, task in by_id(body).items()}
    assert states == {
        "both": ("UPSTREAM_FAILED", "upstream_failed"),
        "twice": ("UPSTREAM_FAILED", "upstream_failed"),
        "after_cleanup": ("QUEUED", None),
        "cleanup": ("QUEUED", None),
        "once": ("UPSTREAM_FAILED", "upstream_failed"),
        "cancelled": ("CANCELLED", "upstream_cancelled"),
        "fine": ("QUEUED", None),
    }
    assert "once" in by_id(body)["twice"]["error"] and "bad" in by_id(body)["once"]["error"]
    assert by_id(body)["once"]["finished_at"] is not None
    waiting = pending_deps(app)
    assert (waiting["cleanup"], waiting["after_cleanup"], waiting["fine"]) == (1, 1, 0)
    for task in body["tasks"]:
        assert client.get(f"/api/tasks/{task['id']}").get_json() == task


def test_list_by_batch_id_shows_the_batch_newest_first(client: FlaskClient) -> None:
    first = created(client, [t("a1"), t("a2", "a1"), t("a3")])
    created(client, [t("b1", "a1")])
    submit(client, "single")

    response = client.get(f"/api/tasks?batch_id={first['batch_id']}")

    assert response.status_code == 200
    assert [task["id"] for task in response.get_json()] == ["a3", "a2", "a1"]
    assert client.get("/api/tasks?batch_id=nope").get_json() == []


# -- replays -------------------------------------------------------------------------


def test_identical_replay_returns_the_stored_batch(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    submit(client, "x")
    submit(client, "y")
    first = created(client, [t("a", "x", "y", payload={"k": 1}), t("b", "a")])

    again = post_batch(client, [t("a", "y", "x", payload={"k": 1}), t("b", "a", "a")])

    assert again.status_code == 200
    assert again.get_json() == first
    assert count(app) == 4


def test_a_replay_stores_nothing_and_records_no_event(make_app: AppFactory) -> None:
    """A new batch is inserted without looking for its ids first: a replay's insert fails
    on the first stored id, and that attempt leaves no row, edge or event behind."""
    app = make_app()
    client = app.test_client()
    submit(client, "x")
    first = created(client, [t("a"), t("b", "a", "x"), t("c", "b")])
    stored = (count(app), count(app, deps), count(app, task_events))

    again = post_batch(client, [t("a"), t("b", "a", "x"), t("c", "b")])
    # Stored ids after a new one: that one's row is written before the insert fails.
    longer = post_batch(client, [t("new"), t("a"), t("b", "a", "x"), t("c", "b")])

    assert again.status_code == 200
    assert again.get_json() == first
    assert assert_error(longer, 409, "duplicate_id")["details"]["ids"] == ["a", "b", "c"]
    assert (count(app), count(app, deps), count(app, task_events)) == stored
    assert client.get("/api/tasks/new").status_code == 404


@pytest.fixture
def inserts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry for each insert of task rows begun, whether or not it succeeded."""
    begun: list[str] = []
    insert_rows = tasks_module.insert_rows

    def counted(conn: Any, rows: Any) -> list[dict[str, Any]]:
        begun.append("insert")
        return insert_rows(conn, rows)

    monkeypatch.setattr(tasks_module, "insert_rows", counted)
    return begun


def test_a_batch_with_a_stored_id_is_answered_without_writing_its_rows(
    make_app: AppFactory, inserts: list[str]
) -> None:
    """A stored id, even one after many new ones, is found before the batch's rows are
    written: they would be written and rolled back, in the write lock every pass waits
    for."""
    app = make_app()
    client = app.test_client()
    first = created(client, [t("a"), t("b", "a")])
    submit(client, "old")
    inserts.clear()

    again = post_batch(client, [t("a"), t("b", "a")])
    late = post_batch(client, [*(t(f"n{k}") for k in range(50)), t("old")])

    assert again.status_code == 200
    assert again.get_json() == first
    assert assert_error(late, 409, "duplicate_id")["details"]["ids"] == ["old"]
    assert inserts == []
    assert count(app) == 3


def test_replay_with_a_changed_task_is_a_duplicate_id(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    first = created(client, [t("a"), t("b", "a"), t("c")])

    response = post_batch(client, [t("a"), t("b", "a", duration_ms=11), t("c", "a")])

    details = assert_error(response, 409, "duplicate_id")["details"]
    assert details["ids"] == ["b", "c"]
    assert details["fields"] == {"b": ["duration_ms"], "c": ["dependencies"]}
    assert client.get("/api/tasks/b").get_json() == by_id(first)["b"]
    assert count(app) == 3


@pytest.mark.parametrize(
    ("before", "batch", "existing"),
    [
        ([[t("a"), t("b", "a")]], [t("a"), t("b", "a"), t("c")], ["a", "b"]),
        ([[t("a"), t("b", "a")]], [t("new"), t("b", "a")], ["b"]),
        ([[t("a"), t("b", "a")]], [t("a")], ["a"]),
        ([[t("a")], [t("b")]], [t("a"), t("b")], ["a", "b"]),
    ],
    ids=["more-tasks", "some-new", "fewer-tasks", "two-batches"],
)
def test_a_batch_that_is_not_exactly_a_stored_one_is_a_duplicate_id(
    app: Flask,
    client: FlaskClient,
    before: list[list[dict[str, Any]]],
    batch: list[dict[str, Any]],
    existing: list[str],
) -> None:
    for items in before:
        created(client, items)
    stored = count(app)

    response = post_batch(client, batch)

    assert assert_error(response, 409, "duplicate_id")["details"]["ids"] == existing
    assert count(app) == stored


def test_tasks_submitted_one_by_one_are_not_a_batch_replay(app: Flask, client: FlaskClient) -> None:
    submit(client, "a")

    response = post_batch(client, [t("a")])

    assert assert_error(response, 409, "duplicate_id")["details"]["ids"] == ["a"]
    assert client.get("/api/tasks/a").get_json()["batch_id"] is None


# -- rejected batches: nothing is stored ---------------------------------------------


@pytest.mark.parametrize(
    ("items", "cycle"),
    [
        ([t("a", "c"), t("b", "a"), t("c", "b")], ["a", "c", "b", "a"]),
        ([t("a", "b"), t("b", "a")], ["a", "b", "a"]),
        (
            [t("free"), t("after", "loop2"), t("loop2", "loop1"), t("loop1", "loop2", "free")],
            ["loop2", "loop1", "loop2"],
        ),
    ],
    ids=["three", "two", "behind-valid-tasks"],
)
def test_a_cycle_is_named_in_order(
    app: Flask, client: FlaskClient, items: list[dict[str, Any]], cycle: list[str]
) -> None:
    response = post_batch(client, items)

    body = assert_error(response, 400, "dependency_cycle")
    assert body["details"]["cycle"] == cycle
    assert " -> ".join(cycle) in body["error"]
    assert count(app) == 0


def test_a_long_cycle_is_named_in_a_small_error(app: Flask, client: FlaskClient) -> None:
    ids = [f"c{i}" for i in range(1000)]
    items = [t(ids[i], ids[i - 1]) for i in range(1000)]  # c0 depends on c999

    response = post_batch(client, items)

    body = assert_error(response, 400, "dependency_cycle")
    assert "1000 tasks" in body["error"]
    assert body["details"]["cycle"][:3] == ["c0", "c999", "c998"]
    assert count(app) == 0


def test_an_id_twice_in_one_batch_is_named(app: Flask, client: FlaskClient) -> None:
    response = post_batch(client, [t("a"), t("b"), t("a", "b")])

    body = assert_error(response, 400, "validation_error")
    assert "'a'" in body["error"]
    assert list(body["details"]) == ["tasks.2.id"]
    assert "tasks.0" in body["details"]["tasks.2.id"]
    assert count(app) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in INVALID_FIELDS],
)
def test_an_invalid_task_is_named_by_its_index(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = post_batch(client, [t("first"), body, t("last")])

    details = assert_error(response, 400, "validation_error")["details"]
    assert f"tasks.1.{field}" in details
    assert all(key.startswith("tasks.1") for key in details)
    assert count(app) == 0


def test_every_invalid_task_is_reported(app: Flask, client: FlaskClient) -> None:
    items = [t("a", duration_ms=0), t("b"), "not a task", t("d", "d"), t("e", type=None)]

    response = post_batch(client, items)

    body = assert_error(response, 400, "validation_error")
    assert list(body["details"]) == [
        "tasks.0.duration_ms",
        "tasks.2",
        "tasks.3.dependencies",
        "tasks.4.type",
    ]
    assert body["error"].startswith("4 of 5 tasks")
    assert count(app) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "tasks"),
        ({"tasks": None}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"tasks": {"id": "a", "type": "t", "duration_ms": 1}}, "tasks"),
        ({"tasks": "a"}, "tasks"),
        ({"tasks": [t("a")], "batch_id": "mine"}, "batch_id"),
    ],
    ids=["missing", "null", "empty", "object", "string", "unknown-field"],
)
def test_a_batch_without_a_list_of_tasks_is_invalid(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/tasks/batch", json=body)

    assert field in assert_error(response, 400, "validation_error")["details"]
    assert count(app) == 0


def test_unknown_dependencies_are_listed(app: Flask, client: FlaskClient) -> None:
    submit(client, "known")

    response = post_batch(client, [t("a", "ghost", "b"), t("b", "known", "nope", "ghost")])

    body = assert_error(response, 400, "unknown_dependency")
    assert body["details"]["missing"] == ["ghost", "nope"]
    assert (count(app), count(app, deps)) == (1, 0)


def test_more_than_100000_tasks_is_too_large(app: Flask, client: FlaskClient) -> None:
    items = [{"type": "t", "duration_ms": 1}] * 100_001

    response = client.post(
        "/api/tasks/batch", data=json.dumps({"tasks": items}), content_type="application/json"
    )

    body = assert_error(response, 413, "body_too_large")
    assert "100,000" in body["error"]
    assert count(app) == 0


def test_query_parameters_are_refused(app: Flask, client: FlaskClient) -> None:
    response = client.post("/api/tasks/batch?dry_run=1", json={"tasks": [t("a")]})

    assert_error(response, 400, "invalid_parameter")
    assert count(app) == 0


# -- running ---------------------------------------------------------------------------


def test_the_scheduler_runs_a_batch_in_dependency_order(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL=HOUR_MS)
    started: list[str] = []
    lock = threading.Lock()

    def record(ctx: TaskContext) -> dict[str, str]:
        with lock:
            started.append(ctx.id)
        return {"ran": ctx.id}

    app.extensions["scheduler"].registry.register("record", record)
    start_scheduler(app)
    client = app.test_client()
    graph = {"report": ["left", "right"], "left": ["load"], "right": ["load"], "load": []}
    created(client, [t(i, *d, type="record") for i, d in graph.items()])

    done = wait_terminal(client, *graph)
    assert {task["status"] for task in done.values()} == {"COMPLETED"}
    assert done["report"]["result"] == {"ran": "report"}
    assert started[0] == "load" and started[-1] == "report"
    assert sorted(started[1:3]) == ["left", "right"]

"""What a submission must pass, through the API and the CLI alike: MAX_QUEUED_TASKS, types."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import event, func, select

from app.config import ConfigError, Settings
from app.storage import database
from app.storage.tables import tasks
from tests.support.apps import AppFactory
from tests.support.client import assert_error
from tests.support.store import set_status

THREADS = 8


def task(task_id: str, *deps: str) -> dict[str, Any]:
    return {"id": task_id, "type": "simulate", "duration_ms": 1, "dependencies": list(deps)}


def post(app: Flask, task_id: str, *deps: str) -> Any:
    return app.test_client().post("/api/tasks", json=task(task_id, *deps))


def post_batch(app: Flask, *ids: str) -> Any:
    return app.test_client().post("/api/tasks/batch", json={"tasks": [task(i) for i in ids]})


def cli_submit(app: Flask, body: dict[str, Any]) -> Result:
    return app.test_cli_runner().invoke(args=["tasks", "submit", "-"], input=json.dumps(body))


def stored(app: Flask, status: str | None = None) -> int:
    query = select(func.count()).select_from(tasks)
    if status is not None:
        query = query.where(tasks.c.status == status)
    with database.read(app.extensions["store"].engine) as conn:
        return int(conn.execute(query).scalar_one())


def assert_queue_full(response: Any, limit: int, queued: int, asked: int) -> dict[str, Any]:
    body = assert_error(response, 429, "queue_full")
    assert body["details"] == {"limit": limit, "queued": queued, "asked": asked}
    assert response.headers["Retry-After"].isdigit()
    assert int(response.headers["Retry-After"]) >= 1
    return body


# -- one task --------------------------------------------------------------------------


def test_a_submission_past_the_limit_is_refused_and_not_stored(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="2")
    assert post(app, "a").status_code == 201
    assert post(app, "b").status_code == 201

    body = assert_queue_full(post(app, "c"), limit=2, queued=2, asked=1)

    assert "Retry after" in body["error"]
    assert app.test_client().get("/api/tasks/c").status_code == 404
    assert stored(app) == 2


def test_an_identical_replay_is_answered_even_when_the_queue_is_full(
    make_app: AppFactory,
) -> None:
    app = make_app(MAX_QUEUED_TASKS="1")
    first = post(app, "a")
    assert first.status_code == 201

    again = post(app, "a")

    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    assert_queue_full(post(app, "b"), limit=1, queued=1, asked=1)


def test_room_comes_back_as_tasks_leave_the_queue(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="2")
    assert post(app, "a").status_code == 201
    assert post(app, "b").status_code == 201
    assert_queue_full(post(app, "c"), limit=2, queued=2, asked=1)

    assert app.test_client().post("/api/tasks/b/cancel").status_code == 200
    assert post(app, "c").status_code == 201
    set_status(app, "a", "COMPLETED")
    assert post(app, "d").status_code == 201
    assert stored(app, "QUEUED") == 2


def test_a_task_born_terminal_adds_nothing_to_the_queue(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="1")
    assert post(app, "a").status_code == 201
    set_status(app, "a", "FAILED")
    assert post(app, "b").status_code == 201  # the queue is full again

    born = post(app, "c", "a")

    assert born.status_code == 201
    assert born.get_json()["status"] == "UPSTREAM_FAILED"


def test_bad_input_is_refused_as_such_even_when_the_queue_is_full(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="1")
    assert post(app, "a").status_code == 201
    assert_error(post(app, "b", "ghost"), 400, "unknown_dependency")
    client = app.test_client()
    assert_error(client.post("/api/tasks", json={"type": "simulate"}), 400, "validation_error")


def test_retry_after_follows_the_polling_interval(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="1", POLLING_INTERVAL="2500")
    assert post(app, "a").status_code == 201
    assert post(app, "b").headers["Retry-After"] == "3"


# -- batches ---------------------------------------------------------------------------


def test_a_batch_that_would_overshoot_is_refused_whole(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="5")
    assert post_batch(app, "a", "b", "c").status_code == 201

    assert_queue_full(post_batch(app, "d", "e", "f"), limit=5, queued=3, asked=3)

    assert stored(app) == 3
    for task_id in "def":
        assert app.test_client().get(f"/api/tasks/{task_id}").status_code == 404
    assert post_batch(app, "d", "e").status_code == 201
    assert stored(app, "QUEUED") == 5


def test_a_batch_replay_is_answered_even_when_the_queue_is_full(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="2")
    first = post_batch(app, "a", "b")
    assert first.status_code == 201

    again = post_batch(app, "a", "b")

    assert again.status_code == 200
    assert again.get_json()["batch_id"] == first.get_json()["batch_id"]


def test_a_batch_larger_than_the_limit_is_told_to_split(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="2")

    body = assert_queue_full(post_batch(app, "a", "b", "c"), limit=2, queued=0, asked=3)

    assert "split" in body["error"]
    assert stored(app) == 0


# -- the CLI ---------------------------------------------------------------------------


def test_the_cli_is_refused_with_the_api_s_message(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="1")
    assert cli_submit(app, task("a")).exit_code == 0
    answer = post(app, "b").get_json()

    single = cli_submit(app, task("b"))
    graph = cli_submit(app, {"tasks": [task("c"), task("d")]})

    assert single.exit_code == 1 and single.stdout == ""
    assert single.stderr.splitlines()[0] == f"error: queue_full: {answer['error']}"
    assert "  limit: 1" in single.stderr
    assert graph.exit_code == 1
    assert graph.stderr.startswith("error: queue_full: ")
    assert stored(app) == 1


def test_the_cli_refuses_unknown_types_as_the_api_does(make_app: AppFactory) -> None:
    app = make_app(STRICT_TASK_TYPES="true")
    etl = {"id": "e", "type": "etl", "duration_ms": 1}
    answer = app.test_client().post("/api/tasks", json=etl).get_json()

    single = cli_submit(app, etl)
    graph = cli_submit(app, {"tasks": [task("ok"), etl]})

    assert single.exit_code == 1
    assert single.stderr.splitlines()[0] == f"error: unknown_task_type: {answer['error']}"
    assert graph.exit_code == 1
    assert graph.stderr.startswith("error: unknown_task_type: ")
    assert stored(app) == 0


# -- no limit, no cost -----------------------------------------------------------------


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    engine = app.extensions["store"].engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lower())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_without_a_limit_the_submit_path_runs_no_extra_query(make_app: AppFactory) -> None:
    unlimited, limited = make_app(), make_app(MAX_QUEUED_TASKS="10")
    with statements(unlimited) as plain, statements(limited) as checked:
        for n, app in enumerate((unlimited, limited)):
            assert post(app, f"a{n}").status_code == 201
            assert post_batch(app, f"b{n}", f"c{n}").status_code == 201

    counting = ("count(", "task_counts", "advisory")
    assert not [s for s in plain if any(word in s for word in counting)]
    assert len([s for s in checked if "from task_counts" in s]) == 2


def test_max_queued_tasks_is_validated() -> None:
    assert Settings.from_env({}).max_queued_tasks is None
    assert Settings.from_env({"MAX_QUEUED_TASKS": " 500 "}).max_queued_tasks == 500
    for bad in ("0", "-1", "ten", "1e3"):
        with pytest.raises(ConfigError, match="MAX_QUEUED_TASKS must be"):
            Settings.from_env({"MAX_QUEUED_TASKS": bad})


# -- concurrent submitters -------------------------------------------------------------


def test_concurrent_submitters_never_overshoot(make_app: AppFactory) -> None:
    limit = 10
    # Two apps: two engines, so nothing but the database serialises them.
    apps = [make_app(MAX_QUEUED_TASKS=str(limit)) for _ in range(2)]
    start = threading.Barrier(THREADS)
    answers: list[tuple[int, int]] = []
    failures: list[BaseException] = []

    def submitter(n: int) -> None:
        client = apps[n % 2].test_client()
        try:
            start.wait(timeout=30)
            # Batches then singles: each thread ends with singles, so the queue ends full.
            for step in range(6):
                ids = [f"t{n}-{step}-{k}" for k in range(3 if step < 2 else 1)]
                if len(ids) == 1:
                    response = client.post("/api/tasks", json=task(ids[0]))
                else:
                    response = client.post(
                        "/api/tasks/batch", json={"tasks": [task(i) for i in ids]}
                    )
                answers.append((response.status_code, len(ids)))
        except BaseException as exc:  # reported below, with the thread's failure
            failures.append(exc)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    assert {status for status, _ in answers} <= {201, 429}
    accepted = sum(size for status, size in answers if status == 201)
    assert stored(apps[0], "QUEUED") <= limit
    # Some single was refused, so the queue was full then, and it never shrinks here.
    assert stored(apps[0], "QUEUED") == accepted == limit

"""Acting on tasks and runs, on both backends: change a QUEUED task, delete a finished one
under the retention rule, and a batch's summary, cancel and retry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from app.statuses import Status
from app.storage.database import utcnow
from app.storage.store import Outcome, Store
from tests.support.apps import AppFactory
from tests.support.store import register, row, set_fields


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def _task(task_id: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "t", "duration_ms": 1, "dependencies": list(deps), **fields}


def _post(client: FlaskClient, *tasks: dict[str, Any]) -> str:
    answer = client.post("/api/tasks/batch", json={"tasks": list(tasks)})
    assert answer.status_code == 201, answer.get_json()
    return str(answer.get_json()["batch_id"])


def _claim(store: Store, limit: int = 100) -> list[Any]:
    register(store, "w1")
    return store.claim("w1", limit)


# -- PATCH /api/tasks/<id> -------------------------------------------------------------


def test_a_queued_task_changes_priority_queue_and_run_at(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    _post(client, _task("a"), _task("b"))
    later = (utcnow() + timedelta(hours=1)).isoformat() + "Z"
    changed = client.patch("/api/tasks/b", json={"priority": 7, "queue": "fast"})
    assert changed.status_code == 200, changed.get_json()
    assert (changed.get_json()["priority"], changed.get_json()["queue"]) == (7, "fast")
    assert [c.id for c in _claim(store, 1)] == ["b"]  # first, by its new priority
    held = client.patch("/api/tasks/a", json={"run_at": later}).get_json()
    assert held["run_at"].startswith(later[:19])
    assert _claim(store) == []  # held back until then
    back = client.patch("/api/tasks/a", json={"run_at": None}).get_json()
    assert back["run_at"] is None
    assert [c.id for c in _claim(store)] == ["a"]
    listed = {q["name"]: q for q in client.get("/api/queues").get_json()}
    assert listed["fast"]["counts"]["RUNNING"] == 1


def test_a_retry_backoff_still_holds_after_run_at_changes(app: Flask) -> None:
    store: Store = app.extensions["store"]
    client = app.test_client()
    _post(client, _task("r", max_attempts=2, retry_backoff_ms=3_600_000))
    (claim,) = _claim(store)
    store.finish(claim, Outcome(Status.FAILED, error="boom", error_code="handler_error"))
    backoff = row(store, "r").not_before
    assert backoff is not None
    client.patch("/api/tasks/r", json={"run_at": "2000-01-01T00:00:00Z"})
    assert row(store, "r").not_before == backoff
    assert _claim(store) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "_schema"),
        ({"status": "COMPLETED"}, "status"),
        ({"priority": 5000}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"queue": "-bad"}, "queue"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"dependencies": []}, "dependencies"),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(
    app: Flask, body: dict[str, Any], field: str
) -> None:
    client = app.test_client()
    _post(client, _task("a"))
    before = client.get("/api/tasks/a").get_json()
    answer = client.patch("/api/tasks/a", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["code"] == "validation_error"
    assert field in answer.get_json()["details"]
    assert client.get("/api/tasks/a").get_json() == before


def test_only_a_queued_task_changes(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    _post(client, _task("a"))
    _claim(store)
    answer = client.patch("/api/tasks/a", json={"priority": 1})
    assert answer.status_code == 409 and answer.get_json()["code"] == "invalid_state"
    assert client.patch("/api/tasks/ghost", json={"priority": 1}).status_code == 404


# -- DELETE /api/tasks/<id> ------------------------------------------------------------


def test_a_finished_task_goes_once_its_dependents_completed(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    _post(client, _task("a"), _task("b", "a"))
    assert client.delete("/api/tasks/a").get_json()["code"] == "invalid_state"  # QUEUED
    set_fields(store, "a", status="COMPLETED")
    refused = client.delete("/api/tasks/a")
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["details"]["blocking"] == ["b"]
    set_fields(store, "b", status="COMPLETED")
    assert client.delete("/api/tasks/a").status_code == 204
    assert client.get("/api/tasks/a").status_code == 404
    assert client.get("/api/tasks/b").get_json()["dependencies"] == []
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'taskscheduler_task_actions_total{action="deleted"} 1.0' in metrics


def test_a_failed_chain_goes_together_with_its_dependents(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    _post(client, _task("a"), _task("b", "a"), _task("c", "b"), _task("d", "a"))
    set_fields(store, "a", status="FAILED")
    for task_id in ("b", "c"):
        set_fields(store, task_id, status="UPSTREAM_FAILED")
    # d is still QUEUED (all_success behind a failure would not be, but it blocks here).
    blocked = client.delete("/api/tasks/a?with_dependents=true")
    assert blocked.status_code == 409
    assert blocked.get_json()["details"]["blocking"] == ["d"]
    set_fields(store, "d", status="COMPLETED")
    assert client.delete("/api/tasks/a?with_dependents=true").status_code == 204
    assert client.get("/api/tasks").get_json() == []  # everything below it went too
    bad = client.delete("/api/tasks/d?with_dependents=yes")
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_parameter"


# -- batches ---------------------------------------------------------------------------


def test_a_batch_shows_its_counts_state_and_times(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    batch_id = _post(client, _task("a"), _task("b", "a"))
    shown = client.get(f"/api/batches/{batch_id}").get_json()
    assert shown["state"] == "queued" and shown["total"] == 2
    assert shown["counts"]["QUEUED"] == 2 and shown["first_started_at"] is None
    (claim,) = _claim(store)
    assert client.get(f"/api/batches/{batch_id}").get_json()["state"] == "running"
    store.finish(claim, Outcome(Status.COMPLETED))
    (claim,) = _claim(store)
    store.finish(claim, Outcome(Status.COMPLETED))
    done = client.get(f"/api/batches/{batch_id}").get_json()
    assert done["state"] == "completed" and done["counts"]["COMPLETED"] == 2
    assert done["first_started_at"] and done["last_finished_at"]
    assert "changed" not in done
    assert client.get("/api/batches/ghost").status_code == 404
    assert client.get("/api/batches/-bad").get_json()["code"] == "invalid_parameter"


def test_a_batch_cancel_ends_its_queued_tasks_and_stops_its_running_ones(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    batch_id = _post(client, _task("a"), _task("b", "a"), _task("c"))
    _post(client, _task("outside", "b"))
    (first, _) = sorted(_claim(store, 2), key=lambda c: c.id)
    assert first.id == "a"
    answer = client.post(f"/api/batches/{batch_id}/cancel")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["changed"] == {"cancelled": 1, "stopping": 2}
    assert row(store, "b").status == "CANCELLED"
    assert row(store, "a").cancel_requested is True
    assert row(store, "outside").status == "CANCELLED"  # its dependency was cancelled
    assert row(store, "outside").error_code == "upstream_cancelled"
    again = client.post(f"/api/batches/{batch_id}/cancel")
    assert again.status_code == 200  # the running ones are still unfinished
    for claim in store.owned("w1"):
        store.finish(claim, Outcome(Status.CANCELLED, error="stopped", error_code="cancelled"))
    nothing = client.post(f"/api/batches/{batch_id}/cancel")
    assert nothing.status_code == 409 and nothing.get_json()["details"]["state"] == "cancelled"


def test_a_cancel_says_whether_the_task_had_run_before(app: Flask) -> None:
    """A task waiting out a retry's backoff, or put back by a stop, has started: its
    cancel does not say otherwise."""
    client = app.test_client()
    store: Store = app.extensions["store"]
    first = {"priority": 10}
    retried = {**first, "max_attempts": 3, "retry_backoff_ms": 60_000}
    _post(client, _task("tried", **retried), _task("put-back", **first), _task("fresh"))
    batch_id = _post(client, _task("tried-too", **retried), _task("fresh-too"))
    failed = Outcome(Status.FAILED, error="boom", error_code="handler_error")
    claims = _claim(store, 3)
    assert sorted(c.id for c in claims) == ["put-back", "tried", "tried-too"]
    for claim in claims:
        if claim.id == "put-back":
            store.requeue(claim)  # as a stop puts it back
        else:
            assert store.finish(claim, failed)  # back in the queue after its backoff
    assert row(store, "tried").status == "QUEUED" and row(store, "tried").attempts == 1
    for task_id in ("tried", "put-back", "fresh"):
        assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    assert client.post(f"/api/batches/{batch_id}/cancel").status_code == 200
    ran, never = "while it waited to run again.", "before it started."
    assert {
        i: row(store, i).error for i in ("tried", "put-back", "fresh", "tried-too", "fresh-too")
    } == {
        "tried": f"Cancelled by a user {ran}",
        "put-back": f"Cancelled by a user {ran}",
        "fresh": f"Cancelled by a user {never}",
        "tried-too": f"Cancelled by a user {ran}",
        "fresh-too": f"Cancelled by a user {never}",
    }


def test_a_batch_retry_starts_again_from_what_failed(app: Flask) -> None:
    client = app.test_client()
    store: Store = app.extensions["store"]
    batch_id = _post(client, _task("a"), _task("b", "a"), _task("c"), _task("d"))
    claims = {c.id: c for c in _claim(store)}
    failed = Outcome(Status.FAILED, error="boom", error_code="handler_error")
    store.cycle("w1", [(claims["a"], failed), (claims["c"], failed)], 0)
    store.finish(claims["d"], Outcome(Status.COMPLETED))
    assert row(store, "b").status == "UPSTREAM_FAILED"
    assert client.get(f"/api/batches/{batch_id}").get_json()["state"] == "failed"
    answer = client.post(f"/api/batches/{batch_id}/retry")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["changed"] == {"retried": 2}
    statuses = {i: row(store, i).status for i in "abcd"}
    assert statuses == {"a": "QUEUED", "b": "QUEUED", "c": "QUEUED", "d": "COMPLETED"}
    again = client.post(f"/api/batches/{batch_id}/retry")
    assert again.status_code == 409 and again.get_json()["code"] == "invalid_state"


def test_a_batch_retry_of_one_task_leaves_it_when_a_dependency_elsewhere_did_not_complete(
    app: Flask,
) -> None:
    """The simulation's seed 20041: a batch whose only task to retry waits for a task
    outside it that was cancelled. Requeued, it would wait for that task forever; its own
    retry refuses, and so must its batch's."""
    client = app.test_client()
    store: Store = app.extensions["store"]
    _post(client, _task("first"))
    batch_id = _post(client, _task("second", "first"))
    assert client.post("/api/tasks/second/cancel").status_code == 200
    assert client.post("/api/tasks/first/cancel").status_code == 200

    answer = client.post(f"/api/batches/{batch_id}/retry")
    assert answer.status_code == 409 and answer.get_json()["code"] == "invalid_state"
    assert row(store, "second").status == "CANCELLED"
    single = client.post("/api/tasks/second/retry").get_json()
    assert single["code"] == "invalid_state" and single["details"]["root"] == "first"


def test_a_batch_retry_costs_the_same_statements_whatever_its_size(app: Flask) -> None:
    """Retrying 5,000 cancelled tasks one root at a time held the user actions' lock for
    18 s: the whole batch comes back in one walk and one requeue."""
    client = app.test_client()
    store: Store = app.extensions["store"]
    counted: list[int] = []

    def statements_of_retry(size: int, prefix: str) -> int:
        tasks = [_task(f"{prefix}{k}", run_at="2036-01-01T00:00:00Z") for k in range(size)]
        batch_id = _post(client, *tasks)
        assert client.post(f"/api/batches/{batch_id}/cancel").status_code == 200
        sent: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            sent.append(statement)

        event.listen(store.engine, "before_cursor_execute", record)
        try:
            answer = client.post(f"/api/batches/{batch_id}/retry")
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        assert answer.get_json()["changed"] == {"retried": size}
        return len(sent)

    counted = [statements_of_retry(5, "small"), statements_of_retry(300, "large")]
    assert counted[1] == counted[0], counted


@pytest.mark.parametrize(
    "path",
    ["/api/tasks/x/cancel", "/api/tasks/x/retry", "/api/batches/B/cancel", "/api/batches/B/retry"],
)
def test_an_action_with_fields_in_its_body_is_refused_and_does_nothing(
    app: Flask, path: str
) -> None:
    """A retry with {"max_attempts": 3} answered 200 and kept the task's max_attempts: the
    fields were ignored without a word."""
    client = app.test_client()
    batch_id = _post(client, _task("x", max_attempts=1))
    path = path.replace("/B/", f"/{batch_id}/")
    if path.endswith("/retry"):
        assert client.post(path.replace("/retry", "/cancel")).status_code == 200
    before = client.get("/api/tasks/x").get_json()
    refused = client.post(path, json={"max_attempts": 3})
    assert refused.status_code == 400, refused.get_json()
    assert refused.get_json()["code"] == "invalid_parameter"
    assert refused.get_json()["error"].startswith("This route takes no body")
    if path == "/api/tasks/x/retry":
        assert "keeps the task's fields" in refused.get_json()["error"]
    assert client.get("/api/tasks/x").get_json() == before  # nothing changed
    assert client.post(path, json={}).status_code == 200  # an empty object is no field
    if path.endswith("/retry"):  # and however it is spaced
        assert client.post(path.replace("/retry", "/cancel")).status_code == 200
        spaced = client.post(path, data="{ \n }", content_type="application/json")
        assert spaced.status_code == 200, spaced.get_json()

"""Cancel and retry over HTTP, with their cascades, on both backends."""

from __future__ import annotations

from flask.testing import FlaskClient

from app.statuses import Status
from app.storage.store import Outcome
from tests.support.apps import AppFactory
from tests.support.client import assert_error, running_app, submit, task, wait_status, wait_terminal
from tests.support.handlers import Gate, Switch
from tests.support.store import claim_all
from tests.support.waiting import wait_for


def post(client: FlaskClient, task_id: str, action: str) -> tuple[int, dict]:
    response = client.post(f"/api/tasks/{task_id}/{action}")
    return response.status_code, response.get_json()


def test_cancelling_a_queued_task_cascades_at_once(make_app: AppFactory) -> None:
    client = make_app().test_client()  # no scheduler: everything stays QUEUED
    submit(client, "a")
    submit(client, "b", "a")
    submit(client, "c", "b")
    submit(client, "cleanup", "a", trigger_rule="all_done")
    status, body = post(client, "a", "cancel")
    assert (status, body["status"], body["error_code"]) == (200, "CANCELLED", "cancelled")
    for task_id in ("b", "c"):
        assert (task(client, task_id)["status"], task(client, task_id)["error_code"]) == (
            "CANCELLED",
            "upstream_cancelled",
        )
    assert task(client, "cleanup")["status"] == "QUEUED"
    assert client.get("/api/tasks/cleanup/blockers").get_json()["blockers"][0]["kind"] in (
        "no_slot",
        "shutdown",
    )


def test_cancelling_a_running_task_stops_its_handler(make_app: AppFactory) -> None:
    gate = Gate(honour_cancel=True)
    client = running_app(make_app, {"gate": gate}).test_client()
    submit(client, "long", type="gate")
    submit(client, "after", "long")
    submit(client, "cleanup", "long", trigger_rule="all_done")
    wait_for(lambda: gate.started == ["long"], what="the task to start")
    status, body = post(client, "long", "cancel")
    assert (status, body["status"]) == (200, "RUNNING")
    assert task(client, "after")["status"] == "CANCELLED"  # at once, in the same request
    done = wait_terminal(client, "long", "cleanup")
    assert (done["long"]["status"], done["long"]["error_code"]) == ("CANCELLED", "cancelled")
    assert done["cleanup"]["status"] == "COMPLETED"


def test_a_cancel_made_through_another_instance_reaches_the_runner(make_app: AppFactory) -> None:
    gate = Gate(honour_cancel=True)
    runner = running_app(make_app, {"gate": gate}).test_client()
    api_only = make_app().test_client()  # same database, no scheduler in this app
    submit(runner, "long", type="gate")
    wait_for(lambda: gate.started == ["long"], what="the task to start")
    assert post(api_only, "long", "cancel")[0] == 200
    assert wait_status(runner, "long", "CANCELLED")["error_code"] == "cancelled"


def test_a_handler_that_finishes_first_keeps_its_outcome(make_app: AppFactory) -> None:
    gate = Gate()  # ignores the cancel event
    client = running_app(make_app, {"gate": gate}).test_client()
    submit(client, "quick", type="gate")
    wait_for(lambda: gate.started == ["quick"], what="the task to start")
    assert post(client, "quick", "cancel")[0] == 200
    gate.release.set()
    assert wait_status(client, "quick", "COMPLETED", "CANCELLED")["status"] == "COMPLETED"


def test_cancel_and_retry_refuse_states_where_they_make_no_sense(make_app: AppFactory) -> None:
    client = running_app(make_app).test_client()
    submit(client, "done")
    wait_status(client, "done", "COMPLETED")
    assert_error(client.post("/api/tasks/done/cancel"), 409, "invalid_state")
    assert_error(client.post("/api/tasks/done/retry"), 409, "invalid_state")
    assert_error(client.post("/api/tasks/nope/cancel"), 404, "not_found")
    assert_error(client.post("/api/tasks/nope/retry"), 404, "not_found")
    assert_error(client.get("/api/tasks/done/cancel"), 405, "method_not_allowed")


def test_retry_brings_back_the_dependents_that_failed_because_of_it(
    make_app: AppFactory,
) -> None:
    switch = Switch()
    client = running_app(make_app, {"switch": switch}).test_client()
    submit(client, "root", type="switch", max_attempts=2, retry_backoff_ms=0)
    submit(client, "child", "root")
    submit(client, "grandchild", "child")
    submit(client, "cleanup", "root", trigger_rule="all_done")
    first = wait_terminal(client, "root", "child", "grandchild", "cleanup")
    assert (first["root"]["status"], first["root"]["attempts"]) == ("FAILED", 2)
    assert first["grandchild"]["status"] == "UPSTREAM_FAILED"
    assert first["cleanup"]["status"] == "COMPLETED"

    refused = assert_error(client.post("/api/tasks/grandchild/retry"), 409, "invalid_state")
    assert refused["details"]["root"] == "root"

    switch.works = True
    status, body = post(client, "root", "retry")
    assert status == 200 and body["status"] in ("QUEUED", "RUNNING", "COMPLETED")
    done = wait_terminal(client, "root", "child", "grandchild")
    assert {t["status"] for t in done.values()} == {"COMPLETED"}
    assert done["root"]["attempts"] == 3  # attempts never go back; the budget did
    assert task(client, "cleanup")["attempts"] == 1  # it had run; it does not run again


def test_retry_leaves_a_dependent_that_another_failure_still_blocks(
    make_app: AppFactory,
) -> None:
    client = make_app().test_client()
    for failed in ("x", "y"):
        submit(client, failed)
    submit(client, "both", "x", "y")
    store = client.application.extensions["store"]

    for claim in claim_all(store, "w", 10):
        store.finish(claim, Outcome(Status.FAILED, error="boom"))
    assert task(client, "both")["status"] == "UPSTREAM_FAILED"
    assert post(client, "x", "retry")[1]["status"] == "QUEUED"
    assert task(client, "both")["status"] == "UPSTREAM_FAILED"  # y still failed
    assert post(client, "y", "retry")[1]["status"] == "QUEUED"
    both = task(client, "both")
    assert both["status"] == "QUEUED"
    blockers = client.get("/api/tasks/both/blockers").get_json()
    assert [b["task_id"] for b in blockers["blockers"]] == ["x", "y"]


def test_a_cancelled_task_can_be_retried_with_its_dependents(make_app: AppFactory) -> None:
    client = running_app(make_app, MAX_CONCURRENT_TASKS="1").test_client()
    submit(client, "first", duration_ms=60_000)
    submit(client, "second")
    submit(client, "third", "second")
    wait_status(client, "first", "RUNNING")
    post(client, "second", "cancel")
    assert task(client, "third")["status"] == "CANCELLED"
    post(client, "first", "cancel")
    wait_status(client, "first", "CANCELLED")
    status, body = post(client, "second", "retry")
    assert (status, body["status"] in ("QUEUED", "RUNNING", "COMPLETED")) == (200, True)
    done = wait_terminal(client, "second", "third")
    assert {t["status"] for t in done.values()} == {"COMPLETED"}

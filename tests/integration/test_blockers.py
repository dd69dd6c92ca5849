"""`GET /api/tasks/<id>/blockers`: the exact reason a task is not running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.apps import AppFactory
from tests.support.client import assert_error, running_app, submit, wait_terminal
from tests.support.handlers import Gate
from tests.support.waiting import wait_for


def test_three_levels_behind_a_failed_root(make_app: AppFactory) -> None:
    client = running_app(make_app).test_client()
    submit(client, "root", payload={"fail": True})
    submit(client, "one", "root")
    submit(client, "two", "one")
    submit(client, "three", "two")
    wait_terminal(client, "root", "one", "two", "three")
    answer = client.get("/api/tasks/three/blockers").get_json()
    assert answer["status"] == "UPSTREAM_FAILED"
    assert answer["blockers"] == [
        {"kind": "dependency", "task_id": "two", "status": "UPSTREAM_FAILED"}
    ]
    assert answer["root_causes"] == ["root"]


def test_a_queued_task_names_what_it_waits_for_down_to_the_root(make_app: AppFactory) -> None:
    gate = Gate()
    client = running_app(make_app, {"gate": gate}).test_client()
    submit(client, "running", type="gate")
    submit(client, "done")
    submit(client, "a", "running", "done")
    submit(client, "b", "a")
    wait_for(lambda: gate.started == ["running"], what="the root to start")
    wait_terminal(client, "done")
    answer = client.get("/api/tasks/b/blockers").get_json()
    assert answer == {
        "id": "b",
        "status": "QUEUED",
        "blockers": [{"kind": "dependency", "task_id": "a", "status": "QUEUED"}],
        "root_causes": ["running"],
        "root_causes_truncated": False,
    }
    gate.release.set()
    wait_terminal(client, "b")
    assert client.get("/api/tasks/b/blockers").get_json()["blockers"] == []


def test_run_at_backoff_and_no_slot(make_app: AppFactory) -> None:
    client = make_app().test_client()  # no scheduler instance is taking work
    later = datetime.now(UTC) + timedelta(hours=1)
    submit(client, "later", run_at=later.isoformat())
    submit(client, "now")
    held = client.get("/api/tasks/later/blockers").get_json()["blockers"]
    assert held[0]["kind"] == "run_at"
    assert held[0]["until"].startswith(later.strftime("%Y-%m-%dT%H:%M"))
    assert client.get("/api/tasks/now/blockers").get_json()["blockers"] == [{"kind": "shutdown"}]

    gate = Gate()
    busy = running_app(make_app, {"gate": gate}, MAX_CONCURRENT_TASKS="1").test_client()
    submit(busy, "hog", type="gate")
    wait_for(lambda: gate.started == ["hog"], what="the slot to be taken")
    submit(busy, "waiting")
    assert busy.get("/api/tasks/waiting/blockers").get_json()["blockers"] == [{"kind": "no_slot"}]
    gate.release.set()


def test_blockers_of_an_unknown_task(make_app: AppFactory) -> None:
    assert_error(make_app().test_client().get("/api/tasks/ghost/blockers"), 404, "not_found")


def test_root_causes_stop_at_a_task_that_failed_on_its_own(make_app: AppFactory) -> None:
    client = running_app(make_app).test_client()
    submit(client, "extract", payload={"fail": True})
    submit(client, "cleanup", "extract", trigger_rule="all_done", payload={"fail": True})
    submit(client, "report", "cleanup")
    wait_terminal(client, "extract", "cleanup", "report")
    answer = client.get("/api/tasks/report/blockers").get_json()
    # The cleanup ran and failed itself: retrying it, not extract, brings report back.
    assert answer["root_causes"] == ["cleanup"]
    refused = client.post("/api/tasks/report/retry").get_json()
    assert refused["details"]["root"] == "cleanup"


def test_a_waiting_dependency_of_a_cut_off_task_is_a_root_cause(make_app: AppFactory) -> None:
    """`wait` (all_done) still waits, though one of its dependencies failed: it is a root
    cause of `last`, which a cancel cut off. A first version of the one-statement walk
    read its missing error code as unknown and left it out."""
    client = running_app(make_app).test_client()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    submit(client, "failed", payload={"fail": True})
    submit(client, "held", run_at=later)
    submit(client, "wait", "failed", "held", trigger_rule="all_done")
    submit(client, "cancelled", run_at=later)
    submit(client, "last", "cancelled", "wait")
    wait_terminal(client, "failed")
    assert client.post("/api/tasks/cancelled/cancel").status_code == 200
    answer = client.get("/api/tasks/last/blockers").get_json()
    assert answer["status"] == "CANCELLED"
    assert answer["root_causes"] == ["cancelled", "wait"]

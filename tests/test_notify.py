"""LISTEN/NOTIFY: a submission through one instance wakes the scheduler of another."""

from __future__ import annotations

import pytest

from tests.conftest import AppFactory, wait_for
from tests.helpers import Gate, running_app, submit, wait_status


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_work_submitted_elsewhere_wakes_a_scheduler_at_once(make_app: AppFactory) -> None:
    # The runner polls once an hour: only a notification can make it see these tasks.
    runner = running_app(make_app).test_client()
    api_only = make_app().test_client()
    submit(api_only, "first")
    submit(api_only, "second", "first")
    assert wait_status(runner, "second", "COMPLETED")["attempts"] == 1
    submit(api_only, "retried", payload={"fail": True})
    wait_status(runner, "retried", "FAILED")
    assert api_only.post("/api/tasks/retried/retry").status_code == 200
    assert wait_status(runner, "retried", "FAILED")["attempts"] == 2


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_cancel_elsewhere_that_readies_a_cleanup_wakes_the_runner(make_app: AppFactory) -> None:
    gate = Gate(honour_cancel=False)
    busy = running_app(make_app, {"gate": gate}, MAX_CONCURRENT_TASKS="1").test_client()
    api_only = make_app().test_client()
    submit(api_only, "long", type="gate")
    submit(api_only, "after", "long")
    submit(api_only, "cleanup", "after", trigger_rule="all_done")
    wait_status(busy, "long", "RUNNING")  # its only slot is taken until the gate opens
    runner_app = running_app(make_app)  # idle, polling once an hour
    runner = runner_app.test_client()
    scheduler = runner_app.extensions["scheduler"]
    wait_for(scheduler.listening, what="the runner to listen")
    # Only the runner has a free slot: once this has run, it is idle until woken.
    submit(api_only, "probe")
    wait_status(runner, "probe", "COMPLETED")
    # Cancelling the running task cuts "after" off, which leaves "cleanup" ready at once:
    # only a notification can tell the idle runner.
    assert api_only.post("/api/tasks/long/cancel").status_code == 200
    assert wait_status(runner, "cleanup", "COMPLETED")["attempts"] == 1
    gate.release.set()
    wait_status(busy, "long", "COMPLETED")

"""LISTEN/NOTIFY: a submission through one instance wakes the scheduler of another."""

from __future__ import annotations

import pytest

from tests.conftest import AppFactory
from tests.helpers import running_app, submit, wait_status


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

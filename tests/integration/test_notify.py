"""LISTEN/NOTIFY: a submission through one instance wakes the scheduler of another."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, text

from app import parts
from app.storage import database, scheduler_sql
from app.storage.database import channel_sql
from app.storage.notify import CHANNEL, Listener, announce
from app.storage.tables import instances
from tests.support.apps import AppFactory, build_app, postgres_schema, teardown
from tests.support.client import running_app, submit, wait_status
from tests.support.handlers import Gate
from tests.support.store import exited_pid
from tests.support.waiting import wait_for

HOUR = timedelta(hours=1)


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


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_work_recovered_from_a_dead_instance_wakes_an_idle_runner(make_app: AppFactory) -> None:
    """The reaper of a busy instance puts a dead one's task back: another runs it at once."""
    gate = Gate()
    # Reaps every second (lease 3 s); its only slot stays taken by the gate.
    busy_app = running_app(make_app, {"gate": gate}, MAX_CONCURRENT_TASKS="1", LEASE_S="3")
    busy = busy_app.test_client()
    submit(busy, "long", type="gate")
    wait_status(busy, "long", "RUNNING")
    # Reaps only when it starts (lease 10 minutes): what it hears, it hears by NOTIFY.
    runner_app = running_app(make_app, LEASE_S="600")
    runner = runner_app.test_client()
    wait_for(runner_app.extensions["scheduler"].listening, what="the runner to listen")
    submit(busy, "probe")
    wait_status(runner, "probe", "COMPLETED")
    # An instance of this host claimed "orphan", then its process exited. (Held back an
    # hour, so no live instance claims it first; the claim is made as of later still.)
    store = busy_app.extensions["store"]
    now = store.database_now()
    submit(busy, "orphan", max_attempts=2, retry_backoff_ms=0, run_at=_iso(now + HOUR))
    with database.write(store.engine) as conn:
        dead = {"hostname": busy_app.extensions["scheduler"].host, "pid": exited_pid()}
        conn.execute(insert(instances).values(id="gone", started_at=now, heartbeat_at=now, **dead))
        scheduler_sql.promote(conn, now + 2 * HOUR, 1)
        claimed = scheduler_sql.claim(conn, "gone", 1, now + 2 * HOUR, [("default", 1)])
    assert [c.id for c in claimed] == ["orphan"]
    # The runner's own reaper ran at its start: only the busy instance reaps now.
    done = wait_status(runner, "orphan", "COMPLETED")
    assert done["attempts"] == 2
    gate.release.set()
    wait_status(busy, "long", "COMPLETED")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.postgres
def test_a_deployment_in_another_schema_wakes_none_of_this_ones_listeners() -> None:
    """Each deployment's channels end with its `tasks` table's OID: a NOTIFY of one schema
    reaches the listeners of that schema alone."""
    schema = contextmanager(postgres_schema)
    with schema() as here_url, schema() as there_url:
        here, there = build_app(here_url, {}), build_app(there_url, {})
        heard: list[str] = []
        listener = Listener(parts.store(here).engine, heard.append)
        listener.start()
        try:
            wait_for(listener.listening.is_set, what="the listener to listen")
            heard.clear()  # the "" said on connecting
            with database.write(parts.store(there).engine) as conn:
                announce(conn)
            with database.write(parts.store(here).engine) as conn:
                announce(conn)
            with database.write(parts.store(here).engine) as conn:
                marker = f"SELECT pg_notify({channel_sql(':channel')}, 'last')"
                conn.execute(text(marker), {"channel": CHANNEL})
            # Notifications of one database come in commit order: once the last arrives,
            # any from the other schema would have come before it.
            wait_for(lambda: "last" in heard, what="this deployment's notifications")
            assert heard == ["", "last"]
        finally:
            listener.stop()
            teardown([here, there])

"""Clocks: one shared clock on PostgreSQL, and liveness no clock step can fool."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app import faults
from app.extensions import db
from app.handlers import Registry
from app.runtime.scheduler import Scheduler
from app.services import submissions
from app.storage import database
from app.storage.store import Store
from tests.support.apps import build_app, teardown
from tests.support.client import submit, task
from tests.support.stepping import Threads, open_scheduler
from tests.support.store import row as task_row

SKEW = timedelta(hours=1)
LEASE_S = 30


@pytest.fixture
def skewed_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make this host's clock run an hour ahead of the database's."""
    real = database.utcnow
    monkeypatch.setattr(database, "utcnow", lambda: real() + SKEW)
    yield


def _database_now(app: Flask) -> datetime:
    with app.app_context(), db.engine.connect() as conn:
        moment: datetime = conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()
        return moment


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).replace(tzinfo=None)


@pytest.mark.postgres
def test_a_skewed_api_host_stamps_and_compares_with_the_database_clock(
    postgres_url: str, skewed_host: None
) -> None:
    """Submit, cancel and blockers read the database's clock, not the API host's."""
    app = build_app(postgres_url, {})
    try:
        _check_stamps(app)
    finally:
        teardown([app])


def _check_stamps(app: Flask) -> None:
    client = app.test_client()
    before = _database_now(app)
    due = before + timedelta(minutes=30)
    submit(client, "later", run_at=due.strftime("%Y-%m-%dT%H:%M:%SZ"))
    submit(client, "victim")
    # Held by its run_at, half an hour away on the shared clock (the host thinks it passed).
    answer = client.get("/api/tasks/later/blockers").get_json()
    assert [b["kind"] for b in answer["blockers"]] == ["run_at"]
    assert client.post("/api/tasks/victim/cancel").status_code == 200
    after = _database_now(app)
    victim = task(client, "victim")
    for field in ("created_at", "finished_at"):
        assert before - timedelta(seconds=5) <= _parse(victim[field]) <= after, field


class Clocks:
    """A host's two clocks, moved by the test: the wall clock can step, the monotonic not."""

    def __init__(self) -> None:
        self.wall = datetime(2026, 12, 4, 12, 0, 0)
        self.seconds = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.seconds

    def sleep(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.seconds += seconds


def _instance(app: Flask, name: str, clocks: Clocks) -> Scheduler:
    engine = app.extensions["store"].engine
    store = Store(engine, clock=clocks.now, monotonic=clocks.monotonic)
    return open_scheduler(
        store,
        Registry(),
        cap=1,
        executor=Threads,
        name=lambda: name,
        lease_s=LEASE_S,
        clock=clocks.monotonic,
    )


def _members(app: Flask) -> set[str]:
    return {row.id for row in app.extensions["store"].instances()}


def test_a_wall_clock_step_declares_no_live_instance_of_this_host_dead(app: Flask) -> None:
    """SQLite: NTP or a resumed VM moves the wall clock an hour; nobody is reaped."""
    clocks = Clocks()
    first = _instance(app, "first", clocks)
    second = _instance(app, "second", clocks)
    submissions.submit(
        app.extensions["store"].engine, {"id": "work", "type": "t", "duration_ms": 1}
    )
    assert first.run_once() == 1
    clocks.wall += SKEW  # a step: the monotonic clock does not move
    clocks.sleep(LEASE_S / 3)
    assert second.reaper.run_once() == 0
    assert _members(app) == {"first", "second"}
    assert task_row(app.extensions["store"], "work").status == "RUNNING"


def test_a_frozen_instance_of_this_host_is_reaped_whatever_the_wall_clock_says(
    app: Flask,
) -> None:
    """A live pid that stopped heartbeating (SIGSTOP) is judged on the monotonic clock."""
    clocks = Clocks()
    frozen = _instance(app, "frozen", clocks)
    submissions.submit(
        app.extensions["store"].engine, {"id": "work", "type": "t", "duration_ms": 1}
    )
    assert frozen.run_once() == 1
    live = _instance(app, "live", clocks)
    clocks.wall -= SKEW  # the wall clock steps back: the frozen one's heartbeat looks fresh
    reaped = []
    for second in range(5, 40, 5):  # the live instance heartbeats and looks, the other not
        clocks.sleep(5)
        if second % 10 == 0:
            assert live.heartbeat.run_once()
        reaped.append(live.reaper.run_once())
    assert reaped == [0, 0, 0, 0, 0, 0, 1]  # a lease after its last heartbeat, not before
    assert _members(app) == {"live"}
    assert task_row(app.extensions["store"], "work").error_code == "interrupted"


def test_an_outage_longer_than_a_lease_declares_no_live_instance_dead(app: Flask) -> None:
    """While the database is down nobody can heartbeat: that silence proves no death."""
    clocks = Clocks()
    engine = app.extensions["store"].engine
    submissions.submit(engine, {"id": "alive-work", "type": "t", "duration_ms": 1})
    submissions.submit(engine, {"id": "frozen-work", "type": "t", "duration_ms": 1})
    alive, judge = _instance(app, "alive", clocks), _instance(app, "judge", clocks)
    frozen = _instance(app, "frozen", clocks)  # a process that stops for good
    assert alive.run_once() == 1 and frozen.run_once() == 1

    def down(**_context: object) -> None:
        raise OperationalError("UPDATE", {}, Exception("the database is unavailable"))

    with faults.injected("heartbeat.before_write", down):
        for _ in range(4):  # 40 s, more than a lease, without a heartbeat going through
            clocks.sleep(LEASE_S / 3)
            for instance in (alive, judge):
                with pytest.raises(OperationalError):
                    instance.heartbeat.run_once()
    # Back: the judge's first heartbeat goes through before the alive one's.
    clocks.sleep(1)
    assert judge.heartbeat.run_once()
    assert judge.reaper.run_once() == 0
    assert _members(app) == {"alive", "judge", "frozen"}
    # A lease in touch later, the frozen instance is recovered; the live one never is.
    for _ in range(4):
        clocks.sleep(LEASE_S / 3)
        assert alive.heartbeat.run_once() and judge.heartbeat.run_once()
        judge.reaper.run_once()
    assert _members(app) == {"alive", "judge"}
    store = app.extensions["store"]
    assert task_row(store, "alive-work").status == "RUNNING"
    assert task_row(store, "frozen-work").error_code == "interrupted"

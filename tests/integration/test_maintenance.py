"""Each maintenance job on its own, one `run_once(now)` at a time, on both backends.

The heartbeat, the reaper and the pruner are small services with their collaborators
passed in; these tests build each one alone, with the time given, and read the database.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app import parts
from app.runtime.heartbeat import Contact, Heartbeat
from app.runtime.metrics import Metrics
from app.runtime.pruner import Pruner
from app.runtime.reaper import Reaper
from app.statuses import Status
from app.storage import database
from app.storage.database import utcnow
from app.storage.store import Outcome, Store
from app.storage.tables import task_attempts
from tests.support.apps import AppFactory
from tests.support.stepping import Clock
from tests.support.store import add, claim_all, count, register, row, set_fields


def attempts_of(store: Store, task_id: str) -> int:
    """How many history rows the task has."""
    with database.read(store.engine) as conn:
        query = select(func.count()).where(task_attempts.c.task_id == task_id)
        return int(conn.execute(query).scalar_one())


@pytest.fixture
def either_app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def store(either_app: Flask) -> Store:
    return parts.store(either_app)


def test_a_heartbeat_keeps_its_instance_alive_and_counts(store: Store) -> None:
    register(store, "me")
    metrics = Metrics()
    contact = Contact(Clock(), lease_s=30)
    dead: list[str] = []
    heartbeat = Heartbeat(store, contact, metrics, lambda: "me", dead.append)
    later = utcnow() + timedelta(seconds=5)
    assert heartbeat.run_once(later) is True
    (me,) = [i for i in store.instances() if i.id == "me"]
    assert me.heartbeat_at >= later - timedelta(seconds=1)
    assert dead == []
    last = b"taskscheduler_scheduler_last_heartbeat_timestamp_seconds"
    (line,) = [x for x in metrics.exposition().splitlines() if x.startswith(last)]
    assert float(line.split()[1]) > 0  # the gauge an alert on a stalled scheduler reads


def test_a_heartbeat_of_an_instance_declared_dead_says_so(store: Store) -> None:
    dead: list[str] = []
    heartbeat = Heartbeat(store, Contact(Clock(), 30), Metrics(), lambda: "gone", dead.append)
    assert heartbeat.run_once() is False  # no row: another instance removed it
    assert dead == ["gone"]


def test_a_heartbeat_without_an_identity_does_nothing(store: Store) -> None:
    dead: list[str] = []
    heartbeat = Heartbeat(store, Contact(Clock(), 30), Metrics(), lambda: None, dead.append)
    assert heartbeat.run_once() is False
    assert dead == [] and store.instances() == []


def test_the_reaper_ends_the_attempts_of_an_instance_silent_past_its_lease(store: Store) -> None:
    add(store, "a")
    set_fields(store, "a", max_attempts=2, retry_backoff_ms=0)
    (claim,) = claim_all(store, "silent")
    woken: list[bool] = []
    reaper = Reaper(store, 30, "another-host", lambda: "me", Metrics(), lambda: woken.append(True))
    assert reaper.run_once(utcnow() + timedelta(seconds=29)) == 0  # within the lease
    assert row(store, "a").status == Status.RUNNING
    assert reaper.run_once(utcnow() + timedelta(seconds=31)) == 1
    recovered = row(store, "a")
    assert (recovered.status, recovered.failures, recovered.error_code) == (
        "QUEUED",
        1,
        "interrupted",
    )
    assert woken == [True]  # what it recovered may be ready now
    assert not store.finish(claim, Outcome(Status.COMPLETED))  # the old attempt is fenced off


def test_the_reaper_judges_no_silence_while_it_cannot_trust_its_own_contact(
    store: Store,
) -> None:
    add(store, "a")
    claim_all(store, "silent")
    reaper = Reaper(store, 30, "another-host", lambda: "me", Metrics(), in_touch=lambda: 0.0)
    assert reaper.run_once(utcnow() + timedelta(hours=1)) == 0
    assert row(store, "a").status == Status.RUNNING


def test_the_reaper_judges_each_instance_by_its_own_lease(store: Store) -> None:
    """An instance run with LEASE_S=30 heartbeats every 10 s: one with LEASE_S=6 took
    its silence of 7 s for a death, and its attempts ran a second time elsewhere."""
    add(store, "a")
    add(store, "b")
    now = utcnow()
    for worker, lease in (("patient", 30), ("older", None)):
        row_ = {"id": worker, "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
        store.register({**row_, "lease_s": lease})
    claims = {worker: store.claim(worker, 1)[0] for worker in ("patient", "older")}
    quick = Reaper(store, 6, "another-host", lambda: "me", Metrics(), in_touch=lambda: 60.0)
    # The older version's instance, whose lease is unknown: judged by the judge's, 6 s.
    assert quick.run_once(now + timedelta(seconds=7)) == 1
    assert row(store, claims["older"].id).status == Status.FAILED
    assert quick.run_once(now + timedelta(seconds=29)) == 0  # within its 30 s
    assert row(store, claims["patient"].id).status == Status.RUNNING
    assert quick.run_once(now + timedelta(seconds=31)) == 1
    assert row(store, claims["patient"].id).error_code == "interrupted"


def test_the_reaper_judges_a_longer_lease_only_once_in_touch_that_long(store: Store) -> None:
    """After an outage an instance heartbeats within a third of its own lease: a judge
    with a shorter lease waits the longer one in touch before it takes silence for death."""
    add(store, "a")
    now = utcnow()
    row_ = {"id": "patient", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
    store.register({**row_, "lease_s": 30})
    store.claim("patient", 1)
    in_touch = [20.0]
    quick = Reaper(store, 6, "h2", lambda: "me", Metrics(), in_touch=lambda: in_touch[0])
    assert quick.run_once(now + timedelta(hours=1)) == 0
    in_touch[0] = 30.0
    assert quick.run_once(now + timedelta(hours=1)) == 1


def _judge(store: Store, contact: Contact, **options: Any) -> Reaper:
    """A reaper of another host with a lease of 100 s, its touch kept by `contact`."""
    return Reaper(
        store,
        100,
        "h2",
        lambda: "me",
        Metrics(),
        in_touch=contact.in_touch_s,
        lost=contact.lost,
        **options,
    )


def test_a_reaper_whose_own_reads_fail_stops_judging_silence_as_its_heartbeat_would(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge with a lease of 100 s heartbeats every 33 s: an outage of 29 s fell between
    two of its heartbeats, so it never saw one fail. Its reaper's reads failed, unnoticed,
    and 4 s after the outage it took the silence of an instance with a lease of 30 s,
    whose heartbeats the outage had stopped, for a death (simulation seed 390542)."""
    add(store, "a")
    now = utcnow()
    row_ = {"id": "short", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
    store.register({**row_, "lease_s": 30})
    store.claim("short", 1)
    clock = Clock()
    contact = Contact(clock, lease_s=100)
    for _ in range(7):  # in touch for 198 s
        contact.reached()
        clock.seconds += 33
    judge = _judge(store, contact)
    instances = store.instances

    def outage() -> Any:
        raise OperationalError("SELECT", {}, Exception("the database is unavailable"))

    monkeypatch.setattr(store, "instances", outage)
    with pytest.raises(OperationalError):
        judge.run_once(now + timedelta(seconds=35))
    monkeypatch.setattr(store, "instances", instances)
    clock.seconds += 5
    assert judge.run_once(now + timedelta(seconds=40)) == 0  # out of touch: no judgement
    assert row(store, "a").status == Status.RUNNING
    for _ in range(4):  # heartbeats go through again, every 33 s: in touch for 132 s
        contact.reached()
        clock.seconds += 33
    contact.reached()
    assert judge.run_once(now + timedelta(seconds=140)) == 1  # silent past its lease, judged


def test_a_reaper_back_from_a_failure_beats_at_once_and_judges_a_lease_later(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed run of the reaper puts its instance out of touch, and its next heartbeat
    may be 33 s away (a lease of 100 s): the first run after the failure beats itself, so
    the lease in touch a judgement needs starts as the database comes back, not a lease/3
    later (simulation seed 430045: a dead instance's task stayed RUNNING past the bound)."""
    add(store, "a")
    now = utcnow()
    row_ = {"id": "gone", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
    store.register({**row_, "lease_s": 30})
    store.claim("gone", 1)
    register(store, "me")
    clock = Clock()
    contact = Contact(clock, lease_s=100)
    heartbeat = Heartbeat(store, contact, Metrics(), lambda: "me", lambda _: None)
    heartbeat.run_once(now)
    judge = _judge(store, contact, beat=heartbeat.run_once)
    instances = store.instances

    def outage() -> Any:
        raise OperationalError("SELECT", {}, Exception("the database is unavailable"))

    monkeypatch.setattr(store, "instances", outage)
    clock.seconds += 20
    with pytest.raises(OperationalError):
        judge.run_once(now + timedelta(seconds=20))
    assert contact.in_touch_s() == 0
    monkeypatch.setattr(store, "instances", instances)
    clock.seconds += 1
    back = clock.seconds
    assert judge.run_once(now + timedelta(seconds=21)) == 0  # beats; not in touch long yet
    assert contact.in_touch_s() == 0
    while clock.seconds < back + 99:  # the heartbeats on their own schedule, every 33 s
        clock.seconds += 33
        contact.reached()
    clock.seconds = back + 100
    assert judge.run_once(now + timedelta(seconds=121)) == 1  # a lease from its own beat
    assert row(store, "a").status != Status.RUNNING


def test_a_reaper_that_did_not_run_for_a_third_of_a_lease_judges_no_silence_at_once(
    store: Store,
) -> None:
    """Simulation seed 430064: a judge with a lease of 100 s, its process stalled for 30 s,
    missed a 19 s outage whole, its heartbeat not being due and its reaper not running;
    back, it took the silence the outage caused an instance with a lease of 30 s for a
    death. A reaper that has not run for a third of the shortest lease it judges is now
    out of touch, as after a failure: it judges again a lease after its next beat."""
    add(store, "a")
    register(store, "me")
    clock = Clock()
    contact = Contact(clock, lease_s=100)
    heartbeat = Heartbeat(store, contact, Metrics(), lambda: "me", lambda _: None)
    for _ in range(7):  # in touch for 198 s
        heartbeat.run_once()
        clock.seconds += 33
    heartbeat.run_once()
    judge = _judge(store, contact, beat=heartbeat.run_once, every_s=1.0, clock=clock)
    now = utcnow()
    row_ = {"id": "short", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
    store.register({**row_, "lease_s": 30})
    store.claim("short", 1)
    assert judge.run_once(now) == 0
    clock.seconds += 30  # stalled: no run, and an outage may have come and gone
    assert judge.run_once(now + timedelta(seconds=34)) == 0  # silent 34 s, but unseen
    assert row(store, "a").status == Status.RUNNING
    back = clock.seconds
    while clock.seconds < back + 100:  # runs every 5 s, heartbeats every 33 s
        clock.seconds += 5
        if (clock.seconds - back) % 33 < 5:
            heartbeat.run_once()
        found = judge.run_once(now + timedelta(seconds=34 + clock.seconds - back))
        assert found == (1 if clock.seconds - back >= 100 else 0)
    assert row(store, "a").status != Status.RUNNING


def test_the_pruner_deletes_only_what_is_past_retention(either_app: Flask, store: Store) -> None:
    add(store, "done")
    add(store, "waiting")
    set_fields(
        store,
        "waiting",
        run_at=utcnow() + timedelta(days=1),
        not_before=utcnow() + timedelta(days=1),
    )
    (claim,) = claim_all(store)
    assert store.finish(claim, Outcome(Status.COMPLETED))
    assert attempts_of(store, "done") == 1
    assert Pruner(store, retention_days=0).run_once(utcnow() + timedelta(days=30)) == 0  # off
    pruner = Pruner(store, retention_days=7)
    assert pruner.run_once(utcnow() + timedelta(days=6)) == 0
    assert pruner.run_once(utcnow() + timedelta(days=8)) == 1
    assert count(either_app) == 1  # the unfinished task stays, however old
    assert row(store, "waiting").status == Status.QUEUED
    assert attempts_of(store, "done") == 0  # its history went with it

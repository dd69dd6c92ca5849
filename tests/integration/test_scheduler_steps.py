"""The scheduler pass by pass, on both backends: slots, timeouts, lost answers, upkeep.

Most tests drive `run_once(now)` with a clock and handler threads they move by hand; the
two about upkeep run the real threads, with a prune held inside a chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, insert, select
from sqlalchemy.exc import OperationalError

from app import faults, start_scheduler
from app.handlers import Registry
from app.runtime import identity
from app.runtime.metrics import Metrics
from app.runtime.reaper import Reaper
from app.runtime.scheduler import CANCEL_CHECK_S, Scheduler
from app.services import actions, submissions
from app.statuses import Status
from app.storage import database, retention
from app.storage.database import utcnow
from app.storage.store import Store
from app.storage.tables import instances, tasks
from tests.support.apps import AppFactory
from tests.support.stepping import Clock, Threads, open_scheduler
from tests.support.store import claim_all, row
from tests.support.waiting import wait_for


class Instance:
    """A scheduler instance stepped by hand."""

    def __init__(self, app: Flask, cap: int, name: str) -> None:
        self.clock = Clock()
        names = iter([name, *(f"{name}-again-{n}" for n in range(1, 100))])
        self.threads = Threads(cap)
        registry = Registry()
        registry.register("job", lambda ctx: {"done": ctx.id})
        self.scheduler = open_scheduler(
            app.extensions["store"],
            registry,
            cap=cap,
            executor=lambda _workers: self.threads,
            name=lambda: next(names),
            clock=self.clock,
        )

    def step(self, seconds: float = 0.0) -> int:
        self.clock.seconds += seconds
        return self.scheduler.run_once()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def add(store: Store, task_id: str, **fields: Any) -> None:
    body = {"id": task_id, "type": "job", "duration_ms": 1, **fields}
    submissions.submit(store.engine, body)


def test_a_timed_out_attempt_keeps_its_slot_until_its_thread_returns(
    app: Flask, store: Store
) -> None:
    add(store, "slow", max_attempts=2, retry_backoff_ms=0, timeout_ms=100)
    add(store, "next")
    one = Instance(app, cap=1, name="one")
    assert one.step() == 1
    assert one.threads.running() == [("slow", 1)]
    # The deadline passes: the attempt fails and is retried, but its thread runs on.
    assert one.step(0.5) == 0
    assert (row(store, "slow").status, row(store, "slow").failures) == ("QUEUED", 1)
    assert row(store, "next").status == "QUEUED"  # no free thread for it either
    assert one.scheduler.running_count() == 1
    one.threads.finish("slow")  # whatever it returns now is discarded
    assert row(store, "slow").status == "QUEUED"
    assert one.step() == 1
    assert one.threads.running() == [("slow", 2)]


def test_an_instance_never_runs_two_attempts_of_one_task_at_once(app: Flask, store: Store) -> None:
    add(store, "slow", max_attempts=2, retry_backoff_ms=0, timeout_ms=100, priority=5)
    add(store, "other")
    one = Instance(app, cap=2, name="one")
    assert one.step() == 2
    one.threads.finish("other")
    assert one.step(0.5) == 0  # slow timed out and is QUEUED again; its thread still runs
    assert one.threads.running() == [("slow", 1)]
    assert row(store, "slow").status == "QUEUED"
    two = Instance(app, cap=1, name="two")
    assert two.step() == 1  # another instance may take it
    assert two.threads.running() == [("slow", 2)]


def test_a_claim_whose_answer_was_lost_goes_back_to_the_queue_unspent(
    app: Flask, store: Store
) -> None:
    add(store, "a")
    one = Instance(app, cap=1, name="one")

    def lost(**context: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("connection lost after the commit"))

    with faults.injected("cycle.committed", lost), pytest.raises(OperationalError):
        one.step()
    assert (row(store, "a").status, row(store, "a").worker) == ("RUNNING", "one")
    assert one.threads.running() == []  # nothing runs it
    assert one.step() == 1  # the next pass compares, requeues, and claims it again
    again = row(store, "a")
    assert (again.status, again.attempts, again.failures) == ("RUNNING", 2, 0)
    assert one.threads.running() == [("a", 2)]
    one.threads.finish("a")
    one.step()
    assert row(store, "a").status == "COMPLETED"


def test_attempts_whose_thread_could_not_start_go_back_to_the_queue(
    app: Flask, store: Store
) -> None:
    """An executor that fails to start the second attempt of a pass: that attempt and
    those after it run nowhere, so they must not hold slots or stay RUNNING; the next
    pass puts them back in the queue and runs them."""
    for task_id in ("a", "b", "c", "d"):
        add(store, task_id)
    one = Instance(app, cap=4, name="one")
    starts = {"n": 0}
    start = one.threads.start

    def failing_once(job: Any) -> None:
        starts["n"] += 1
        if starts["n"] == 2:
            raise RuntimeError("can't start new thread")
        start(job)

    one.threads.start = failing_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        one.step()
    assert one.threads.running() == [("a", 1)]
    assert one.scheduler.running_count() == 1  # only the attempt that runs holds a slot
    assert one.step() == 3  # the others, requeued unspent and claimed again
    assert sorted(one.threads.running()) == [("a", 1), ("b", 2), ("c", 2), ("d", 2)]
    for task_id in ("a", "b", "c", "d"):
        one.threads.finish(task_id)
    one.step()
    assert {row(store, t).status for t in "abcd"} == {"COMPLETED"}
    assert {row(store, t).failures for t in "abcd"} == {0}
    assert one.scheduler.running_count() == 0


def test_an_attempt_ended_elsewhere_is_stopped_and_its_outcome_discarded(
    app: Flask, store: Store
) -> None:
    add(store, "a", max_attempts=2, retry_backoff_ms=0)
    one = Instance(app, cap=1, name="one")
    one.step()
    (running,) = one.scheduler.attempts()
    assert store.reap("one", "declared dead") == ["a"]  # another instance's verdict
    assert not one.scheduler.heartbeat.run_once()  # its heartbeat finds it gone
    assert one.step(60) == 0  # it rejoins under a new identity
    assert running.cancel.is_set()
    assert one.scheduler.id != "one"
    one.threads.finish("a")
    one.step()
    retried = row(store, "a")
    assert (retried.status, retried.failures, retried.attempts) == ("RUNNING", 1, 2)
    assert retried.worker == one.scheduler.id


def test_an_instance_that_cannot_rejoin_yet_says_so_once(
    app: Flask, store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared dead while the database refused its registration, it logged "declared
    dead; rejoining" as an ERROR at every pass until the registration went through."""
    one = Instance(app, cap=1, name="one")
    one.step()
    assert store.reap("one", "declared dead") == []
    register = store.register

    def refused(_row: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "register", refused)
    with caplog.at_level(logging.INFO, logger="app.scheduler"):
        for _ in range(3):
            with pytest.raises(OperationalError):
                one.step(1)
        # /health says why (it showed the dead identity as running).
        assert one.scheduler.problem() == (
            "the scheduler was declared dead and cannot register again yet"
        )
        monkeypatch.setattr(store, "register", register)
        one.step(1)
        assert "declared dead" not in (one.scheduler.problem() or "")
    said = [r.getMessage() for r in caplog.records if r.name == "app.scheduler"]
    dead = [line for line in said if "declared dead" in line]
    assert dead == ["scheduler one was declared dead; rejoining under a new identity"], said
    assert one.scheduler.id is not None and one.scheduler.id.startswith("one-again-")
    assert said[-1] == f"scheduler rejoined as {one.scheduler.id}"


def test_the_loop_sleeps_no_longer_than_until_a_running_attempt_times_out(
    app: Flask, store: Store
) -> None:
    # A timeout is noticed by a pass: the loop's wait must end at the deadline, not at the
    # next cancel poll or polling interval.
    add(store, "slow", timeout_ms=100)
    one = Instance(app, cap=1, name="one")
    assert one.step() == 1
    assert one.step(0.02) == 0  # the cancel poll is now due 0.5 s later, the timeout sooner
    wait = one.scheduler.sleep_for()
    assert wait == pytest.approx(0.08)
    assert one.step(wait) == 0  # the pass the loop runs when it wakes ends the attempt
    timed_out = row(store, "slow")
    assert (timed_out.status, timed_out.error_code) == ("FAILED", "timeout")


def test_a_timed_out_attempt_whose_thread_runs_on_does_not_keep_the_loop_awake(
    app: Flask, store: Store
) -> None:
    # Its outcome is written and its deadline past, but its thread holds the slot until the
    # handler returns, maybe much later: meanwhile the loop must still sleep between passes.
    add(store, "slow", timeout_ms=100)
    one = Instance(app, cap=1, name="one")
    assert one.step() == 1
    assert one.step(0.5) == 0
    assert row(store, "slow").status == "FAILED"
    assert one.threads.running() == [("slow", 1)]
    assert one.scheduler.sleep_for() == pytest.approx(CANCEL_CHECK_S)


def test_outcomes_of_a_pass_whose_transaction_failed_are_written_by_the_next(
    app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outcome is known only to this process: a pass that could not write it must keep
    # it for the next pass, not rerun the task nor leave it RUNNING.
    add(store, "a")
    one = Instance(app, cap=1, name="one")
    assert one.step() == 1
    one.threads.finish("a")
    finish_all = store.finish_all
    failed: list[str] = []

    def failing_once(*args: Any) -> Any:
        if not failed:
            failed.append("finish_all")
            raise OperationalError("UPDATE", {}, Exception("disk I/O error"))
        return finish_all(*args)

    monkeypatch.setattr(store, "finish_all", failing_once)
    with pytest.raises(OperationalError):
        one.step()
    assert row(store, "a").status == "RUNNING"  # the pass's transaction rolled back
    assert one.step() == 0
    done = row(store, "a")
    assert (done.status, done.result, done.attempts) == ("COMPLETED", {"done": "a"}, 1)
    assert (failed, one.threads.running(), one.scheduler.running_count()) == (["finish_all"], [], 0)


def test_the_reaper_spares_a_live_instance_of_another_host_whose_pid_is_unknown_here(
    store: Store,
) -> None:
    # A pid names a process only on its own host: another host's instance, whose pid no
    # process here has, is alive as long as it heartbeats.
    now = utcnow()
    pid = 4_194_305  # above the largest pid Linux hands out: no process here has it
    assert not identity.is_alive(pid, None)
    store.register(
        {
            "id": "remote",
            "hostname": "another-host",
            "pid": pid,
            "process_start": "1",
            "started_at": now,
            "heartbeat_at": now,
        }
    )
    add(store, "a")
    claim_all(store, worker="remote")
    reaper = Reaper(store, 30, identity.host_key(), lambda: "local", Metrics())
    assert reaper.run_once(now + timedelta(seconds=1)) == 0
    assert [i.id for i in store.instances()] == ["remote"]
    assert (row(store, "a").status, row(store, "a").worker) == ("RUNNING", "remote")


# -- upkeep on threads of its own ----------------------------------------------------------


def finished_long_ago(store: Store, count: int) -> None:
    """Store `count` COMPLETED tasks that finished two days ago."""
    past = utcnow() - timedelta(days=2)
    rows = [
        {
            "id": f"old{i}",
            "type": "job",
            "duration_ms": 1,
            "status": Status.COMPLETED.value,
            "payload": {},
            "created_at": past,
            "updated_at": past,
            "finished_at": past,
        }
        for i in range(count)
    ]
    with database.write(store.engine) as conn:
        conn.execute(insert(tasks), rows)


def exists(store: Store, task_id: str) -> bool:
    with database.read(store.engine) as conn:
        return conn.execute(select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


def heartbeat_of(store: Store, instance_id: str) -> datetime:
    with database.read(store.engine) as conn:
        query = select(instances.c.heartbeat_at).where(instances.c.id == instance_id)
        moment: datetime = conn.execute(query).scalar_one()
        return moment


@pytest.fixture
def held_prune() -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold a prune after its first chunk until released; yield (entered, release)."""
    entered, release = threading.Event(), threading.Event()

    def hold(**context: Any) -> None:
        entered.set()
        assert release.wait(60), "the prune was never released"

    with faults.injected("prune.chunk_committed", hold):
        yield entered, release
        release.set()


def test_a_prune_longer_than_a_lease_stops_neither_heartbeats_nor_passes(
    make_app: AppFactory, held_prune: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = held_prune
    app = make_app(
        SCHEDULER_ENABLED="true", POLLING_INTERVAL="3600000", LEASE_S="2", RETENTION_DAYS="1"
    )
    store: Store = app.extensions["store"]
    finished_long_ago(store, 5)
    scheduler = start_scheduler(app)
    assert scheduler is not None
    wait_for(entered.is_set, what="the prune to pause between chunks")
    beats = [heartbeat_of(store, scheduler.id or "")]
    for _ in range(3):  # three heartbeats: a whole lease and more, the prune still held
        wait_for(lambda: heartbeat_of(store, scheduler.id or "") > beats[-1], what="a beat")
        beats.append(heartbeat_of(store, scheduler.id or ""))
    client = app.test_client()
    response = client.post("/api/tasks", json={"id": "meanwhile", "type": "t", "duration_ms": 1})
    assert response.status_code == 201
    wait_for(lambda: row(store, "meanwhile").status == "COMPLETED", what="a task to run")
    assert client.get("/health").status_code == 200
    assert not release.is_set()
    release.set()
    wait_for(lambda: not exists(store, "old4"), what="the prune to finish")


def test_a_drain_stops_a_prune_between_two_chunks(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL="3600000", RETENTION_DAYS="1")
    store: Store = app.extensions["store"]
    scheduler: Scheduler = app.extensions["scheduler"]
    finished_long_ago(store, 2500)  # more than one chunk
    chunks: list[int] = []
    stopper = threading.Thread(target=scheduler.stop, args=(5,))

    def stop_at_the_first(**context: Any) -> None:
        chunks.append(len(context["ids"]))
        if len(chunks) == 1:  # SIGTERM arrives while the first chunk is open
            stopper.start()
            wait_for(scheduler.pruner.stop_event.is_set, what="the drain to begin")

    with faults.injected("prune.chunk", stop_at_the_first):
        start_scheduler(app)
        wait_for(lambda: chunks, what="the first chunk")
        stopper_started = wait_for(lambda: stopper.ident, what="the stop")
        assert stopper_started
        stopper.join(30)
    assert scheduler.state == "stopped"
    assert chunks == [retention.FIRST_CHUNK]
    with database.read(store.engine) as conn:
        left = conn.execute(select(tasks.c.id).where(tasks.c.id.like("old%"))).all()
    assert len(left) == 2500 - retention.FIRST_CHUNK


def test_a_drain_tries_its_writes_again_while_the_database_fails(
    app: Flask, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(store, "done")
    add(store, "unfinished")
    one = Instance(app, cap=2, name="one")
    assert one.step() == 2
    one.threads.finish("done")
    one.scheduler.begin_drain()
    failed: list[str] = []
    cycle = store.cycle

    def cycle_failing_once(*args: Any) -> Any:
        if not failed:
            failed.append("cycle")
            raise OperationalError("BEGIN", {}, Exception("the database restarts"))
        return cycle(*args)

    def requeue_failing_once(**context: Any) -> None:
        if failed == ["cycle"]:
            failed.append("requeue")
            raise OperationalError("UPDATE", {}, Exception("the database restarts"))

    monkeypatch.setattr(store, "cycle", cycle_failing_once)
    with faults.injected("requeue.before_write", requeue_failing_once):
        one.scheduler.finish_drain()
    assert failed == ["cycle", "requeue"]
    assert row(store, "done").status == "COMPLETED"
    requeued = row(store, "unfinished")
    assert (requeued.status, requeued.failures) == ("QUEUED", 0)


def test_a_drain_puts_back_what_still_runs_in_one_transaction_and_stops_it_first(
    app: Flask, store: Store
) -> None:
    """A hurried stop of 1,000 running tasks under gunicorn, which kills a worker 2 s
    into a quick shutdown: one transaction a requeue left hundreds RUNNING, to fail later
    as interrupted. And a handler returning during those writes was put back to run again,
    while those late in the list were not yet asked to stop."""
    for k in range(40):
        add(store, f"t{k:02d}")
    one = Instance(app, cap=40, name="one")
    assert one.step() == 40
    one.threads.finish("t00")  # ended before the stop: written as it ended
    one.scheduler.begin_drain()
    commits: list[str] = []
    stopped_at_first_write: list[int] = []

    def count(conn: Any) -> None:
        commits.append("commit")

    def look(**context: Any) -> None:
        if not stopped_at_first_write:
            attempts = one.scheduler.attempts()
            stopped_at_first_write.append(sum(1 for r in attempts if r.stop_reason == "shutdown"))

    event.listen(store.engine, "commit", count)
    try:
        with faults.injected("requeue.before_write", look):
            one.scheduler.finish_drain()
    finally:
        event.remove(store.engine, "commit", count)
    assert row(store, "t00").status == "COMPLETED"
    assert {row(store, f"t{k:02d}").status for k in range(1, 40)} == {"QUEUED"}
    assert stopped_at_first_write == [39]  # every handler asked to stop before any write
    assert len(commits) <= 3, commits  # the outcome, the requeues, the deregistration


def test_a_drain_says_what_became_of_each_attempt_it_stops(
    app: Flask, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    add(store, "kept")
    add(store, "cancelled")
    one = Instance(app, cap=2, name="one")
    assert one.step() == 2
    actions.cancel(store.engine, "cancelled")
    one.scheduler.begin_drain()
    with caplog.at_level(logging.INFO, logger="app.scheduler"):
        one.scheduler.finish_drain()
    assert (row(store, "kept").status, row(store, "cancelled").status) == ("QUEUED", "CANCELLED")
    assert "task kept requeued at shutdown" in caplog.text
    assert "task cancelled cancelled, as a user had asked" in caplog.text
    assert "task cancelled requeued" not in caplog.text


def test_a_stop_while_the_maintenance_threads_start_stops_the_scheduler(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that comes once the first maintenance thread runs, before the loop's thread
    has started (a prune's first chunk, SIGTERM at that moment), stops everything."""
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL="3600000")
    scheduler: Scheduler = app.extensions["scheduler"]
    started = scheduler._started
    stopped: list[str] = []

    def then_stop() -> None:
        started()
        stopper = threading.Thread(target=scheduler.stop, args=(5,))
        stopper.start()
        stopper.join(30)
        stopped.append(scheduler.state)

    monkeypatch.setattr(scheduler, "_started", then_stop)
    start_scheduler(app)
    assert stopped == ["stopped"]
    thread = scheduler._thread
    assert thread is not None
    thread.join(10)  # it started after the stop, saw the halt and returned
    assert not thread.is_alive()

"""The scheduler loop on SQLite and PostgreSQL: order, cap, propagation, wake-ups,
recovery and shutdown. The polling interval is an hour, so only events move tasks."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, faults, start_scheduler
from app.extensions import db
from app.handlers import TaskContext
from app.runtime.scheduler import Scheduler
from app.storage.store import Store
from tests.support.apps import AppFactory
from tests.support.client import HOUR_MS, submit, task, wait_terminal
from tests.support.store import claim_all, exited_pid, register_instance, row
from tests.support.waiting import wait_for


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL=HOUR_MS)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def scheduler_of(app: Flask) -> Scheduler:
    return app.extensions["scheduler"]


def store_of(app: Flask) -> Store:
    return app.extensions["store"]


class Gate:
    """A handler that blocks until released, recording how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.seen: list[str] = []

    def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.seen.append(ctx.id)
        try:
            self.release.wait(30)
            return {"ran": ctx.id}
        finally:
            with self.lock:
                self.now -= 1


def test_a_chain_runs_in_order_on_wake_ups_alone(app: Flask, client: FlaskClient) -> None:
    start_scheduler(app)
    ids = [f"c{i}" for i in range(30)]
    submit(client, ids[0])
    for previous, current in itertools.pairwise(ids):
        submit(client, current, previous)
    done = wait_terminal(client, *ids)
    assert {t["status"] for t in done.values()} == {"COMPLETED"}
    for previous, current in itertools.pairwise(ids):
        assert done[current]["started_at"] >= done[previous]["finished_at"]


def test_never_more_than_the_cap_at_once(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL=HOUR_MS, MAX_CONCURRENT_TASKS="3")
    gate = Gate()
    scheduler_of(app).registry.register("gated", gate)
    start_scheduler(app)
    client = app.test_client()
    ids = [f"g{i}" for i in range(8)]
    for task_id in ids:
        submit(client, task_id, type="gated")
    wait_for(lambda: len(gate.seen) == 3, what="three tasks to start")
    running = client.get("/api/tasks?status=RUNNING").get_json()
    assert len(running) == 3 and scheduler_of(app).running_count() == 3
    gate.release.set()
    done = wait_terminal(client, *ids)
    assert {t["status"] for t in done.values()} == {"COMPLETED"}
    assert done["g0"]["result"] == {"ran": "g0"}
    assert gate.peak == 3


def test_failure_cascades_while_other_branches_run(app: Flask, client: FlaskClient) -> None:
    start_scheduler(app)
    submit(client, "root")
    submit(client, "bad", "root", payload={"fail": True})
    submit(client, "after_bad", "bad")
    submit(client, "deep", "after_bad")
    submit(client, "good", "root")
    submit(client, "after_good", "good")
    done = wait_terminal(client, "root", "bad", "after_bad", "deep", "good", "after_good")
    assert done["bad"]["status"] == "FAILED"
    assert done["bad"]["error_code"] == "handler_error"
    assert done["bad"]["attempts"] == 1
    assert [done[i]["status"] for i in ("after_bad", "deep")] == ["UPSTREAM_FAILED"] * 2
    assert done["deep"]["attempts"] == 0
    assert done["after_good"]["status"] == "COMPLETED"


def test_a_handler_exception_fails_only_its_task(app: Flask, client: FlaskClient) -> None:
    def broken(ctx: TaskContext) -> None:
        raise ValueError("no such file")

    def not_json(ctx: TaskContext) -> object:
        return object()

    scheduler_of(app).registry.register("broken", broken)
    scheduler_of(app).registry.register("odd", not_json)
    start_scheduler(app)
    submit(client, "x", type="broken")
    submit(client, "y", type="odd")
    submit(client, "z")
    done = wait_terminal(client, "x", "y", "z")
    assert done["x"]["status"] == "FAILED"
    assert "ValueError: no such file" in done["x"]["error"]
    assert done["y"]["status"] == "FAILED" and "not JSON" in done["y"]["error"]
    assert done["z"]["status"] == "COMPLETED"


def test_start_recovers_the_tasks_of_a_dead_process(app: Flask, client: FlaskClient) -> None:
    store = store_of(app)
    register_instance(store, "crashed", exited_pid())
    submit(client, "was_running")
    submit(client, "dependent", "was_running")
    claim_all(store, worker="crashed")
    submit(client, "queued")
    start_scheduler(app)
    done = wait_terminal(client, "was_running", "dependent", "queued")
    assert done["was_running"]["status"] == "FAILED"
    assert done["was_running"]["error_code"] == "interrupted"
    assert "crashed" in done["was_running"]["error"]
    assert done["dependent"]["status"] == "UPSTREAM_FAILED"
    assert done["queued"]["status"] == "COMPLETED"
    assert [i.id for i in store.instances()] == [scheduler_of(app).id]


@pytest.mark.parametrize(
    ("owner", "recovered"),
    [
        pytest.param(lambda s: register_instance(s, "alive", os.getpid()), False, id="live-pid"),
        pytest.param(lambda s: register_instance(s, "alive", 0), True, id="unregistered"),
    ],
)
def test_recovery_spares_live_instances_only(
    app: Flask, client: FlaskClient, owner: Callable[[Store], None], recovered: bool
) -> None:
    store = store_of(app)
    owner(store)
    submit(client, "held")
    claim_all(store, worker="alive")
    if recovered and store.instances()[0].pid == 0:
        store.deregister("alive")  # running tasks whose instance is gone from the table
    start_scheduler(app)
    if recovered:
        assert wait_terminal(client, "held")["held"]["error_code"] == "interrupted"
    else:
        scheduler_of(app).reaper.run_once()
        assert task(client, "held")["status"] == "RUNNING"


def test_a_silent_instance_is_recovered_once_the_new_one_has_been_in_touch_a_lease(
    make_app: AppFactory,
) -> None:
    # Its heartbeat is an hour old, but a scheduler that has just started has seen no one's
    # heartbeats yet (the database may have been down until now): it first heartbeats
    # itself for a lease (2 s here), then recovers the silent instance's attempt.
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL=HOUR_MS, LEASE_S="2")
    client = app.test_client()
    store = store_of(app)
    register_instance(store, "silent", os.getpid(), age_s=3600)
    submit(client, "held")
    claim_all(store, worker="silent")
    start_scheduler(app)
    held = wait_terminal(client, "held")["held"]
    assert held["error_code"] == "interrupted"
    assert "stopped heartbeating" in held["error"]


def test_stop_lets_running_tasks_finish_within_the_grace(app: Flask, client: FlaskClient) -> None:
    gate = Gate()
    scheduler_of(app).registry.register("gated", gate)
    start_scheduler(app)
    submit(client, "long", type="gated")
    submit(client, "behind", "long")
    wait_for(lambda: gate.seen == ["long"], what="the task to start")
    stopper = threading.Thread(target=scheduler_of(app).stop, args=(30,))
    stopper.start()
    wait_for(lambda: scheduler_of(app).state == "draining", what="draining")
    gate.release.set()
    stopper.join(30)
    assert scheduler_of(app).state == "stopped"
    assert task(client, "long")["status"] == "COMPLETED"
    assert task(client, "behind")["status"] == "QUEUED"  # no claims while draining
    assert store_of(app).instances() == []


def test_a_stop_between_a_claim_and_its_thread_lets_the_task_finish(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM just after a pass committed a claim, before the task's thread started: the
    task shows RUNNING, so the drain waits for it like any other instead of requeueing it."""
    scheduler = scheduler_of(app)
    stopper = threading.Thread(target=scheduler.stop, args=(30,))
    drain_begun = threading.Event()
    begin_drain = scheduler.begin_drain

    def begin_and_tell() -> None:
        begin_drain()
        drain_begun.set()

    def stop_now(cycle: Any, **_context: Any) -> None:
        if not cycle.claims or stopper.ident is not None:
            return
        stopper.start()
        assert drain_begun.wait(30)
        # A stop that does not wait for this pass halts the loop at once; one that waits
        # leaves the halt unset, and the pass goes on after this short look.
        scheduler._halt.wait(0.5)

    monkeypatch.setattr(scheduler, "begin_drain", begin_and_tell)
    start_scheduler(app)
    with faults.injected("cycle.committed", stop_now):
        submit(client, "claimed", duration_ms=50)
        wait_for(lambda: stopper.ident is not None, what="the claim")
        stopper.join(30)
    assert scheduler.state == "stopped"
    done = task(client, "claimed")
    assert (done["status"], done["attempts"]) == ("COMPLETED", 1), done


def test_a_timeout_ends_its_attempt_on_time_while_the_loop_waits_for_the_database(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's pass is held inside the database (a lock, a server that does not answer)
    past a task's timeout: the handler is still stopped at its timeout, and what it
    returns then is not taken for its outcome. Deadlines were checked only between
    passes: a handler ran on for as long as the pass waited, and its result was kept."""
    scheduler = scheduler_of(app)
    store = store_of(app)
    started, stopped = threading.Event(), threading.Event()
    hold, held, release = threading.Event(), threading.Event(), threading.Event()

    def slow(ctx: TaskContext) -> dict[str, Any]:
        started.set()
        ctx.cancel.wait(30)
        stopped.set()
        return {"finished": "anyway"}

    cycle = store.cycle

    def held_cycle(*args: Any, **kwargs: Any) -> Any:
        if hold.is_set() and not held.is_set():
            held.set()
            assert release.wait(30)
        return cycle(*args, **kwargs)

    scheduler.registry.register("slow", slow)
    monkeypatch.setattr(store, "cycle", held_cycle)
    start_scheduler(app)
    submit(client, "late", type="slow", timeout_ms=300)
    assert started.wait(30)
    hold.set()
    scheduler.wake()
    try:
        assert held.wait(30)  # the loop is inside a pass, waiting
        wait_for(stopped.is_set, timeout=10, what="the handler to be stopped at its timeout")
    finally:
        release.set()
    done = wait_terminal(client, "late")["late"]
    assert (done["status"], done["error_code"], done["result"]) == ("FAILED", "timeout", None)


def test_a_drain_begins_without_waiting_for_its_listener_to_stop(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LISTEN connection takes up to a second to notice its stop: the drain waited for
    it before the grace began, which under gunicorn's 2 s for a hurried stop is half."""
    scheduler = scheduler_of(app)
    start_scheduler(app)
    listener = scheduler._listener
    if listener is None:
        pytest.skip("no listener here (no wake-up socket on this machine)")
    stopping, release = threading.Event(), threading.Event()
    stop = listener.stop

    def slow_stop() -> None:
        stopping.set()
        release.wait(30)
        stop()

    monkeypatch.setattr(listener, "stop", slow_stop)
    drained = threading.Thread(target=scheduler.begin_drain)
    drained.start()
    try:
        assert stopping.wait(30)
        drained.join(10)
        assert not drained.is_alive(), "the drain waited for the listener"
        assert scheduler.state == "draining"
    finally:
        release.set()
    scheduler.stop(0)
    assert scheduler.state == "stopped"


def test_stop_requeues_what_outlives_the_grace(app: Flask, client: FlaskClient) -> None:
    start_scheduler(app)
    submit(client, "slow", duration_ms=60_000)
    wait_for(lambda: task(client, "slow")["status"] == "RUNNING", what="the task to start")
    scheduler_of(app).stop(0.1)
    requeued = task(client, "slow")
    assert (requeued["status"], requeued["attempts"], requeued["error"]) == ("QUEUED", 1, None)
    assert row(store_of(app), "slow").failures == 0


@pytest.mark.usefixtures("task_events_on")
def test_the_drains_state_changes_are_logged_before_the_line_that_ends_it(
    app: Flask, client: FlaskClient
) -> None:
    import io
    import logging

    from app import events

    out = io.StringIO()
    events.of(store_of(app).engine).stream = out  # the state changes, and the log, in one
    handler = logging.StreamHandler(out)
    logging.getLogger("app.scheduler").addHandler(handler)
    try:
        start_scheduler(app)
        submit(client, "slow", duration_ms=60_000)
        wait_for(lambda: task(client, "slow")["status"] == "RUNNING", what="the task to start")
        scheduler_of(app).stop(0.1)
        written = out.getvalue()
    finally:
        logging.getLogger("app.scheduler").removeHandler(handler)
    assert " stopped" in written
    assert "task slow QUEUED" in written.split(" stopped")[0], written


def test_hurry_skips_the_rest_of_the_grace(app: Flask, client: FlaskClient) -> None:
    start_scheduler(app)
    submit(client, "slow", duration_ms=60_000)
    wait_for(lambda: task(client, "slow")["status"] == "RUNNING", what="the task to start")
    stopper = threading.Thread(target=scheduler_of(app).stop, args=(3600,))
    stopper.start()
    wait_for(lambda: scheduler_of(app).state == "draining", what="draining")
    scheduler_of(app).hurry()
    stopper.join(30)
    assert not stopper.is_alive()
    assert task(client, "slow")["status"] == "QUEUED"


def test_health_reports_the_running_scheduler(app: Flask, client: FlaskClient) -> None:
    start_scheduler(app)
    wait_for(lambda: client.get("/health").status_code == 200, what="a first tick")
    body = client.get("/health").get_json()
    assert body["scheduler"]["state"] == "running"
    assert body["scheduler"]["max_concurrent"] == 3
    # Its socket for other processes' wake-ups is bound (app/storage/wakeups).
    assert body["scheduler"]["listening"] is True


def test_a_scheduler_started_while_the_database_is_unavailable_starts_once_it_is_back(
    tmp_path: Path,
) -> None:
    """A supervisor may start it before the database: it waits, and /health says why."""
    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a missing folder
    folder.mkdir()  # a missing folder is a bad setting at start-up: it goes only after
    app = build_app_lazily(f"sqlite:///{folder / 'tasks.db'}")
    folder.rmdir()
    client = app.test_client()
    scheduler = scheduler_of(app)
    try:
        start_scheduler(app)  # no exception: it keeps trying in the background
        health = client.get("/health")
        assert health.status_code == 503
        problem = health.get_json()["scheduler"]["problem"]
        assert problem.startswith("the scheduler cannot register: the SQLite database file")
        folder.mkdir()
        with app.app_context():
            db.create_all()
        wait_for(lambda: scheduler.state == "running", what="the scheduler to register")
        submit(client, "after")
        assert wait_terminal(client, "after")["after"]["status"] == "COMPLETED"
        assert client.get("/health").status_code == 200
    finally:
        scheduler.stop(0)
        store_of(app).engine.dispose()


def test_a_scheduler_that_never_registered_stops_without_an_identity_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, each failed attempt to register named a new identity: /health showed one,
    the stop logged another as "stopped", then failed to write back the drain and the
    deregistration of an instance the database never had (two ERROR lines)."""
    folder = tmp_path / "never"
    folder.mkdir()
    app = build_app_lazily(f"sqlite:///{folder / 'tasks.db'}")
    folder.rmdir()
    scheduler = scheduler_of(app)
    start_scheduler(app)
    try:
        shown = app.test_client().get("/health").get_json()["scheduler"]
        assert shown["instance"] is None and scheduler.id is None
    finally:
        with caplog.at_level(logging.INFO):
            scheduler.stop(0)
        store_of(app).engine.dispose()
    assert scheduler.id is None and scheduler.state == "stopped"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("app.")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], said
    assert not any(" stopped" in line and "scheduler vm" in line for line in said), said


def build_app_lazily(url: str) -> Flask:
    """An app whose database is not set up (nor reachable) yet."""
    settings = {"DATABASE_URL": url, "SCHEDULER_ENABLED": "true", "POLLING_INTERVAL": HOUR_MS}
    app = create_app(settings)
    app.config["TESTING"] = True
    return app

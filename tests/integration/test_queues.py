"""Queues on both backends: the API, pauses, concurrency and rate limits across instances,
instances that serve some queues, and the claim's walks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, text

from app import faults, parts
from app.errors import InvalidState
from app.limits import MAX_QUEUES
from app.services import queues, submissions
from app.statuses import Status
from app.storage import counts, database, scheduler_sql, tasks
from app.storage.database import utcnow
from app.storage.store import Outcome, Store
from tests.support.apps import AppFactory, build_app
from tests.support.client import running_app
from tests.support.interleave import Monitor
from tests.support.store import register, row

DONE = Outcome(Status.COMPLETED)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def _add(store: Store, task_id: str, queue: str | None = None, **fields: Any) -> None:
    data = {"id": task_id, "type": "t", "duration_ms": 1, "queue": queue, **fields}
    submissions.submit(store.engine, data)


def _claim(store: Store, worker: str = "w1", limit: int = 100, **options: Any) -> list[str]:
    register(store, worker)
    return [c.id for c in store.claim(worker, limit, **options)]


def _running(store: Store, queue: str) -> int:
    with database.read(store.engine) as conn:
        sql = text("SELECT count(*) FROM tasks WHERE status = 'RUNNING' AND queue = :q")
        return int(conn.execute(sql, {"q": queue}).scalar_one())


def _held_before_commit() -> tuple[threading.Event, threading.Event, Callable[..., None]]:
    """A hook for `notify.announce` that holds the first transaction to reach it (after
    its insert, before its commit) until released: (reached, release, hook)."""
    reached = threading.Event()
    release = threading.Event()

    def hold(**_context: Any) -> None:
        if not reached.is_set():
            reached.set()
            assert release.wait(timeout=30)

    return reached, release, hold


# -- the API --------------------------------------------------------------------------


def test_a_task_names_its_queue_and_the_list_counts_each_queue(app: Flask) -> None:
    client = app.test_client()
    made = client.post("/api/tasks", json={"type": "t", "duration_ms": 1, "queue": "emails"})
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["queue"] == "emails"
    plain = client.post("/api/tasks", json={"type": "t", "duration_ms": 1}).get_json()
    assert plain["queue"] == "default"
    listed = {q["name"]: q for q in client.get("/api/queues").get_json()}
    assert sorted(listed) == ["default", "emails"]
    assert listed["emails"]["counts"]["QUEUED"] == 1 and listed["emails"]["running"] == 0
    assert listed["default"]["counts"]["QUEUED"] == 1
    assert listed["emails"]["state"] == "active" and listed["emails"]["paused"] is False
    assert listed["emails"]["concurrency_limit"] is None
    shown = client.get("/api/queues/emails").get_json()
    assert shown == listed["emails"]
    missing = client.get("/api/queues/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"


def test_the_queues_command_lists_the_tasks_of_every_status(app: Flask) -> None:
    client = app.test_client()
    batch = {
        "tasks": [
            {"id": "a", "type": "t", "duration_ms": 1, "queue": "emails"},
            {"id": "b", "type": "t", "duration_ms": 1, "queue": "emails", "dependencies": ["a"]},
        ]
    }
    assert client.post("/api/tasks/batch", json=batch).status_code == 201
    assert client.post("/api/tasks/a/cancel").status_code == 200  # and b with it
    listed = app.test_cli_runner().invoke(args=["queues", "list"])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == [
        *("NAME", "STATE", "LIMIT", "RATE/S", "QUEUED", "RUNNING", "COMPLETED", "FAILED"),
        *("UPSTREAM", "CANCELLED"),
    ]
    (emails,) = [r.split() for r in rows if r.startswith("emails")]
    assert emails == ["emails", "active", "-", "-", "0", "0", "0", "0", "0", "2"]


def test_limits_are_set_replaced_and_cleared(app: Flask) -> None:
    client = app.test_client()
    put = client.put("/api/queues/reports", json={"concurrency_limit": 2, "rate_limit_per_s": 5})
    assert put.status_code == 200, put.get_json()
    assert put.get_json()["concurrency_limit"] == 2
    assert put.get_json()["rate_limit_per_s"] == 5.0
    # PUT replaces: a setting left out is none.
    again = client.put("/api/queues/reports", json={"rate_limit_per_s": 0.5}).get_json()
    assert again["concurrency_limit"] is None and again["rate_limit_per_s"] == 0.5
    cleared = client.put("/api/queues/reports", json={}).get_json()
    assert cleared["concurrency_limit"] is None and cleared["rate_limit_per_s"] is None
    assert "reports" in {q["name"] for q in client.get("/api/queues").get_json()}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"concurrency_limit": -1}, "concurrency_limit"),
        ({"concurrency_limit": 1.5}, "concurrency_limit"),
        ({"concurrency_limit": True}, "concurrency_limit"),
        ({"concurrency_limit": "2"}, "concurrency_limit"),
        ({"concurrency_limit": 10**9}, "concurrency_limit"),
        ({"rate_limit_per_s": 0}, "rate_limit_per_s"),
        ({"rate_limit_per_s": -2}, "rate_limit_per_s"),
        ({"rate_limit_per_s": "fast"}, "rate_limit_per_s"),
        ({"rate_limit_per_s": False}, "rate_limit_per_s"),
        ({"rate_limit_per_s": 1e300}, "rate_limit_per_s"),
        ({"limit": 2}, "limit"),
    ],
)
def test_bad_limits_are_refused_naming_the_field_and_change_nothing(
    app: Flask, body: dict[str, Any], field: str
) -> None:
    client = app.test_client()
    answer = client.put("/api/queues/q1", json=body)
    assert answer.status_code == 400, answer.get_json()
    error = answer.get_json()
    assert error["code"] == "validation_error" and field in error["details"]
    assert "q1" not in {q["name"] for q in client.get("/api/queues").get_json()}


@pytest.mark.parametrize("name", ["-lead", "a" * 65, "sp ace", "ü"])
def test_a_bad_queue_name_is_refused_everywhere(app: Flask, name: str) -> None:
    client = app.test_client()
    for method, path in [
        ("put", f"/api/queues/{name}"),
        ("post", f"/api/queues/{name}/pause"),
        ("post", f"/api/queues/{name}/resume"),
        ("get", f"/api/queues/{name}"),
    ]:
        answer = getattr(client, method)(path, json={})
        assert answer.status_code == 400, (method, answer.get_json())
        assert answer.get_json()["code"] == "invalid_parameter"
    submitted = client.post("/api/tasks", json={"type": "t", "duration_ms": 1, "queue": name})
    assert submitted.status_code == 400
    assert "queue" in submitted.get_json()["details"]


def test_pause_and_resume_answer_the_queue_and_count_changes(app: Flask) -> None:
    client = app.test_client()
    paused = client.post("/api/queues/default/pause")
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    assert client.post("/api/queues/default/pause").get_json()["paused"] is True
    resumed = client.post("/api/queues/default/resume").get_json()
    assert resumed["state"] == "active"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'taskscheduler_queue_changes_total{change="paused"} 1.0' in metrics
    assert 'taskscheduler_queue_changes_total{change="resumed"} 1.0' in metrics


def test_an_empty_queue_is_deleted_and_one_holding_tasks_or_named_by_a_schedule_is_not(
    app: Flask,
) -> None:
    client = app.test_client()
    assert client.post("/api/queues/typo/pause").status_code == 200
    deleted = client.delete("/api/queues/typo")
    assert (deleted.status_code, deleted.get_data()) == (204, b"")
    assert "typo" not in {q["name"] for q in client.get("/api/queues").get_json()}
    assert client.get("/api/queues/typo").status_code == 404
    assert client.delete("/api/queues/typo").status_code == 404
    refused = client.delete("/api/queues/default")
    assert refused.status_code == 409 and refused.get_json()["code"] == "invalid_state"

    task = {"id": "m", "type": "t", "duration_ms": 1, "queue": "mail"}
    made = client.post("/api/tasks", json=task)
    assert made.status_code == 201
    held = client.delete("/api/queues/mail")
    assert held.status_code == 409, held.get_json()
    assert held.get_json()["details"] == {"tasks": {"QUEUED": 1}}
    assert "holds 1 task:" in held.get_json()["error"]
    assert client.post("/api/tasks/m/cancel").status_code == 200
    assert client.delete("/api/tasks/m").status_code == 204
    task.pop("id")
    schedule = {"id": "nightly", "interval_s": 3600, "task": task}
    assert client.post("/api/schedules", json=schedule).status_code == 201
    named = client.delete("/api/queues/mail")
    assert named.status_code == 409 and named.get_json()["details"] == {"schedules": ["nightly"]}
    assert client.delete("/api/schedules/nightly").status_code == 204
    assert client.delete("/api/queues/mail").status_code == 204

    # A queue that held tasks leaves the list with its row: its counts went with it.
    assert "mail" not in {q["name"] for q in client.get("/api/queues").get_json()}
    assert client.get("/api/queues/mail").status_code == 404
    # A name only a schedule uses is refused for that schedule, not unknown.
    unused = {"id": "later", "interval_s": 3600, "task": {**task, "queue": "later-q"}}
    assert client.post("/api/schedules", json=unused).status_code == 201
    scheduled = client.delete("/api/queues/later-q")
    assert scheduled.status_code == 409
    assert scheduled.get_json()["details"] == {"schedules": ["later"]}

    # A task naming it later adds it again, open and unlimited.
    again = client.post("/api/tasks", json={"type": "t", "duration_ms": 1, "queue": "mail"})
    assert again.status_code == 201
    shown = client.get("/api/queues/mail").get_json()
    assert (shown["state"], shown["counts"]["QUEUED"]) == ("active", 1)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'taskscheduler_queue_changes_total{change="deleted"} 2.0' in metrics


def test_the_queues_command_deletes_an_empty_queue(app: Flask) -> None:
    runner = app.test_cli_runner()
    assert runner.invoke(args=["queues", "pause", "typo"]).exit_code == 0
    done = runner.invoke(args=["queues", "delete", "typo"])
    assert done.exit_code == 0, done.output
    assert "deleted queue typo" in done.output
    refused = runner.invoke(args=["queues", "delete", "default"])
    assert refused.exit_code == 1 and "error: invalid_state:" in refused.output


def test_a_batch_past_the_most_queues_is_refused_before_its_rows_are_written(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.extensions["store"]
    with database.write(store.engine) as conn:
        queues.admit(conn, [f"q{k}" for k in range(MAX_QUEUES)], utcnow())
    written: list[Any] = []
    insert_rows = tasks.insert_rows

    def recorded(conn: Any, rows: Any) -> list[dict[str, Any]]:
        written.append(rows)
        return insert_rows(conn, rows)

    monkeypatch.setattr(tasks, "insert_rows", recorded)
    batch = [{"id": f"x{k}", "type": "t", "duration_ms": 1, "queue": "new"} for k in range(50)]

    over = app.test_client().post("/api/tasks/batch", json={"tasks": batch})

    assert over.status_code == 409, over.get_json()
    assert over.get_json()["code"] == "too_many_queues"
    assert written == []


def test_a_stored_id_is_named_before_a_new_queue_past_the_most_is_refused(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission refused for its new queue first looks for its stored task, as it does
    before refusing a full queue: a stored id is the answer, a replay or duplicate_id,
    also when it was stored after a batch's ids were looked up."""
    store = app.extensions["store"]
    with database.write(store.engine) as conn:
        queues.admit(conn, [f"q{k}" for k in range(MAX_QUEUES)], utcnow())
    client = app.test_client()
    stored = {"id": "x", "type": "t", "duration_ms": 1}
    assert client.post("/api/tasks", json=stored).status_code == 201
    other = {**stored, "duration_ms": 2, "queue": "new"}

    single = client.post("/api/tasks", json=other)

    inserting = tasks.inserting

    def stored_meanwhile(engine: Any, *args: Any, **kwargs: Any) -> Any:
        # Between the batch's lookup of its ids and its write: the id of `late` is stored.
        monkeypatch.setattr(tasks, "inserting", inserting)
        submissions.submit(engine, {"id": "late", "type": "t", "duration_ms": 1})
        return inserting(engine, *args, **kwargs)

    monkeypatch.setattr(tasks, "inserting", stored_meanwhile)
    late = {"id": "late", "type": "t", "duration_ms": 2, "queue": "new"}
    batch = client.post("/api/tasks/batch", json={"tasks": [late]})

    assert single.status_code == 409, single.get_json()
    assert single.get_json()["code"] == "duplicate_id"
    assert batch.status_code == 409, batch.get_json()
    assert batch.get_json()["code"] == "duplicate_id"
    assert batch.get_json()["details"]["fields"] == {"late": ["duration_ms", "queue"]}
    assert client.get("/api/queues/new").status_code == 404


def test_a_submission_past_the_most_queues_is_refused_and_stores_nothing(app: Flask) -> None:
    store = app.extensions["store"]
    with database.write(store.engine) as conn:
        queues.admit(conn, [f"q{k}" for k in range(MAX_QUEUES - 1)], utcnow())
    client = app.test_client()
    fits = client.post("/api/tasks", json={"type": "t", "duration_ms": 1, "queue": "last"})
    assert fits.status_code == 201
    over = client.post(
        "/api/tasks/batch",
        json={"tasks": [{"id": "x", "type": "t", "duration_ms": 1, "queue": "one-too-many"}]},
    )
    assert over.status_code == 409, over.get_json()
    assert over.get_json()["code"] == "too_many_queues"
    assert client.get("/api/tasks/x").status_code == 404
    refused = client.post("/api/queues/another/pause")
    assert refused.status_code == 409
    # Known queues still take tasks.
    assert (
        client.post("/api/tasks", json={"type": "t", "duration_ms": 1, "queue": "q3"}).status_code
        == 201
    )


def test_counts_per_queue_follow_every_change(app: Flask) -> None:
    store = app.extensions["store"]
    for k in range(6):
        _add(store, f"a{k}", "a")
        _add(store, f"b{k}", "b" if k % 2 else None)
    claimed = _claim(store, limit=4)
    register(store, "w1")
    for task_id in claimed[:2]:
        (claim,) = [c for c in store.owned("w1") if c.id == task_id]
        store.finish(claim, DONE)
    counts.fold(store.engine)
    with database.read(store.engine) as conn:
        kept = counts.by_queue(conn)
        actual: dict[str, dict[str, int]] = {}
        for queue, status, n in conn.execute(
            text("SELECT queue, status, count(*) FROM tasks GROUP BY queue, status")
        ):
            actual.setdefault(queue, {})[status] = n
    for queue, statuses in actual.items():
        assert {s: n for s, n in kept[queue].items() if n} == statuses


# -- claims ---------------------------------------------------------------------------


def test_a_paused_queue_starts_nothing_until_resumed(app: Flask) -> None:
    store = app.extensions["store"]
    engine = parts.engine(app)
    _add(store, "mail", "mail", priority=10)
    _add(store, "plain")
    queues.pause(engine, "mail")
    assert _claim(store) == ["plain"]
    assert _claim(store) == []
    assert row(store, "mail").status == "QUEUED"
    queues.resume(engine, "mail")
    assert _claim(store) == ["mail"]


def test_pausing_default_leaves_other_queues_running(app: Flask) -> None:
    store = app.extensions["store"]
    _add(store, "d1")
    _add(store, "x1", "x")
    queues.pause(parts.engine(app), "default")
    assert _claim(store) == ["x1"]


def test_a_concurrency_limit_caps_running_tasks_and_frees_slots_as_they_end(app: Flask) -> None:
    store = app.extensions["store"]
    for k in range(5):
        _add(store, f"r{k}", "reports")
    _add(store, "other")
    queues.set_limits(
        parts.engine(app), "reports", {"concurrency_limit": 2, "rate_limit_per_s": None}
    )
    assert _claim(store) == ["r0", "r1", "other"]
    assert _claim(store, "w2") == []
    (first,) = [c for c in store.owned("w1") if c.id == "r0"]
    result = store.cycle("w1", [(first, DONE)], 10)
    assert [c.id for c in result.claims] == ["r2"]
    assert _running(store, "reports") == 2


def test_priority_order_holds_across_queues(app: Flask) -> None:
    store = app.extensions["store"]
    _add(store, "low-a", "a", priority=1)
    _add(store, "high-b", "b", priority=9)
    _add(store, "mid-default", priority=5)
    queues.set_limits(parts.engine(app), "a", {"concurrency_limit": 5, "rate_limit_per_s": None})
    assert _claim(store, limit=2) == ["high-b", "mid-default"]
    assert _claim(store, limit=2) == ["low-a"]


def test_a_rate_limit_spends_tokens_and_says_when_the_next_one_comes(app: Flask) -> None:
    store = app.extensions["store"]
    for k in range(6):
        _add(store, f"s{k}", "slow")
    queues.set_limits(parts.engine(app), "slow", {"concurrency_limit": None, "rate_limit_per_s": 2})
    register(store, "w1")
    t0 = utcnow() + timedelta(seconds=5)
    first = store.cycle("w1", [], 10, t0)
    assert [c.id for c in first.claims] == ["s0", "s1"]  # a full bucket: one second's worth
    empty = store.cycle("w1", [], 10, t0)
    assert empty.claims == [] and empty.next_due == t0 + timedelta(seconds=0.5)
    half = store.cycle("w1", [], 10, t0 + timedelta(seconds=0.5))
    assert [c.id for c in half.claims] == ["s2"]
    later = store.cycle("w1", [], 10, t0 + timedelta(seconds=30))
    assert [c.id for c in later.claims] == ["s3", "s4"]  # the bucket holds two at most


def test_an_instance_serving_some_queues_claims_only_from_them(app: Flask) -> None:
    store = app.extensions["store"]
    _add(store, "a1", "a")
    _add(store, "b1", "b")
    _add(store, "d1")
    assert _claim(store, queues=["b"]) == ["b1"]
    assert _claim(store, queues=["a", "nothing-yet"]) == ["a1"]
    assert _claim(store) == ["d1"]


def test_an_instance_running_some_types_honours_queues_too(app: Flask) -> None:
    store = app.extensions["store"]
    for queue in ("a", "b"):
        for task_type in ("x", "y"):
            for k in range(3):
                data = {"id": f"{queue}{task_type}{k}", "type": task_type, "duration_ms": 1}
                submissions.submit(store.engine, {**data, "queue": queue})
    engine = parts.engine(app)
    queues.set_limits(engine, "a", {"concurrency_limit": 2, "rate_limit_per_s": None})
    queues.pause(engine, "b")
    assert _claim(store, types=["x", "y"]) == ["ax0", "ax1"]
    queues.resume(engine, "b")
    assert _claim(store, types=["y"]) == ["by0", "by1", "by2"]


def test_the_claim_walks_each_open_queue_by_its_own_index(app: Flask) -> None:
    store = app.extensions["store"]
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL's is checked in test_store")
    sql = scheduler_sql.claim_sql("sqlite", 0, 0, 2)
    params = {"now": "x", "limit": 10, "w": "w", "q0": "a", "l0": 2, "q1": "b", "l1": 10}
    with database.read(store.engine) as conn:
        plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    assert sum("USING INDEX ix_tasks_ready (queue=?)" in step for step in plan) == 2, plan
    typed = scheduler_sql.claim_sql("sqlite", 0, 1, 1)
    params = {"now": "x", "limit": 10, "w": "w", "q0": "a", "l0": 2, "t0": "x"}
    with database.read(store.engine) as conn:
        plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + typed, params)]
    assert any("ix_tasks_ready_type (queue=? AND type=?)" in step for step in plan), plan


def test_a_queue_limit_of_two_holds_across_three_instances_claiming_at_once(
    database_url: str,
) -> None:
    """Three instances (an app each, as three processes would have) claim and finish from
    one limited queue as fast as they can; the database never shows more than 2 RUNNING."""
    apps = [build_app(database_url, {}) for _ in range(3)]
    stores: list[Store] = [a.extensions["store"] for a in apps]
    for k in range(60):
        _add(stores[0], f"t{k:02d}", "tight")
    queues.set_limits(stores[0].engine, "tight", {"concurrency_limit": 2, "rate_limit_per_s": None})
    seen: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def instance(k: int) -> None:
        store, worker = stores[k], f"w{k}"
        register(store, worker)
        try:
            held: list[Any] = []
            for _ in range(80):
                barrier.wait(timeout=30)
                result = store.cycle(worker, [(c, DONE) for c in held], 2)
                held = result.claims
                seen.append(_running(store, "tight"))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=instance, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    with database.read(stores[0].engine) as conn:
        done = conn.execute(text("SELECT count(*) FROM tasks WHERE status = 'COMPLETED'"))
        completed = done.scalar_one()
    for store in stores:
        store.engine.dispose()
    assert not errors, errors
    assert max(seen) == 2  # reached, and never passed
    assert completed == 60


@pytest.mark.postgres
def test_a_pause_waits_for_the_claims_under_way_and_none_after_it_starts_a_task(
    postgres_url: str,
) -> None:
    """A claim that read the queue as open before a pause must commit before the pause is
    answered: otherwise a task would start after its queue's pause was acknowledged."""
    app = build_app(postgres_url, {})
    store: Store = app.extensions["store"]
    engine = store.engine
    _add(store, "first", "mail")
    _add(store, "second", "mail")
    register(store, "w1")
    at_claim = threading.Event()
    release = threading.Event()
    claimer_pid: list[int] = []

    def hold(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "SET status = 'RUNNING'" in statement and not at_claim.is_set():
            claimer_pid.append(conn.connection.driver_connection.info.backend_pid)
            at_claim.set()
            assert release.wait(timeout=30)

    event.listen(engine, "before_cursor_execute", hold)
    claimed: list[str] = []
    claimer = threading.Thread(target=lambda: claimed.extend(c.id for c in store.claim("w1", 1)))
    claimer.start()
    assert at_claim.wait(timeout=30)
    paused = threading.Event()

    def pause() -> None:
        queues.pause(engine, "mail")
        paused.set()

    pauser = threading.Thread(target=pause)
    pauser.start()
    monitor = Monitor(engine)
    try:
        # The pause queues behind the claim in progress (its connection is the pool's
        # other one: find whichever backend of ours waits for a lock).
        deadline = time.monotonic() + 30
        while not monitor.any_waiting_for_lock(exclude=claimer_pid[0]):
            assert time.monotonic() < deadline, "the pause did not wait for the claim"
            assert not paused.is_set(), "the pause was answered while a claim was under way"
            time.sleep(0.01)
        assert not paused.is_set()
    finally:
        release.set()
        claimer.join(timeout=30)
        pauser.join(timeout=30)
        monitor.close()
        event.remove(engine, "before_cursor_execute", hold)
    assert claimed == ["first"] and paused.is_set()
    assert _claim(store, "w1") == []  # paused from now on
    assert row(store, "second").status == "QUEUED"
    engine.dispose()


@pytest.mark.postgres
def test_a_deletion_waits_for_a_submission_naming_the_queue_and_then_refuses(
    postgres_url: str,
) -> None:
    """Two sessions interleaved: a submission naming `mail` is stopped after its insert,
    before its commit; the deletion runs meanwhile. Without the queues' lock shared by the
    submission, the deletion counted no task, deleted the row, and the task committed into
    a queue without a row, which no claim ever walks."""
    app = build_app(postgres_url, {})
    engine = app.extensions["store"].engine
    queues.pause(engine, "mail")  # the row exists before either starts
    inserted, release, hold = _held_before_commit()
    body = {"id": "m", "type": "t", "duration_ms": 1, "queue": "mail"}
    submitter = threading.Thread(target=lambda: submissions.submit(engine, body))
    outcome: list[BaseException | None] = []

    def delete() -> None:
        try:
            queues.delete(engine, "mail")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    deleter = threading.Thread(target=delete)
    monitor = Monitor(engine)
    with faults.injected("notify.announce", hold):
        submitter.start()
        try:
            assert inserted.wait(timeout=30)
            deleter.start()
            deadline = time.monotonic() + 30
            while not monitor.any_waiting_for_lock(exclude=0):
                assert time.monotonic() < deadline, "the deletion did not wait for the submission"
                assert not outcome, f"the deletion ended during the submission: {outcome}"
                time.sleep(0.01)
        finally:
            release.set()
            submitter.join(timeout=30)
            if deleter.is_alive() or outcome:
                deleter.join(timeout=30)
            monitor.close()
    ((refused,),) = [outcome]
    assert isinstance(refused, InvalidState) and "holds 1 task" in refused.message, refused
    shown = queues.get(engine, "mail")
    assert (shown["counts"]["QUEUED"], shown["state"]) == (1, "paused")  # row and settings
    engine.dispose()


@pytest.mark.postgres
def test_a_pause_waits_for_no_submission_naming_a_queue(postgres_url: str) -> None:
    """A submission naming a queue holds the queue names' lock (shared) to its commit, as
    long as a 100,000-task batch's COPY: a pause, which takes the queues' lock alone,
    must not wait for it (nor then hold back every claim behind it)."""
    app = build_app(postgres_url, {})
    engine = app.extensions["store"].engine
    for name in ("mail", "other"):  # known: adding a queue is one at a time, on its own
        queues.resume(engine, name)
    inserted, release, hold = _held_before_commit()
    body = {"id": "m", "type": "t", "duration_ms": 1, "queue": "mail"}
    submitter = threading.Thread(target=lambda: submissions.submit(engine, body))
    paused = threading.Event()
    pauser = threading.Thread(target=lambda: (queues.pause(engine, "other"), paused.set()))
    with faults.injected("notify.announce", hold):
        submitter.start()
        try:
            assert inserted.wait(timeout=30)
            pauser.start()
            pauser.join(timeout=10)
            assert paused.is_set(), "the pause waited for the submission in flight"
        finally:
            release.set()
            submitter.join(timeout=30)
            pauser.join(timeout=30)
    assert queues.get(engine, "mail")["counts"]["QUEUED"] == 1
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["pause", "resume", "set_limits"])
def test_a_change_of_a_queue_deleted_under_it_adds_the_queue_again(
    postgres_url: str, change: str
) -> None:
    """Two sessions interleaved: a pause (or a resume, or new limits) of an existing queue is
    stopped after it found the row there, before it locks it; a deletion of that queue runs
    and commits meanwhile. The change found no row to lock and failed with a 500; it now
    adds the queue again, as if it had come after the deletion."""
    app = build_app(postgres_url, {})
    engine = app.extensions["store"].engine
    queues.resume(engine, "mail")  # the row exists before either starts
    at_lock, release = threading.Event(), threading.Event()

    def hold(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "FOR UPDATE" in statement and "FROM queues" in statement and not at_lock.is_set():
            at_lock.set()
            assert release.wait(timeout=30)

    actions: dict[str, Callable[[], queues.Changed]] = {
        "pause": lambda: queues.pause(engine, "mail"),
        "resume": lambda: queues.resume(engine, "mail"),
        "set_limits": lambda: queues.set_limits(
            engine, "mail", {"concurrency_limit": 3, "rate_limit_per_s": None}
        ),
    }
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(actions[change]())
        except BaseException as exc:
            outcome.append(exc)

    event.listen(engine, "before_cursor_execute", hold)
    changer = threading.Thread(target=run)
    try:
        changer.start()
        assert at_lock.wait(timeout=30)
        queues.delete(engine, "mail")  # commits while the change waits before its lock
    finally:
        release.set()
        changer.join(timeout=30)
        event.remove(engine, "before_cursor_execute", hold)
    ((changed,),) = [outcome]
    assert isinstance(changed, queues.Changed), changed
    shown = queues.get(engine, "mail")
    expected = {"pause": "paused", "resume": "active", "set_limits": "active"}[change]
    assert (shown["name"], shown["state"]) == ("mail", expected), shown
    assert shown["concurrency_limit"] == (3 if change == "set_limits" else None), shown
    engine.dispose()


def test_blockers_name_what_a_queue_holds_a_task_back_by(app: Flask) -> None:
    store = app.extensions["store"]
    engine = parts.engine(app)
    client = app.test_client()
    register(store, "w1")

    def blockers(task_id: str) -> list[dict[str, Any]]:
        answer = client.get(f"/api/tasks/{task_id}/blockers")
        assert answer.status_code == 200, answer.get_json()
        return list(answer.get_json()["blockers"])

    _add(store, "r1", "reports")
    _add(store, "r2", "reports")
    queues.pause(engine, "reports")
    assert blockers("r1") == [{"kind": "queue_paused", "queue": "reports"}]
    queues.resume(engine, "reports")
    assert blockers("r1") == [{"kind": "no_slot"}]
    queues.set_limits(engine, "reports", {"concurrency_limit": 1, "rate_limit_per_s": None})
    assert _claim(store) == ["r1"]
    assert blockers("r2") == [{"kind": "queue_limit", "queue": "reports", "limit": 1}]
    queues.set_limits(engine, "reports", {"concurrency_limit": None, "rate_limit_per_s": 0.01})
    with database.write(engine) as conn:  # the bucket spent a moment ago
        conn.execute(
            text("UPDATE queues SET tokens = 0, tokens_at = :at WHERE name = 'reports'"),
            {"at": database.now(conn)},
        )
    (rate,) = blockers("r2")
    assert rate["kind"] == "queue_rate" and rate["queue"] == "reports" and rate["until"]
    with database.write(engine) as conn:
        conn.execute(text("DELETE FROM scheduler_instances"))
    now = utcnow()
    store.register(
        {
            "id": "w2",
            "hostname": "h",
            "pid": 0,
            "started_at": now,
            "heartbeat_at": now,
            "queues": '["default"]',
        }
    )
    assert blockers("r2") == [{"kind": "queue_not_served", "queue": "reports"}]


def test_pause_takes_no_body_and_cors_allows_put(app: Flask) -> None:
    client = app.test_client()
    refused = client.post("/api/queues/q/pause", data=b"garbage", content_type="text/plain")
    assert refused.status_code == 400 and refused.get_json()["code"] == "invalid_parameter"
    assert client.post("/api/queues/q/pause", json={}).status_code == 200
    assert client.post("/api/queues/q/resume").status_code == 200
    preflight = client.options("/api/queues/q", headers={"Origin": "https://example.org"})
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]


def test_an_empty_list_of_queues_to_serve_is_refused() -> None:
    from app.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="names no queue"):
        Settings.from_env({"SCHEDULER_QUEUES": " , "})
    assert Settings.from_env({"SCHEDULER_QUEUES": "a, b,a"}).scheduler_queues == ("a", "b")


def test_health_says_which_queues_the_scheduler_serves(make_app: AppFactory) -> None:
    """An operator looking at one instance saw its types, not its SCHEDULER_QUEUES."""
    every = running_app(make_app).test_client().get("/health").get_json()
    assert every["scheduler"]["queues"] is None
    some = running_app(make_app, SCHEDULER_QUEUES="b,a").test_client().get("/health").get_json()
    assert some["scheduler"]["queues"] == ["b", "a"]

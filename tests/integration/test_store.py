"""The exact SQL: claims, fences, propagation and recovery, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import warnings
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from app.statuses import Status
from app.storage import database, dbfaults, scheduler_sql
from app.storage.database import utcnow
from app.storage.propagation import settle
from app.storage.reads import newest_first
from app.storage.store import Claim, NotRegistered, Outcome, Store
from app.storage.tables import tasks
from tests.support.apps import AppFactory, build_app
from tests.support.store import add, claim_all, postgres_plans, register, row, set_fields
from tests.support.waiting import wait_for


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def test_claim_takes_priority_then_fifo_up_to_the_limit(store: Store) -> None:
    for name in ("a", "b", "c", "d"):
        add(store, name)
    set_fields(store, "c", priority=5)
    assert [c.id for c in claim_all(store, limit=2)] == ["c", "a"]
    assert [c.id for c in claim_all(store, limit=5)] == ["b", "d"]
    assert claim_all(store) == []
    claimed = row(store, "a")
    assert (claimed.status, claimed.attempts, claimed.worker) == ("RUNNING", 1, "w1")


def test_a_claim_carries_its_wait_since_the_task_was_created(store: Store) -> None:
    add(store, "old")
    set_fields(store, "old", created_at=utcnow() - timedelta(minutes=10))
    (claim,) = claim_all(store)
    # Computed by the database from the row's own times: exact to the millisecond.
    waited = (row(store, "old").started_at - row(store, "old").created_at).total_seconds()
    assert claim.waited_s == pytest.approx(waited, abs=0.01)
    assert 600 <= claim.waited_s < 3600


def test_claim_waits_for_dependencies_and_run_at(store: Store) -> None:
    add(store, "parent")
    add(store, "child", "parent")
    add(store, "later")
    later = utcnow() + timedelta(hours=1)
    set_fields(store, "later", run_at=later, not_before=later)
    assert [c.id for c in claim_all(store)] == ["parent"]
    assert row(store, "child").pending_deps == 1


def test_concurrent_claimers_never_share_a_task(store: Store) -> None:
    total = 120
    for i in range(total):
        add(store, f"t{i}")
    seen: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(worker: str) -> None:
        try:
            while batch := store.claim(worker, 7):
                seen[worker] = seen.get(worker, []) + [c.id for c in batch]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    for i in range(4):
        register(store, f"w{i}")
    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    claimed = [task_id for ids in seen.values() for task_id in ids]
    assert sorted(claimed) == sorted(f"t{i}" for i in range(total))


def test_finish_applies_only_while_the_row_holds_the_attempt(store: Store) -> None:
    add(store, "a")
    (claim,) = claim_all(store)
    done = Outcome(Status.COMPLETED, result={"n": 1})
    stale_attempt = claim._replace(attempt=claim.attempt + 1)
    other_worker = claim._replace(worker="intruder")
    assert not store.finish(stale_attempt, done, utcnow())
    assert not store.finish(other_worker, done, utcnow())
    assert row(store, "a").status == "RUNNING"
    assert store.finish(claim, done, utcnow())
    assert not store.finish(claim, Outcome(Status.FAILED, error="late"), utcnow())
    final = row(store, "a")
    assert (final.status, final.result, final.error) == ("COMPLETED", {"n": 1}, None)


def claimed_twice(store: Store, task_id: str) -> tuple[Claim, Claim]:
    """Claim `task_id` on w1, put it back unspent, claim it on w1 again; return both claims."""
    (first,) = [c for c in claim_all(store) if c.id == task_id]
    assert store.requeue(first)
    (second,) = [c for c in claim_all(store) if c.id == task_id]
    assert (first.worker, second.worker, second.attempt) == ("w1", "w1", first.attempt + 1)
    return first, second


def test_a_plain_completion_is_fenced_by_both_worker_and_attempt(store: Store) -> None:
    # An attempt that returned nothing is completed by one statement for many tasks; its
    # fence must still refuse an older attempt of the same instance, and the current
    # attempt number presented by another instance.
    add(store, "a")
    stale, current = claimed_twice(store, "a")
    foreign = current._replace(worker="intruder")
    for refused in (stale, foreign):
        assert not store.finish(refused, Outcome(Status.COMPLETED), utcnow())
        unchanged = row(store, "a")
        assert (unchanged.status, unchanged.worker, unchanged.attempts) == ("RUNNING", "w1", 2)
        assert unchanged.finished_at is None
    assert store.finish(current, Outcome(Status.COMPLETED), utcnow())
    assert row(store, "a").status == "COMPLETED"


def test_a_failure_is_fenced_by_both_worker_and_attempt(store: Store) -> None:
    # A failure with budget left goes back to the queue with a backoff and a spent try: a
    # stale or foreign one must do neither.
    add(store, "a")
    set_fields(store, "a", max_attempts=3, retry_backoff_ms=60_000)
    stale, current = claimed_twice(store, "a")
    foreign = current._replace(worker="intruder")
    failed = Outcome(Status.FAILED, error="late", error_code="handler_error")
    for refused in (stale, foreign):
        assert not store.finish(refused, failed, utcnow())
        unchanged = row(store, "a")
        assert (unchanged.status, unchanged.worker, unchanged.failures) == ("RUNNING", "w1", 0)
        assert (unchanged.error, unchanged.not_before) == (None, None)
    assert store.finish(current, failed, utcnow())
    assert (row(store, "a").status, row(store, "a").failures) == ("QUEUED", 1)


def test_completion_counts_down_a_diamond(store: Store) -> None:
    add(store, "a")
    add(store, "b", "a")
    add(store, "c", "a")
    add(store, "d", "b", "c")
    assert row(store, "d").pending_deps == 2
    for expected in (["a"], ["b", "c"], ["d"]):
        claims = claim_all(store)
        assert [c.id for c in claims] == expected
        for claim in claims:
            assert store.finish(claim, Outcome(Status.COMPLETED), utcnow())
    assert row(store, "d").status == "COMPLETED"


def test_two_dependencies_ending_in_one_pass_count_their_dependent_down_by_two(
    store: Store,
) -> None:
    # One statement counts down every dependent of the tasks a pass ended: each dependent
    # loses as many as it had among them, not one.
    for name in ("a", "b", "c"):
        add(store, name)
    add(store, "d", "a", "b", "c")
    claims = {c.id: c for c in claim_all(store)}
    done = Outcome(Status.COMPLETED)
    first = store.cycle("w1", [(claims["a"], done)], 10)
    assert (first.applied, first.claims, row(store, "d").pending_deps) == ([True], [], 2)
    second = store.cycle("w1", [(claims["b"], done), (claims["c"], done)], 10)
    assert second.applied == [True, True]
    assert [c.id for c in second.claims] == ["d"]  # ready, and claimed in the same pass


def test_failure_propagates_transitively_and_spares_other_branches(store: Store) -> None:
    add(store, "root")
    add(store, "mid", "root")
    add(store, "leaf", "mid")
    add(store, "other")
    add(store, "joined", "mid", "other")
    claims = {c.id: c for c in claim_all(store)}
    failed = Outcome(Status.FAILED, error="boom", error_code="handler_error")
    assert store.finish(claims["root"], failed, utcnow())
    assert row(store, "root").status == "FAILED"
    said = {
        "mid": "Dependency root failed",
        "leaf": "Dependency mid will not run because root failed",
        "joined": "Dependency mid will not run because root failed",
    }
    for task_id, culprit in said.items():
        dependent = row(store, task_id)
        assert dependent.status == "UPSTREAM_FAILED"
        assert dependent.error_code == "upstream_failed"
        assert dependent.error.startswith(culprit)
        assert dependent.finished_at is not None
    assert row(store, "other").status == "RUNNING"


def test_failure_wins_over_cancel_and_cancel_cascades(store: Store) -> None:
    add(store, "f")
    add(store, "c")
    add(store, "both", "f", "c")
    add(store, "only_cancelled", "c")
    add(store, "below", "only_cancelled")
    with database.write(store.engine) as conn:
        conn.execute(update(tasks).where(tasks.c.id == "f").values(status="FAILED"))
        conn.execute(update(tasks).where(tasks.c.id == "c").values(status="CANCELLED"))
        settle(conn, {"f": Status.FAILED, "c": Status.CANCELLED}, utcnow())
    assert row(store, "both").status == "UPSTREAM_FAILED"
    assert row(store, "only_cancelled").error_code == "upstream_cancelled"
    assert row(store, "below").status == "CANCELLED"


def test_propagation_reaches_a_fan_out_wider_than_one_statement(store: Store) -> None:
    add(store, "root")
    now = utcnow()
    rows = [
        {"id": f"d{i}", "type": "t", "duration_ms": 1, "status": "QUEUED", "pending_deps": 1}
        for i in range(1200)
    ]
    defaults = {"payload": {}, "created_at": now, "updated_at": now}
    with database.write(store.engine) as conn:
        conn.execute(tasks.insert(), [{**defaults, **r} for r in rows])
        conn.execute(
            text(
                "INSERT INTO task_dependencies (task_id, dependency_id, position)"
                " VALUES (:t, 'root', 0)"
            ),
            [{"t": r["id"]} for r in rows],
        )
    (claim,) = claim_all(store)
    assert store.finish(claim, Outcome(Status.FAILED, error="x"), utcnow())
    with database.read(store.engine) as conn:
        counts = dict(
            conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status")).all()
        )
    assert counts == {"FAILED": 1, "UPSTREAM_FAILED": 1200}


def test_requeue_is_fenced_and_keeps_the_budget(store: Store) -> None:
    add(store, "a")
    (claim,) = claim_all(store)
    assert not store.requeue(claim._replace(worker="other"))
    assert store.requeue(claim)
    requeued = row(store, "a")
    assert (requeued.status, requeued.attempts, requeued.failures) == ("QUEUED", 1, 0)
    assert not store.finish(claim, Outcome(Status.COMPLETED), utcnow())
    (again,) = claim_all(store, worker="w2")
    assert (again.attempt, again.worker) == (2, "w2")


def test_reap_fails_an_interrupted_attempt_without_budget(store: Store) -> None:
    add(store, "a")
    add(store, "b", "a")
    claim_all(store, worker="dead")
    assert store.reap("dead", "the process exited") == ["a"]
    interrupted = row(store, "a")
    assert (interrupted.status, interrupted.error_code) == ("FAILED", "interrupted")
    assert "Attempt 1 was interrupted: the process exited" in interrupted.error
    assert row(store, "b").status == "UPSTREAM_FAILED"


def test_reap_retries_when_the_budget_allows(store: Store) -> None:
    add(store, "a")
    set_fields(store, "a", max_attempts=2, retry_backoff_ms=60_000)
    claim_all(store, worker="dead")
    before = utcnow()
    assert store.reap("dead", "lease expired") == ["a"]
    retried = row(store, "a")
    assert (retried.status, retried.failures, retried.attempts) == ("QUEUED", 1, 1)
    assert retried.not_before >= before + timedelta(seconds=60)
    assert retried.run_at is None  # the submitter's run_at is not the backoff
    assert claim_all(store) == []  # the backoff holds it back


def test_failed_attempt_with_budget_is_requeued_after_a_backoff(store: Store) -> None:
    add(store, "a")
    set_fields(store, "a", max_attempts=3, retry_backoff_ms=1)
    (claim,) = claim_all(store)
    assert store.finish(claim, Outcome(Status.FAILED, error="once"), utcnow())
    assert row(store, "a").status == "QUEUED"
    (second,) = store.claim("w1", 1, utcnow() + timedelta(seconds=1))
    assert second.attempt == 2 and second.failures == 1


def test_an_error_inside_a_transaction_leaves_no_lock_behind(store: Store) -> None:
    add(store, "a")
    with pytest.raises(RuntimeError), database.write(store.engine) as conn:
        conn.execute(select(tasks))  # a statement left unfinished
        raise RuntimeError("fail in the middle")
    add(store, "b")  # would fail at once with SQLITE_BUSY_SNAPSHOT if the snapshot leaked
    assert [c.id for c in claim_all(store)] == ["a", "b"]


def test_a_sqlite_write_holds_the_write_lock_before_its_first_statement(sqlite_url: str) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
    # when another writer got in between; a write transaction must take the lock up front.
    store = build_app(sqlite_url, {}).extensions["store"]
    other = sqlite3.connect(store.engine.url.database, timeout=0, isolation_level=None)
    try:
        with (
            database.write(store.engine),
            pytest.raises(sqlite3.OperationalError, match="database is locked"),
        ):
            other.execute("BEGIN IMMEDIATE")  # as another process's writer would
        other.execute("BEGIN IMMEDIATE")  # free again once the write has committed
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.engine.dispose()


@pytest.mark.parametrize(
    ("url", "lifo"),
    [
        ("sqlite:////tmp/tasks.db", True),
        ("sqlite:///relative.db", True),
        ("sqlite:///file:/tmp/tasks.db?uri=true", True),
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        ("sqlite:///file:jobs?mode=memory&cache=shared&uri=true", False),
        ("sqlite:///file:jobs?mode=%6Demory&cache=shared&uri=true", False),
    ],
)
def test_only_a_sqlite_file_gets_its_pool_in_lending_order(url: str, lifo: bool) -> None:
    """The pool of a database in memory takes no lending order: given one, the engine
    cannot be made. Which pool a URL gets is SQLAlchemy's call, on the decoded query."""
    options = database.engine_options(url, 3)
    assert options.get("pool_use_lifo", False) is lifo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's notice on mode=memory's pool
        create_engine(url, **options).dispose()


def _begins(engine: Any) -> tuple[list[str], Any]:
    """Record the BEGIN statements `engine`'s connections send."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> tuple[str, Any]:
        if sql.startswith("BEGIN"):
            sent.append(sql)
        return sql, params

    event.listen(engine, "before_cursor_execute", record, retval=True)
    return sent, record


def test_a_sqlite_write_waits_for_another_processs_lock_then_runs(sqlite_url: str) -> None:
    """Another process's write lock: the write tries again until it is free (polling it,
    not in SQLite's busy handler), then commits, its connection's busy timeout restored."""
    store = build_app(sqlite_url, {}).extensions["store"]
    other = sqlite3.connect(store.engine.url.database, timeout=0, isolation_level=None)
    sent, record = _begins(store.engine)
    done = threading.Event()
    try:
        other.execute("BEGIN IMMEDIATE")  # as another process's writer would
        writer = threading.Thread(target=lambda: (add(store, "w"), done.set()), daemon=True)
        writer.start()
        wait_for(lambda: sent.count("BEGIN IMMEDIATE") >= 3, timeout=10, what="retries")
        assert not done.is_set()  # still waiting, nothing written
        other.execute("ROLLBACK")
        writer.join(10)
        assert done.is_set()
        assert row(store, "w").status == "QUEUED"
        with store.engine.connect() as conn:
            timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert timeout == database.SQLITE_BUSY_TIMEOUT_MS
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
        other.close()
        store.engine.dispose()


def test_a_sqlite_write_still_gives_up_at_the_busy_timeout(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = build_app(sqlite_url, {}).extensions["store"]
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    other = sqlite3.connect(store.engine.url.database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="database is locked"):
            add(store, "late")
        other.execute("ROLLBACK")
        add(store, "after")  # the connection left with its busy handler off was dropped
        with store.engine.connect() as conn:
            timeouts = {conn.exec_driver_sql("PRAGMA busy_timeout").scalar()}
        assert timeouts == {database.SQLITE_BUSY_TIMEOUT_MS}
        assert row(store, "after").status == "QUEUED"
    finally:
        other.close()
        store.engine.dispose()


def test_writes_after_writes_send_no_busy_timeout_and_reads_wait_as_before(
    sqlite_url: str,
) -> None:
    """A write runs with SQLite's busy handler off (it polls for the lock itself, then
    holds it); a connection is set only when its next transaction needs otherwise: a
    writer writing again (the scheduler, pass after pass) sends no PRAGMA, and a read
    still waits up to SQLITE_BUSY_TIMEOUT_MS for a lock."""
    store = build_app(sqlite_url, {}).extensions["store"]
    pragmas: list[str] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> tuple[str, Any]:
        if sql.startswith("PRAGMA busy_timeout="):  # a setting, not a reading
            pragmas.append(sql)
        return sql, params

    event.listen(store.engine, "before_cursor_execute", record, retval=True)
    try:
        store.engine.dispose()  # one connection for all that follows
        add(store, "first")
        assert pragmas == ["PRAGMA busy_timeout=0"]
        for k in range(3):
            add(store, f"again-{k}")
        assert pragmas == ["PRAGMA busy_timeout=0"]
        with database.write(store.engine) as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 0
        with database.read(store.engine) as conn:
            waits = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert waits == database.SQLITE_BUSY_TIMEOUT_MS
        with database.read(store.engine) as conn:
            conn.exec_driver_sql("SELECT 1")
        assert pragmas == [
            "PRAGMA busy_timeout=0",
            f"PRAGMA busy_timeout={database.SQLITE_BUSY_TIMEOUT_MS}",
        ]
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
        store.engine.dispose()


def test_a_stale_snapshot_is_not_tried_again(sqlite_url: str) -> None:
    """SQLITE_BUSY_SNAPSHOT fails every try: it must fail at once, as it did before."""
    store = build_app(sqlite_url, {}).extensions["store"]
    sent, record = _begins(store.engine)

    def stale(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> tuple[str, Any]:
        if sql == "BEGIN IMMEDIATE":
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY | (2 << 8)  # type: ignore[attr-defined]
            raise error
        return sql, params

    event.listen(store.engine, "before_cursor_execute", stale, retval=True)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            add(store, "s")
        assert sent.count("BEGIN IMMEDIATE") == 1
    finally:
        event.remove(store.engine, "before_cursor_execute", stale)
        event.remove(store.engine, "before_cursor_execute", record)
        store.engine.dispose()


def query_plan(store: Store, sql: str, params: dict[str, Any]) -> list[str]:
    with database.read(store.engine) as conn:
        return [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]


def test_the_sqlite_claim_walks_the_ready_index_without_sorting(sqlite_url: str) -> None:
    store = build_app(sqlite_url, {}).extensions["store"]
    params = {"now": "2026-01-01 00:00:00.000000", "limit": 10, "w": "w", "q0": "q", "l0": 10}
    plan = query_plan(store, scheduler_sql.claim_sql("sqlite"), params)
    assert "SEARCH tasks USING INDEX ix_tasks_ready (queue=?)" in plan, plan
    assert not any("TEMP B-TREE" in step or "ix_tasks_status_seq" in step for step in plan)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"statuses": ("FAILED",)}, "ix_tasks_status_seq (status=?)"),
        ({"task_type": "t"}, "ix_tasks_type_seq (type=?)"),
        ({"batch_id": "b"}, "ix_tasks_batch_seq (batch_id=?)"),
        (
            {"statuses": ("COMPLETED",), "task_type": "t"},
            "ix_tasks_type_status_seq (type=? AND status=?)",
        ),
        (
            {"statuses": ("FAILED",), "batch_id": "b"},
            "ix_tasks_batch_status_seq (batch_id=? AND status=?)",
        ),
        (
            {"statuses": ("FAILED",), "batch_id": "b", "before": 9},
            "ix_tasks_batch_status_seq (batch_id=? AND status=? AND seq<?)",
        ),
    ],
)
def test_a_sqlite_page_walks_one_index_in_its_order(
    sqlite_url: str, filters: dict[str, Any], index: str
) -> None:
    # Newest first straight from the index: a page costs its own rows, however many tasks
    # of the status (or the type) are stored.
    store = build_app(sqlite_url, {}).extensions["store"]
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        sent.append((sql, params))

    query = {"statuses": (), "task_type": None, "batch_id": None, "before": None, **filters}
    with database.read(store.engine) as conn:
        event.listen(conn, "before_cursor_execute", record)
        newest_first(conn, **query, limit=101)
        event.remove(conn, "before_cursor_execute", record)
    ((sql, params),) = sent
    with database.read(store.engine) as conn:
        plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    assert plan == [f"SEARCH tasks USING INDEX {index}"], plan
    store.engine.dispose()


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_tasks_status_seq (status=?)"),
        (
            {"task_type": "t", "before": 9},
            "ix_tasks_type_status_seq (type=? AND status=? AND seq<?)",
        ),
        ({"batch_id": "b"}, "ix_tasks_batch_status_seq (batch_id=? AND status=?)"),
    ],
)
def test_a_sqlite_page_of_several_statuses_walks_each_status_in_its_index(
    sqlite_url: str, filters: dict[str, Any], index: str
) -> None:
    """Each status's newest tasks straight from its index, merged: `status IN (...)`
    ordered by seq would walk the seq order through every other status's tasks."""
    store = build_app(sqlite_url, {}).extensions["store"]
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        sent.append((sql, params))

    query = {"task_type": None, "batch_id": None, "before": None, **filters}
    with database.read(store.engine) as conn:
        event.listen(conn, "before_cursor_execute", record)
        newest_first(conn, statuses=("FAILED", "QUEUED", "CANCELLED"), **query, limit=101)
        event.remove(conn, "before_cursor_execute", record)
    ((sql, params),) = sent
    with database.read(store.engine) as conn:
        plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
    walks = [step for step in plan if step.startswith("SEARCH tasks")]
    assert walks == [f"SEARCH tasks USING INDEX {index}"] * 3, plan
    assert not any(step.startswith("SCAN tasks") for step in plan), plan
    store.engine.dispose()


def test_sqlite_propagation_and_completion_find_rows_by_id(sqlite_url: str) -> None:
    store = build_app(sqlite_url, {}).extensions["store"]
    statements = [
        (scheduler_sql.count_down_sql("sqlite", 2), {"e0": "a", "e1": "b"}),
        (
            scheduler_sql.complete_sql("sqlite", 2),
            {"w": "w", "now": "x", "i0": "a", "a0": 1, "i1": "b", "a1": 1},
        ),
    ]
    for sql, params in statements:
        plan = query_plan(store, sql, params)
        assert any(s.startswith("SEARCH tasks USING INDEX") and "(id=?)" in s for s in plan)
        assert not any("ix_tasks_status_seq" in step for step in plan), plan


@pytest.mark.postgres
def test_postgres_walks_a_pass_rows_by_their_own_indexes_whatever_its_statistics_say(
    postgres_url: str,
) -> None:
    """Statistics taken while every task had finished made QUEUED look empty, and the
    claim, completion, count-down and promotion of every pass walked a status index over
    all queued tasks (45 ms a claim at 5,000 queued), until autovacuum analyzed the table
    again."""
    engine = build_app(postgres_url, {}).extensions["store"].engine
    insert = (
        "INSERT INTO tasks (id, type, duration_ms, status, payload, priority, pending_deps,"
        " attempts, failures, max_attempts, retry_backoff_ms, trigger_rule, cancel_requested,"
        " created_at, updated_at) SELECT '{p}' || g, 't', 1, '{s}', '{{}}', 0, 0, 0, 0, 1, 0,"
        " 'all_success', false, now(), now() FROM generate_series(1, {n}) g"
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(insert.format(p="done", s="COMPLETED", n=500))
        conn.exec_driver_sql("ANALYZE tasks")
        conn.exec_driver_sql(insert.format(p="new", s="QUEUED", n=5000))
    statements = [
        (
            scheduler_sql.claim_sql("postgresql"),
            {"limit": 16, "w": "w1", "now": None, "q0": "default", "l0": 16},
        ),
        (
            scheduler_sql.complete_sql("postgresql", 2),
            {"w": "w1", "host": "h", "now": None, "i0": "new1", "a0": 1, "i1": "new2", "a1": 1},
        ),
        (scheduler_sql.count_down_sql("postgresql", 2), {"e0": "new1", "e1": "new2"}),
    ]
    walks = [
        (scheduler_sql.promote_sql("postgresql"), {"now": utcnow(), "limit": 1000}),
        (scheduler_sql.next_run_at_sql("postgresql"), {"now": utcnow()}),
    ]
    with engine.begin() as conn:
        plans = postgres_plans(conn, statements)
        walked = postgres_plans(conn, walks)
    engine.dispose()
    for plan in plans:
        assert "ix_tasks_status" not in plan and "Seq Scan on tasks" not in plan, plan
        assert "pk_tasks" in plan or "uq_tasks_id" in plan, plan
    assert "ix_tasks_ready" in plans[0]  # the claim's walk
    for plan in walked:
        assert "ix_tasks_status" not in plan and "ix_tasks_delayed" in plan, plan


def test_only_a_registered_instance_claims(store: Store) -> None:
    add(store, "a")
    with pytest.raises(NotRegistered):
        store.claim("ghost", 1)
    assert row(store, "a").status == "QUEUED"


def test_a_claim_of_exactly_its_limit_checks_membership_too(store: Store) -> None:
    # The claim that takes all it asked for is the one that asks no separate question
    # on SQLite: the claim itself must refuse an unregistered worker.
    add(store, "a")
    add(store, "b")
    with pytest.raises(NotRegistered):
        store.claim("ghost", 2)
    assert [row(store, t).status for t in ("a", "b")] == ["QUEUED", "QUEUED"]
    register(store, "w1")
    assert [c.id for c in store.claim("w1", 2)] == ["a", "b"]


def test_a_pass_statements_meet_cursor_listeners_and_fail_as_statements_do(
    store: Store,
) -> None:
    # Sent to the driver directly on SQLite, the pass's statements must still meet the
    # listeners that tests and the simulation hook in, and fail with SQLAlchemy's errors,
    # which the fault classifier and the pass's retry rely on.
    add(store, "a")
    register(store, "w1")
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    def fail(*_: Any) -> None:
        raise OperationalError("statement", {}, Exception("the database is unavailable"))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        (claim,) = store.cycle("w1", [], 1).claims
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert claim.id == "a"
    assert any("SET status = 'RUNNING'" in sql for sql in seen), seen
    if store.engine.dialect.name == "sqlite":
        assert "BEGIN IMMEDIATE" in seen
    event.listen(store.engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(OperationalError):
            store.cycle("w1", [(claim, Outcome(Status.COMPLETED))], 1)
    finally:
        event.remove(store.engine, "before_cursor_execute", fail)
    assert row(store, "a").status == "RUNNING"
    with pytest.raises(DBAPIError) as raised, database.write(store.engine) as conn:
        database.driver_execute(conn, "SELECT * FROM no_such_table")
    assert isinstance(raised.value.orig, sqlite3.Error | psycopg.Error)
    assert dbfaults.classify(raised.value) is None  # a bug, not an outage


def test_a_lease_reap_spares_an_instance_that_heartbeated_meanwhile(store: Store) -> None:
    add(store, "a")
    claim_all(store, worker="slow")
    long_ago = utcnow() - timedelta(hours=1)
    assert store.reap("slow", "lease expired", stale_before=long_ago) == []
    assert row(store, "a").status == "RUNNING"
    assert store.heartbeat("slow")
    assert store.reap("slow", "lease expired", stale_before=utcnow() + timedelta(hours=1)) == ["a"]
    assert not store.heartbeat("slow")  # forgotten: it must rejoin under a new identity


# -- delayed tasks: kept out of the ready index until promoted ---------------------------


def test_a_claim_promotes_what_fell_due_and_leaves_the_rest_delayed(store: Store) -> None:
    now = utcnow()
    for name, due in (("due", now - timedelta(seconds=1)), ("later", now + timedelta(hours=1))):
        add(store, name)
        set_fields(store, name, run_at=due, not_before=due)
    assert [c.id for c in claim_all(store)] == ["due"]
    assert row(store, "due").run_at == now - timedelta(seconds=1)  # the submitter's, kept
    assert row(store, "later").not_before == now + timedelta(hours=1)
    assert claim_all(store) == []


def test_the_ready_index_holds_no_delayed_task(sqlite_url: str) -> None:
    # The claim walks ix_tasks_ready (see the plan test above): a delayed task in it would
    # be walked, and passed over, by every claim until it falls due.
    store = build_app(sqlite_url, {}).extensions["store"]
    later = utcnow() + timedelta(hours=1)
    for name in ("a", "b", "c"):
        add(store, name)
        set_fields(store, name, run_at=later, not_before=later)
    add(store, "ready")
    with database.write(store.engine) as conn:
        conn.exec_driver_sql("ANALYZE ix_tasks_ready")  # counts the index's entries
        sql = "SELECT stat FROM sqlite_stat1 WHERE idx = 'ix_tasks_ready'"
        entries = int(conn.exec_driver_sql(sql).scalar_one().split()[0])
    assert entries == 1
    store.engine.dispose()


def test_the_sqlite_promotion_walks_the_delayed_index(sqlite_url: str) -> None:
    store = build_app(sqlite_url, {}).extensions["store"]
    params = {"now": "2026-01-01 00:00:00.000000", "limit": 10}
    plan = query_plan(store, scheduler_sql.promote_sql("sqlite"), params)
    assert any("USING INDEX ix_tasks_delayed (not_before>? AND not_before<?)" in s for s in plan)
    assert not any("TEMP B-TREE" in step or "SCAN tasks" in step for step in plan), plan
    store.engine.dispose()


def test_a_pass_that_promotes_a_full_batch_asks_for_another_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.storage.store.PROMOTE_BATCH", 2)
    past = utcnow() - timedelta(seconds=1)
    for name in ("b1", "b2", "b3"):
        add(store, name)
        set_fields(store, name, type="b", run_at=past, not_before=past)
    register(store, "w1")
    first = store.cycle("w1", [], 1, types=["a"])
    assert (first.claims, first.next_due) == ([], first.now)  # more may be due: pass again
    second = store.cycle("w1", [], 1, types=["a"])
    assert (second.claims, second.next_due) == ([], None)
    assert [c.id for c in claim_all(store, worker="w2")] == ["b1", "b2", "b3"]


def test_a_pass_still_sleeps_until_the_next_delayed_task(store: Store) -> None:
    later = utcnow() + timedelta(minutes=5)
    add(store, "later")
    set_fields(store, "later", run_at=later, not_before=later)
    register(store, "w1")
    assert store.cycle("w1", [], 4).next_due == later


@pytest.mark.postgres
def test_on_postgresql_promotion_passes_over_a_row_another_holds(postgres_url: str) -> None:
    store = build_app(postgres_url, {}).extensions["store"]
    past = utcnow() - timedelta(seconds=1)
    for name in ("held", "free"):
        add(store, name)
        set_fields(store, name, run_at=past, not_before=past)
    with store.engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM tasks WHERE id = 'held' FOR UPDATE"))
        with database.write(store.engine) as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")  # a wait would fail, not hang
            assert scheduler_sql.promote(conn, database.now(conn), 10) == 1
        holder.rollback()
    assert (row(store, "held").not_before, row(store, "free").not_before) == (past, None)
    assert [c.id for c in claim_all(store)] == ["held", "free"]
    store.engine.dispose()

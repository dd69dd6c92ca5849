"""Cascades as set operations: a failure, a cancel or a retry costs a few statements
however deep the graph below it, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, text, update

from app.services import submissions
from app.statuses import Status
from app.storage import cascade, database, propagation, roots
from app.storage.database import utcnow
from app.storage.propagation import settle
from app.storage.store import Outcome, Store
from app.storage.tables import tasks
from tests.support.apps import AppFactory, build_app
from tests.support.store import add, claim_all, postgres_plans, row

DEPTH = 300
# Statements one cascade may run, whatever its depth: the walk, the writes, the counts.
MOST = 25


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Collect every statement sent to the database meanwhile."""
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def chain(store: Store, depth: int = DEPTH) -> None:
    """Store a chain c0 <- c1 <- ... written in one transaction, as the batch API would."""
    now = utcnow()
    rows = [
        {
            "id": f"c{i}",
            "type": "t",
            "duration_ms": 1,
            "status": "QUEUED",
            "pending_deps": 1 if i else 0,
            "payload": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(depth)
    ]
    edges = [{"t": f"c{i}", "d": f"c{i - 1}"} for i in range(1, depth)]
    with database.write(store.engine) as conn:
        conn.execute(tasks.insert(), rows)
        sql = "INSERT INTO task_dependencies (task_id, dependency_id, position) VALUES (:t, :d, 0)"
        conn.execute(text(sql), edges)


def statuses(store: Store) -> dict[str, int]:
    with database.read(store.engine) as conn:
        found = conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
        return {status: int(n) for status, n in found}


def test_a_failure_cascades_down_a_deep_chain_in_a_few_statements(store: Store) -> None:
    chain(store)
    (root,) = claim_all(store)
    with statements(store.engine) as sent:
        assert store.finish(root, Outcome(Status.FAILED, error="boom"))
    assert len(sent) <= MOST, len(sent)
    assert statuses(store) == {"FAILED": 1, "UPSTREAM_FAILED": DEPTH - 1}
    last = row(store, f"c{DEPTH - 1}")
    # It names the task that failed itself, not only its dependency (which never ran).
    assert last.error == (
        f"Dependency c{DEPTH - 2} will not run because c0 failed, so this task will not run."
    )
    assert row(store, "c1").error == "Dependency c0 failed, so this task will not run."


def test_a_cancel_and_a_retry_of_a_deep_chains_root_take_a_few_statements(
    store: Store, client: FlaskClient
) -> None:
    chain(store)
    with statements(store.engine) as sent:
        assert client.post("/api/tasks/c0/cancel").status_code == 200
    assert len(sent) <= MOST, len(sent)
    assert statuses(store) == {"CANCELLED": DEPTH}
    assert row(store, "c1").error_code == "upstream_cancelled"

    with statements(store.engine) as sent:
        assert client.post("/api/tasks/c0/retry").status_code == 200
    assert len(sent) <= MOST, len(sent)
    assert statuses(store) == {"QUEUED": DEPTH}
    assert [row(store, f"c{i}").pending_deps for i in (0, 1, DEPTH - 1)] == [0, 1, 1]


def test_the_walks_to_the_root_causes_take_a_few_statements_however_deep(
    store: Store, client: FlaskClient
) -> None:
    """They asked the database once per level: 45 s for the blockers of a 20,000-deep
    chain on PostgreSQL, and a refused retry held its locks for 6 s."""
    chain(store)
    last = f"c{DEPTH - 1}"
    with statements(store.engine) as sent:
        answer = client.get(f"/api/tasks/{last}/blockers").get_json()
    assert (answer["root_causes"], answer["root_causes_truncated"]) == (["c0"], False)
    assert len(sent) <= MOST, len(sent)

    assert client.post("/api/tasks/c0/cancel").status_code == 200
    with statements(store.engine) as sent:
        answer = client.get(f"/api/tasks/{last}/blockers").get_json()
    assert (answer["root_causes"], answer["root_causes_truncated"]) == (["c0"], False)
    assert len(sent) <= MOST, len(sent)

    with statements(store.engine) as sent:
        refused = client.post(f"/api/tasks/{last}/retry")
    assert (refused.status_code, refused.get_json()["details"]["root"]) == (409, "c0")
    assert len(sent) <= MOST, len(sent)


def test_a_walk_cut_short_says_so(
    store: Store, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its limit the walk stops; the answer says more causes may lie below."""
    chain(store, 30)
    add(store, "ready")
    add(store, "both", "c29", "ready")
    monkeypatch.setattr(roots, "MAX_CAUSE_WALK", 10)
    answer = client.get("/api/tasks/both/blockers").get_json()
    assert (answer["root_causes"], answer["root_causes_truncated"]) == (["ready"], True)
    monkeypatch.setattr(roots, "MAX_CAUSE_WALK", 32)
    answer = client.get("/api/tasks/both/blockers").get_json()
    assert (answer["root_causes"], answer["root_causes_truncated"]) == (["c0", "ready"], False)


def test_cancelling_a_running_root_cuts_off_the_chain_and_frees_all_done_waiters(
    store: Store, client: FlaskClient
) -> None:
    chain(store, 50)
    body = {"id": "cleanup", "type": "t", "duration_ms": 1, "trigger_rule": "all_done"}
    submissions.submit(store.engine, {**body, "dependencies": ["c49"]})
    claim_all(store)
    assert client.post("/api/tasks/c0/cancel").status_code == 200
    assert row(store, "c0").status == "RUNNING"
    assert statuses(store)["CANCELLED"] == 49
    cleanup = row(store, "cleanup")
    assert (cleanup.status, cleanup.pending_deps) == ("QUEUED", 0)


def test_a_failure_anywhere_above_wins_over_a_cancel_nearer(store: Store) -> None:
    """`both` is one level below a cancel and two below a failure, in one settle."""
    add(store, "f")
    add(store, "c")
    add(store, "mid", "f")
    add(store, "both", "c", "mid")
    with database.write(store.engine) as conn:
        conn.execute(update(tasks).where(tasks.c.id == "f").values(status="FAILED"))
        conn.execute(update(tasks).where(tasks.c.id == "c").values(status="CANCELLED"))
        settle(conn, {"f": Status.FAILED, "c": Status.CANCELLED}, utcnow())
    both = row(store, "both")
    assert (both.status, both.error) == (
        "UPSTREAM_FAILED",
        "Dependency mid will not run because f failed, so this task will not run.",
    )


def test_a_retry_leaves_behind_a_dependent_that_another_failure_stops(
    store: Store, client: FlaskClient
) -> None:
    """Below the retried root, `x` also waits for `other`, which failed: `x` and all
    below it stay; the rest of the chain comes back."""
    chain(store, 6)
    add(store, "other")
    add(store, "x", "c2", "other")
    add(store, "below_x", "x")
    claims = {c.id: c for c in claim_all(store)}
    assert store.finish(claims["other"], Outcome(Status.FAILED, error="other"))
    assert store.finish(claims["c0"], Outcome(Status.FAILED, error="root"))
    assert client.post("/api/tasks/c0/retry").status_code == 200
    assert {row(store, f"c{i}").status for i in range(6)} == {"QUEUED"}
    assert [row(store, t).status for t in ("x", "below_x")] == ["UPSTREAM_FAILED"] * 2


@pytest.mark.postgres
@pytest.mark.parametrize("shape", ["chains", "fan_out"])
def test_on_postgresql_the_walks_read_edges_by_index_once_the_tables_are_analysed(
    postgres_url: str, shape: str
) -> None:
    """Planned from PostgreSQL's statistics, the walk of a failure that reaches nothing
    hashed every stored edge (a recursive query's rows are guessed far too high), and
    where most edges share one dependency every probe was expected to return them all."""
    engine = build_app(postgres_url, {}).extensions["store"].engine
    # Chains of 100 (q100, q200, ... have no dependents), or one task's 20,000 dependents.
    edges = {
        "chains": "SELECT 'q' || g, 'q' || (g - 1), 0 FROM generate_series(2, 20000) g"
        " WHERE g % 100 <> 1",
        "fan_out": "SELECT 'q' || g, 'q1', 0 FROM generate_series(2, 20000) g",
    }
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, type, duration_ms, status, payload, priority,"
                " pending_deps, attempts, failures, max_attempts, retry_backoff_ms,"
                " trigger_rule, cancel_requested, created_at, updated_at)"
                " SELECT 'q' || g, 't', 1, 'QUEUED', '{}', 0, 1, 0, 0, 1, 0,"
                " 'all_success', false, now(), now() FROM generate_series(1, 20000) g"
            )
        )
        sql = "INSERT INTO task_dependencies (task_id, dependency_id, position) "
        conn.execute(text(sql + edges[shape]))
        conn.execute(text("ANALYZE tasks"))
        conn.execute(text("ANALYZE task_dependencies"))
    walks = [
        (propagation._reach_sql("postgresql"), {"seeds": '{"q100": "f"}'}),
        (cascade._caught_sql("postgresql"), {"ids": '["q100"]'}),
        *[
            (roots.walk_sql("postgresql", walk, 100), {"start": '["q100"]'})
            for walk in (roots.unfinished_walk, roots.failed_walk)
        ],
        (roots._retry_sql("postgresql"), {"start": "q100", "cap": 100}),
    ]
    with engine.begin() as conn, database.by_index(conn):
        plans = postgres_plans(conn, walks)
    engine.dispose()
    for plan in plans:
        assert "Seq Scan" not in plan and "Hash" not in plan, plan


@pytest.mark.postgres
@pytest.mark.parametrize("analysed", ["QUEUED", "CANCELLED"])
def test_on_postgresql_the_walks_to_the_root_causes_read_by_id_whatever_the_statistics(
    postgres_url: str, analysed: str
) -> None:
    """With statistics taken while every task was QUEUED, a walk of cancelled tasks read
    every task of a status at each step (six minutes down a 20,000-deep chain); taken
    while every task had ended, a walk of unfinished ones would."""
    app = build_app(postgres_url, {})
    store: Store = app.extensions["store"]
    chain(store, 300)
    with store.engine.begin() as conn:
        conn.execute(update(tasks).values(status=analysed, error_code="upstream_cancelled"))
        conn.execute(text("ANALYZE tasks"))
        conn.execute(text("ANALYZE task_dependencies"))
    walks = [
        *[
            (roots.walk_sql("postgresql", walk, 100), {"start": '["c299"]'})
            for walk in (roots.unfinished_walk, roots.failed_walk)
        ],
        (roots._retry_sql("postgresql"), {"start": "c299", "cap": 100}),
    ]
    with store.engine.begin() as conn, database.by_index(conn):
        plans = postgres_plans(conn, walks)
    store.engine.dispose()
    for plan in plans:
        assert "ix_tasks_status" not in plan and "Join Filter" not in plan, plan


@pytest.mark.postgres
def test_on_postgresql_a_cascade_writes_what_it_reached_by_id_whatever_the_statistics(
    postgres_url: str,
) -> None:
    """Statistics taken before a burst of tasks make QUEUED look nearly empty. The writes
    of a cascade then read every QUEUED task once for each row they wrote: a cancel of a
    20,000-deep chain held its locks for 9 s, 17 s in the write alone."""
    app = build_app(postgres_url, {})
    store: Store = app.extensions["store"]
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE tasks"))
    chain(store, 200)
    add(store, "after", "c199")
    add(store, "beside", "c5")
    with database.write(store.engine) as conn:
        conn.execute(
            update(tasks).where(tasks.c.id.in_(["after", "beside"])).values(trigger_rule="all_done")
        )
    plans: list[str] = []

    def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().split(" ", 1)[0] in ("SELECT", "UPDATE", "DELETE", "WITH"):
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(line for (line,) in cursor.fetchall()))

    client = app.test_client()
    event.listen(store.engine, "before_cursor_execute", explain)
    try:
        assert client.post("/api/tasks/c0/cancel").status_code == 200
        assert client.post("/api/tasks/c0/retry").status_code == 200
        (root,) = claim_all(store)
        assert store.finish(root, Outcome(Status.FAILED, error="boom"))
    finally:
        event.remove(store.engine, "before_cursor_execute", explain)
    assert statuses(store)["UPSTREAM_FAILED"] == 199
    store.engine.dispose()
    assert len(plans) >= 10, plans
    for plan in plans:  # the cascades' statements, and every other one they ran
        assert "ix_tasks_status" not in plan, plan


@pytest.mark.postgres
def test_on_postgresql_the_edge_ids_are_declared_mostly_distinct(postgres_url: str) -> None:
    """So that one wide fan-out stored does not make every probe of the edges by id look
    like a read of the whole table to the planner."""
    engine = build_app(postgres_url, {}).extensions["store"].engine
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT attname, attoptions FROM pg_attribute"
            " WHERE attrelid = 'task_dependencies'::regclass AND attname IN"
            " ('task_id', 'dependency_id') ORDER BY attname"
        ).all()
    engine.dispose()
    assert {name: "n_distinct=-0.5" in options for name, options in found} == {
        "dependency_id": True,
        "task_id": True,
    }

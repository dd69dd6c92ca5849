"""Tasks per status from the counts the triggers keep: equal to a real count after every
kind of change, on both backends, and read without touching the tasks table."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, event, func, insert, select, text

from app import faults
from app.runtime.countfold import CountFolder
from app.services import actions, batch
from app.statuses import Status
from app.storage import counts, database, retention
from app.storage.database import utcnow
from app.storage.store import Claim, Outcome, Store
from app.storage.tables import count_deltas, tasks
from tests.support.apps import AppFactory, build_app, postgres_schema
from tests.support.interleave import Explorer, Scenario, Step, tune_sessions
from tests.support.store import add, claim_all, set_fields


def real_counts(engine: Engine) -> dict[str, int]:
    """Count the tasks by status the slow way, in one statement."""
    found = {s.value: 0 for s in Status}
    with database.read(engine) as conn:
        query = select(tasks.c.status, func.count()).group_by(tasks.c.status)
        found.update({status: int(n) for status, n in conn.execute(query)})
    return found


def read_counts(engine: Engine) -> dict[str, int]:
    with database.read(engine) as conn:
        return counts.by_status(conn)


def read_queued(engine: Engine) -> int:
    with database.read(engine) as conn:
        return counts.queued(conn)


def assert_exact(engine: Engine) -> dict[str, int]:
    real = real_counts(engine)
    assert read_counts(engine) == real
    assert read_queued(engine) == real["QUEUED"]
    return real


def pending_deltas(engine: Engine) -> int:
    with database.read(engine) as conn:
        return int(conn.execute(select(func.count()).select_from(count_deltas)).scalar_one())


@pytest.fixture
def store(make_app: AppFactory) -> Store:
    """A store on a fresh database, once per backend."""
    return make_app().extensions["store"]


def test_every_change_of_a_task_keeps_the_counts_exact(store: Store) -> None:
    engine = store.engine
    assert assert_exact(engine) == {s.value: 0 for s in Status}
    add(store, "a")
    add(store, "b", "a")
    add(store, "c", "b")
    batch.submit_batch(
        engine,
        {"tasks": [{"id": f"x{i}", "type": "t", "duration_ms": 1} for i in range(3)]},
    )
    assert assert_exact(engine)["QUEUED"] == 6

    claims = {c.id: c for c in claim_all(store)}
    assert set(claims) == {"a", "x0", "x1", "x2"}
    assert assert_exact(engine)["RUNNING"] == 4
    store.report_progress(claims["x0"], 50)  # an update that moves no status
    assert_exact(engine)

    # A failure cascades down the chain; a completion; a cancel of a running task, and of
    # a queued one with a dependent.
    store.finish(claims["a"], Outcome(Status.FAILED, error="boom"))
    store.finish(claims["x0"], Outcome(Status.COMPLETED))
    actions.cancel(engine, "x1")
    add(store, "q")
    add(store, "q2", "q")
    actions.cancel(engine, "q")
    found = assert_exact(engine)
    assert (found["FAILED"], found["UPSTREAM_FAILED"], found["COMPLETED"]) == (1, 2, 1)
    assert found["CANCELLED"] >= 1

    actions.retry(engine, "a")  # requeues the chain
    assert assert_exact(engine)["QUEUED"] == 3

    # A dead instance's attempts end as failed.
    assert sorted(store.reap("w1", "the process exited")) == ["x1", "x2"]
    assert assert_exact(engine)["RUNNING"] == 0

    # A prune deletes the finished tasks; a raw insert, as the bench writes them, counts too.
    assert retention.prune(engine, timedelta(0), now=utcnow() + timedelta(days=1)) > 0
    assert_exact(engine)
    with database.write(engine) as conn:
        now = utcnow()
        conn.execute(
            insert(tasks),
            [
                {"id": f"raw{i}", "type": "t", "duration_ms": 1, "status": "COMPLETED"}
                | {"created_at": now, "updated_at": now}
                for i in range(5)
            ],
        )
    assert assert_exact(engine)["COMPLETED"] == 5
    set_fields(store, "raw0", status="CANCELLED")
    assert_exact(engine)


def test_sqlite_keeps_the_statement_journals_of_trigger_writes_in_memory(
    sqlite_url: str,
) -> None:
    """Each row a statement inserts fires a trigger that writes another table, so SQLite
    opens a statement journal per row: in a temporary file, a file system call per task
    submitted (it slowed submission by half), unless temporary storage is in memory."""
    app = build_app(sqlite_url, {})
    try:
        with database.read(app.extensions["store"].engine) as conn:
            assert conn.exec_driver_sql("PRAGMA temp_store").scalar_one() == 2  # MEMORY
    finally:
        app.extensions["store"].engine.dispose()


def test_the_counts_never_read_the_tasks_table(store: Store) -> None:
    """Their cost does not grow with the tasks stored."""
    add(store, "a")
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        read_counts(store.engine)
        read_queued(store.engine)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    reads = [s for s in seen if "SELECT" in s.upper()]
    assert len(reads) == 2
    assert not [s for s in reads if " tasks" in s.replace("\n", " ")], reads


def test_admission_reads_the_queue_from_the_counts(make_app: AppFactory) -> None:
    app = make_app(MAX_QUEUED_TASKS="2")
    client = app.test_client()
    body = {"type": "t", "duration_ms": 1}
    assert client.post("/api/tasks", json={"id": "a", **body}).status_code == 201
    assert client.post("/api/tasks", json={"id": "b", **body}).status_code == 201
    refused = client.post("/api/tasks", json={"id": "c", **body})
    assert refused.status_code == 429
    assert refused.get_json()["details"] == {"limit": 2, "queued": 2, "asked": 1}
    claim_all(app.extensions["store"], limit=1)
    assert client.post("/api/tasks", json={"id": "c", **body}).status_code == 201


def test_the_dashboard_and_metrics_show_the_counts(make_app: AppFactory) -> None:
    app = make_app()
    store = app.extensions["store"]
    add(store, "a")
    add(store, "b")
    claim_all(store, limit=1)
    client = app.test_client()
    shown = client.get("/dashboard/counts").get_json()
    assert (shown["QUEUED"], shown["RUNNING"], shown["COMPLETED"]) == (1, 1, 0)
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'taskscheduler_tasks{status="QUEUED"} 1.0' in scraped
    assert 'taskscheduler_tasks{status="RUNNING"} 1.0' in scraped


# -- PostgreSQL: deltas, folds ------------------------------------------------------------


@pytest.fixture
def pg_app(postgres_url: str) -> Iterator[Flask]:
    app = build_app(postgres_url, {})
    yield app
    app.extensions["store"].engine.dispose()


@pytest.mark.postgres
def test_deployments_in_other_schemas_do_not_share_their_locks(pg_app: Flask) -> None:
    """The fold's lock (and the queue's, and the cancels' and retries') is this
    deployment's: another schema of the same database folding does not make this one
    skip its turn."""
    other_schema = postgres_schema()
    other = build_app(next(other_schema), {})
    holding, release = threading.Event(), threading.Event()

    def hold(**_: Any) -> None:
        if threading.current_thread().name == "other-fold":
            holding.set()
            assert release.wait(10)

    try:
        add(pg_app.extensions["store"], "mine")
        with faults.injected("database.commit", hold):
            folding = threading.Thread(
                target=counts.fold, args=(other.extensions["store"].engine,), name="other-fold"
            )
            folding.start()
            assert holding.wait(10)  # the other deployment's fold holds its lock
            try:
                assert counts.fold(pg_app.extensions["store"].engine) >= 1
            finally:
                release.set()
                folding.join(10)
    finally:
        other.extensions["store"].engine.dispose()
        for _ in other_schema:  # drops the schema
            pass


@pytest.mark.postgres
def test_a_fold_moves_the_deltas_and_keeps_every_count(pg_app: Flask) -> None:
    store = pg_app.extensions["store"]
    engine = store.engine
    for name in "abcd":
        add(store, name)
    (first, *_) = claim_all(store, limit=2)
    store.finish(first, Outcome(Status.COMPLETED))
    before = assert_exact(engine)
    assert pending_deltas(engine) >= 4

    folder = CountFolder(store)
    assert folder.needed
    assert folder.run_once() >= 4
    assert pending_deltas(engine) == 0
    assert assert_exact(engine) == before
    assert folder.run_once() == 0

    add(store, "e")  # after a fold, the next changes are deltas again
    assert pending_deltas(engine) == 1
    assert assert_exact(engine)["QUEUED"] == 3


@pytest.mark.postgres
def test_an_update_that_moves_no_status_appends_no_delta(pg_app: Flask) -> None:
    store = pg_app.extensions["store"]
    add(store, "a")
    (claim,) = claim_all(store)
    counts.fold(store.engine)
    store.report_progress(claim, 40)
    set_fields(store, "a", priority=3)
    assert pending_deltas(store.engine) == 0


@pytest.mark.postgres
def test_a_reader_sees_the_counts_of_its_snapshot(pg_app: Flask) -> None:
    """Uncommitted changes are not counted; once committed, they are, folded or not."""
    store = pg_app.extensions["store"]
    engine = store.engine
    add(store, "a")
    with engine.connect() as writer:
        with writer.begin():
            now = utcnow()
            row = {"type": "t", "duration_ms": 1, "created_at": now, "updated_at": now}
            writer.execute(insert(tasks), [{"id": "b", **row}, {"id": "c", **row}])
            assert read_queued(engine) == 1
            assert counts.queued(writer) == 3  # its own changes, inside the transaction
        assert read_queued(engine) == 3
    counts.fold(engine)
    assert read_queued(engine) == 3
    with engine.connect() as conn:
        conn.execute(text("TRUNCATE tasks CASCADE"))
        conn.commit()
    assert assert_exact(engine)["QUEUED"] == 0


@pytest.mark.postgres
def test_two_folds_at_once_count_every_delta_once(pg_app: Flask) -> None:
    """One fold holds its transaction open; a second meanwhile neither waits nor moves
    anything twice, and one after the first commits finds nothing left."""
    store = pg_app.extensions["store"]
    engine = store.engine
    for name in "abc":
        add(store, name)
    claim_all(store, limit=1)
    expected = assert_exact(engine)
    held = threading.Event()
    release = threading.Event()
    moved: list[int] = []

    def slow_commit(_conn: Any) -> None:
        if threading.current_thread().name == "first fold":
            held.set()
            assert release.wait(10)

    event.listen(engine, "commit", slow_commit)
    first = threading.Thread(target=lambda: moved.append(counts.fold(engine)), name="first fold")
    try:
        first.start()
        assert held.wait(10)
        assert counts.fold(engine) == 0  # skips: the first holds the fold's lock
        assert read_counts(engine) == expected  # the first's moves are not committed yet
        release.set()
        first.join(10)
    finally:
        release.set()
        event.remove(engine, "commit", slow_commit)
    assert moved == [5]  # a row per submission, and the claim's QUEUED -1 and RUNNING +1
    assert counts.fold(engine) == 0
    assert assert_exact(engine) == expected
    assert pending_deltas(engine) == 0


# -- PostgreSQL: a fold raced against every other writer, at every pause point -------------


@dataclass
class Queue:
    """A scenario's world: three tasks submitted, A claimed and not folded yet."""

    engine: Engine
    claims: dict[str, Claim] = field(default_factory=dict)

    @property
    def claimed(self) -> set[str]:
        return set(self.claims)

    @property
    def store(self) -> Store:
        return Store(self.engine)


def three_queued_one_running(engine: Engine) -> Queue:
    world = Queue(engine)
    store = world.store
    counts.fold(engine)  # what earlier runs left: each run starts with the same deltas
    for name in ("A", "B", "C"):
        add(store, name)
    world.claims = {c.id: c for c in claim_all(store, limit=1)}
    assert set(world.claims) == {"A"}
    return world


def fold(label: str = "fold") -> Step:
    """A scheduler folds the count deltas; its answer is how many it moved."""
    return Step(label, lambda w: counts.fold(w.engine))


FOLD_RACES = [
    Scenario("fold_vs_fold", three_queued_one_running, fold(), fold("another fold")),
    Scenario(
        "fold_vs_submit",
        three_queued_one_running,
        fold(),
        Step("submit(D)", lambda w: add(w.store, "D")),
    ),
    Scenario(
        "fold_vs_claim",
        three_queued_one_running,
        fold(),
        Step("claim", lambda w: w.store.claim("w1", 100)),
    ),
    Scenario(
        "fold_vs_finish",
        three_queued_one_running,
        fold(),
        Step("finish(A)", lambda w: w.store.finish(w.claims["A"], Outcome(Status.COMPLETED))),
    ),
    Scenario(
        "fold_vs_cancel",
        three_queued_one_running,
        fold(),
        Step("cancel(B)", lambda w: actions.cancel(w.engine, "B")["status"]),
    ),
]


@pytest.fixture(scope="module")
def explorer() -> Iterator[Explorer]:
    with contextmanager(postgres_schema)() as url:
        app = build_app(url, {})
        engine: Engine = app.extensions["store"].engine
        tune_sessions(engine)
        found = Explorer(engine)
        try:
            yield found
        finally:
            found.close()
            engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("scenario", FOLD_RACES, ids=lambda s: s.name)
def test_a_fold_raced_against_a_writer_keeps_every_count(
    explorer: Explorer, scenario: Scenario
) -> None:
    """Every interleaving leaves the counts equal to the rows (the oracle checks them) and
    equals one of the two serial orders."""
    report = explorer.explore(scenario)
    assert report.runs == sum(len(steps) for steps in report.steps.values()) > 0
    if report.failed:
        pytest.fail(report.describe(), pytrace=False)
    assert report.deadlocks == []


@pytest.mark.postgres
def test_a_schema_qualified_update_from_another_search_path_counts(postgres_url: str) -> None:
    """An operator's session (default search_path) fixes a task in the app's schema by its
    qualified name: the triggers must still find the counts beside the tasks."""
    app = build_app(postgres_url, {})
    store = app.extensions["store"]
    add(store, "a")
    schema = re.search(r"search_path%3D(\w+)", postgres_url).group(1)
    base = postgres_url.split("?")[0]
    operator = create_engine(base)
    try:
        with operator.begin() as conn:
            conn.execute(text(f"UPDATE {schema}.tasks SET status = 'CANCELLED' WHERE id = 'a'"))
    finally:
        operator.dispose()
    with database.read(store.engine) as conn:
        assert counts.by_status(conn)["CANCELLED"] == 1
    store.engine.dispose()


@pytest.mark.postgres
def test_a_session_with_an_empty_search_path_can_write_tasks(postgres_url: str) -> None:
    """pg_dump's output starts with `set_config('search_path', '', false)`: a data-only
    restore into a migrated database fires the triggers with no search_path at all."""
    app = build_app(postgres_url, {})
    store = app.extensions["store"]
    schema = re.search(r"search_path%3D(\w+)", postgres_url).group(1)
    with store.engine.begin() as conn:
        conn.execute(text("SELECT pg_catalog.set_config('search_path', '', false)"))
        conn.execute(
            text(
                f"INSERT INTO {schema}.tasks (id, type, duration_ms, status, payload, priority,"
                " pending_deps, attempts, failures, max_attempts, retry_backoff_ms, timeout_ms,"
                " trigger_rule, cancel_requested, created_at, updated_at) VALUES ('r', 't', 1,"
                " 'QUEUED', '{}', 0, 0, 0, 0, 1, 0, 1000, 'all_success', false, now(), now())"
            )
        )
        conn.execute(text(f"SET search_path = {schema}"))
    with database.read(store.engine) as conn:
        assert counts.by_status(conn)["QUEUED"] == 1
    store.engine.dispose()

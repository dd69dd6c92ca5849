"""Retention on SQLite and PostgreSQL: what `prune` deletes, what it keeps, and edges."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Connection, Engine, event, select, text, update

from app import faults
from app.services import reads, submissions
from app.storage import database, retention
from app.storage.tables import deps, tasks
from tests.support.apps import AppFactory, build_app

WEEK = timedelta(days=7)
OLD = timedelta(days=8)
RECENT = timedelta(days=1)


@pytest.fixture
def engine(make_app: AppFactory) -> Engine:
    app: Flask = make_app()
    return app.extensions["store"].engine  # type: ignore[no-any-return]


def add(engine: Engine, task_id: str, *dependencies: str) -> None:
    data = {"id": task_id, "type": "t", "duration_ms": 1, "dependencies": list(dependencies)}
    assert submissions.submit(engine, data).created


def finish(engine: Engine, task_id: str, status: str, ago: timedelta | None) -> None:
    """Give a task a status and a finish time `ago` before now (None: no finish time)."""
    finished_at = None if ago is None else database.utcnow() - ago
    stmt = update(tasks).where(tasks.c.id == task_id).values(status=status, finished_at=finished_at)
    with database.write(engine) as conn:
        conn.execute(stmt)


def ids(engine: Engine) -> set[str]:
    with database.read(engine) as conn:
        return set(conn.execute(select(tasks.c.id)).scalars())


def edges(engine: Engine) -> set[tuple[str, str]]:
    with database.read(engine) as conn:
        return {(t, d) for t, d in conn.execute(select(deps.c.task_id, deps.c.dependency_id))}


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"])
def test_old_finished_tasks_are_pruned(engine: Engine, status: str) -> None:
    add(engine, "old")
    add(engine, "recent")
    finish(engine, "old", status, OLD)
    finish(engine, "recent", status, RECENT)

    assert retention.prune(engine, WEEK) == 1

    assert ids(engine) == {"recent"}


def test_unfinished_tasks_are_kept_whatever_their_finish_time(engine: Engine) -> None:
    for task_id in ("queued", "running", "requeued"):
        add(engine, task_id)
    finish(engine, "running", "RUNNING", None)
    # A retried task keeps no finish time, but the status alone must protect it.
    finish(engine, "requeued", "QUEUED", OLD)

    assert retention.prune(engine, WEEK) == 0

    assert ids(engine) == {"queued", "running", "requeued"}


def test_the_cut_off_is_now_minus_older_than(engine: Engine) -> None:
    add(engine, "a")
    finish(engine, "a", "COMPLETED", timedelta(0))
    with database.read(engine) as conn:
        finished = conn.execute(select(tasks.c.finished_at)).scalar_one()
    at_cut_off = finished.replace(tzinfo=UTC) + timedelta(hours=1)

    assert retention.prune(engine, timedelta(hours=1), now=at_cut_off) == 0
    later = at_cut_off + timedelta(seconds=1)
    assert retention.prune(engine, timedelta(hours=1), now=later) == 1
    assert ids(engine) == set()


@pytest.mark.parametrize("unfinished", ["QUEUED", "RUNNING"])
def test_a_finished_task_an_unfinished_one_depends_on_is_kept(
    engine: Engine, unfinished: str
) -> None:
    add(engine, "upstream")
    add(engine, "other")
    add(engine, "dependent", "upstream", "other")
    finish(engine, "upstream", "COMPLETED", OLD)
    finish(engine, "dependent", unfinished, None)

    assert retention.prune(engine, WEEK) == 0
    assert reads.get_task(engine, "dependent")["dependencies"] == ["upstream", "other"]

    finish(engine, "other", "COMPLETED", OLD)
    finish(engine, "dependent", "COMPLETED", OLD)
    assert retention.prune(engine, WEEK) == 3
    assert ids(engine) == set()


def test_edges_go_in_both_directions(engine: Engine) -> None:
    add(engine, "first")
    add(engine, "middle", "first")
    add(engine, "last", "middle")
    finish(engine, "first", "COMPLETED", RECENT)
    finish(engine, "middle", "COMPLETED", OLD)
    finish(engine, "last", "COMPLETED", RECENT)

    assert retention.prune(engine, WEEK) == 1

    assert ids(engine) == {"first", "last"}
    assert edges(engine) == set()
    assert reads.get_task(engine, "last")["dependencies"] == []


def test_pruning_a_whole_graph_leaves_no_edges(engine: Engine) -> None:
    add(engine, "a")
    add(engine, "b", "a")
    add(engine, "c", "a", "b")
    add(engine, "keep")
    add(engine, "d", "keep")
    for task_id in ("a", "b", "c", "d"):
        finish(engine, task_id, "COMPLETED", OLD)

    assert retention.prune(engine, WEEK) == 4

    assert ids(engine) == {"keep"}
    assert edges(engine) == set()


def test_prunes_in_chunks_one_transaction_each(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        add(engine, f"t{n}")
        finish(engine, f"t{n}", "COMPLETED", OLD + timedelta(minutes=n))
    add(engine, "recent")
    finish(engine, "recent", "COMPLETED", RECENT)
    transactions = count_transactions(monkeypatch)

    assert retention.prune(engine, WEEK, chunk=3) == 7

    assert ids(engine) == {"recent"}
    assert len(transactions) == 3  # 3 + 3 + 1


def chunk_sizes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, each_s: float, **kw: Any
) -> list[int]:
    """Prune as if every chunk took `each_s` seconds; return the size of each chunk."""
    ticks = iter(range(10_000))
    monkeypatch.setattr(retention.time, "monotonic", lambda: next(ticks) * each_s)
    sizes: list[int] = []
    with faults.injected("prune.chunk_committed", lambda size, **_: sizes.append(size)):
        retention.prune(engine, WEEK, **kw)
    return sizes


def test_a_slow_chunk_halves_the_next_and_a_quick_one_doubles_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def old_tasks(prefix: str) -> None:
        for n in range(30):
            add(engine, f"{prefix}{n}")
            finish(engine, f"{prefix}{n}", "COMPLETED", OLD + timedelta(minutes=n))

    monkeypatch.setattr(retention, "MIN_CHUNK", 2)
    old_tasks("slow")
    # Each chunk takes twice the budget: the next is half as large, down to the least.
    slow = chunk_sizes(engine, monkeypatch, 2 * retention.CHUNK_BUDGET_S, chunk=8)
    assert slow == [8, 4] + [2] * 9 + [2]  # 30 tasks, then a look that finds none left
    old_tasks("quick")
    monkeypatch.setattr(retention, "FIRST_CHUNK", 2)
    # Quick chunks grow up to the chunk size asked for, never past it.
    assert chunk_sizes(engine, monkeypatch, 0.0, chunk=8) == [2, 4, 8, 8, 8, 8]
    assert ids(engine) == set()


def test_chunks_split_tasks_that_finished_at_the_same_instant(engine: Engine) -> None:
    for n in range(5):
        add(engine, f"t{n}")
    # A cascade stamps every task it ends with one finish time.
    stmt = update(tasks).values(status="UPSTREAM_FAILED", finished_at=database.utcnow() - OLD)
    with database.write(engine) as conn:
        conn.execute(stmt)

    assert retention.prune(engine, WEEK, chunk=2) == 5

    assert ids(engine) == set()


def test_tasks_held_back_do_not_stop_later_chunks(engine: Engine) -> None:
    for n in range(3):
        add(engine, f"held{n}")
        finish(engine, f"held{n}", "COMPLETED", OLD + timedelta(days=1))
        add(engine, f"waiting{n}", f"held{n}")
    for n in range(5):
        add(engine, f"t{n}")
        finish(engine, f"t{n}", "COMPLETED", OLD)

    assert retention.prune(engine, WEEK, chunk=2) == 5

    assert ids(engine) == {f"held{n}" for n in range(3)} | {f"waiting{n}" for n in range(3)}
    assert len(edges(engine)) == 3


def test_older_than_must_not_be_negative(engine: Engine) -> None:
    with pytest.raises(ValueError, match="negative"):
        retention.prune(engine, timedelta(seconds=-1))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_skips_a_task_a_submission_is_reading(engine: Engine) -> None:
    add(engine, "busy")
    add(engine, "idle")
    finish(engine, "busy", "COMPLETED", OLD)
    finish(engine, "idle", "COMPLETED", OLD)
    with engine.connect() as conn, conn.begin():
        # What a submission naming `busy` as a dependency holds until it commits.
        conn.execute(text("SELECT id FROM tasks WHERE id = 'busy' FOR SHARE"))

        assert retention.prune(engine, WEEK) == 1

    assert ids(engine) == {"busy"}
    assert retention.prune(engine, WEEK) == 1


@pytest.mark.postgres
def test_postgres_plans_each_chunk_by_index(postgres_url: str) -> None:
    """No merge join is planned: costing one, PostgreSQL reads the index entries at the
    ends of `tasks.id` and the edges, where the tasks already pruned lie dead until a
    vacuum, so every chunk would plan slower than the one before."""
    app = build_app(postgres_url, {})
    engine = app.extensions["store"].engine
    for n in range(4):
        add(engine, f"t{n}", *([f"t{n - 1}"] if n else []))
        finish(engine, f"t{n}", "COMPLETED", OLD)
    seen: list[str] = []

    def record(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("DELETE FROM tasks"):  # asked of the chunk's own session
            setting = cursor.connection.execute("SHOW enable_mergejoin").fetchone()[0]
            seen.append(f"merge join {setting}")

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert retention.prune(engine, WEEK, chunk=2) == 4
    finally:
        event.remove(engine, "before_cursor_execute", record)
    engine.dispose()
    assert seen == ["merge join off", "merge join off"]


def count_transactions(monkeypatch: pytest.MonkeyPatch) -> list[Engine]:
    """Record each write transaction `prune` opens."""
    opened: list[Engine] = []
    real = database.write

    def write(engine: Engine) -> AbstractContextManager[Connection]:
        opened.append(engine)
        return real(engine)

    monkeypatch.setattr(retention.database, "write", write)
    return opened


def test_the_count_of_a_dry_run_bounds_what_prune_deletes(engine: Engine) -> None:
    for task_id in ("done", "failed", "needed", "recent"):
        add(engine, task_id)
    add(engine, "waiting", "needed")
    add(engine, "kept-by", "failed")
    finish(engine, "done", "COMPLETED", OLD)
    finish(engine, "failed", "FAILED", OLD)
    finish(engine, "needed", "COMPLETED", OLD)  # "waiting" is still QUEUED
    finish(engine, "kept-by", "UPSTREAM_FAILED", RECENT)  # stops "failed" from going
    finish(engine, "recent", "COMPLETED", RECENT)

    counted = retention.count_prunable(engine, WEEK)

    assert counted == {"COMPLETED": 1, "FAILED": 1}
    assert len(ids(engine)) == 6
    assert retention.prune(engine, WEEK) == 1 <= sum(counted.values())
    assert "done" not in ids(engine) and "failed" in ids(engine)

"""Task rows as submissions insert them, stored exactly as SQLAlchemy's own insert would
store them: on SQLite handed to the driver as tuples, on PostgreSQL with COPY."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert, select, text

from app import faults
from app.services import submissions
from app.storage import database
from app.storage import tasks as tasks_module
from app.storage.tables import deps, tasks
from app.storage.tasks import insert_rows
from tests.support.apps import AppFactory
from tests.support.store import register

AT = datetime(2026, 12, 4, 21, 0, 0)  # no microseconds: the case a plain isoformat gets wrong


def rows(prefix: str) -> list[dict[str, Any]]:
    """Rows as a submission builds them, and a few fields it never sets."""
    base = {"type": "t", "duration_ms": 1, "created_at": AT, "updated_at": AT}
    return [
        {**base, "id": f"{prefix}a", "payload": {}, "dependencies": []},
        {
            **base,
            "id": f"{prefix}b",
            "payload": {"text": "é ✓", "n": [1, 2.5, None, True], "deep": {"x": {}}},
            "priority": -3,
            "trigger_rule": "all_done",
            "max_attempts": 5,
            "retry_backoff_ms": 10,
            "timeout_ms": 250,
            "run_at": datetime(2030, 1, 1, 0, 0, 0, 123456),
            "not_before": datetime(2030, 1, 1, 0, 0, 0, 123456),
            "pending_deps": 1,
            "batch_id": "b1",
            "dependencies": [f"{prefix}a"],
        },
        {
            **base,
            "id": f"{prefix}c",
            "payload": None,
            "status": "UPSTREAM_FAILED",
            "error": "Dependency x failed, so this task will not run.",
            "error_code": "upstream_failed",
            "finished_at": AT,
            "cancel_requested": True,
            "dependencies": [f"{prefix}b", f"{prefix}a"],
        },
        {
            **base,
            "id": f"{prefix}d",
            "payload": {},
            # Before year 1000: strftime's %Y would write "999-", which SQLite's readers
            # cannot parse and which sorts after every later year.
            "run_at": datetime(999, 6, 1),
            "not_before": datetime(999, 6, 1),
            "dependencies": [],
        },
    ]


def stored(app: Flask, prefix: str) -> list[tuple[Any, ...]]:
    """Every column but seq and the prefixed id, as stored (JSON as its stored text)."""
    engine = app.extensions["store"].engine
    as_text = "CAST(payload AS TEXT)" if engine.dialect.name == "postgresql" else "payload"
    # The JSON null text and SQL's NULL read back alike: the NULL tests tell them apart.
    nulls = "payload IS NULL AS no_payload, result IS NULL AS no_result"
    with database.read(engine) as conn:
        found = conn.execute(
            text(
                f"SELECT *, {as_text} AS payload_text, {nulls} FROM tasks"
                " WHERE id LIKE :p ORDER BY seq"
            ),
            {"p": prefix + "%"},
        ).all()
        edges = conn.execute(
            text(
                "SELECT * FROM task_dependencies WHERE task_id LIKE :p ORDER BY task_id, position"
            ),
            {"p": prefix + "%"},
        ).all()
    return [tuple(r[2:]) for r in found] + [(t[1:], d[1:], p, a) for t, d, p, a in edges]


def test_rows_are_stored_as_the_column_types_store_them(make_app: AppFactory) -> None:
    app = make_app()
    engine = app.extensions["store"].engine
    with database.write(engine) as conn:
        insert_rows(conn, rows("f"))
        # The reference: the same rows through SQLAlchemy's own insert, one by one (an
        # executemany would take every row's columns from the first).
        reference = rows("s")
        for r in reference:
            conn.execute(insert(tasks).values({k: v for k, v in r.items() if k != "dependencies"}))
        conn.execute(
            insert(deps),
            [
                {"task_id": r["id"], "dependency_id": d, "position": p}
                for r in reference
                for p, d in enumerate(r["dependencies"])
            ],
        )
    fast, slow = stored(app, "f"), stored(app, "s")
    assert len(fast) == 4 + 3
    assert fast == slow
    with database.read(engine) as conn:
        payloads = conn.execute(select(tasks.c.payload).order_by(tasks.c.seq)).scalars().all()
    assert payloads[:3] == [{}, rows("f")[1]["payload"], None]


def test_a_task_due_before_year_1000_reads_back_and_does_not_stop_the_scheduler(
    make_app: AppFactory,
) -> None:
    app = make_app()
    client = app.test_client()
    body = {"id": "old", "type": "t", "duration_ms": 1, "run_at": "0999-06-01T00:00:00Z"}
    assert client.post("/api/tasks", json=body).status_code == 201
    assert client.post("/api/tasks", json=body).status_code == 200  # a replay
    answer = client.get("/api/tasks/old")
    assert answer.status_code == 200
    assert answer.get_json()["run_at"] == "0999-06-01T00:00:00.000Z"
    assert client.get("/api/tasks").status_code == 200
    # Long due: the next claim promotes it and takes it.
    store = app.extensions["store"]
    register(store, "w1")
    assert [c.id for c in store.claim("w1", 5)] == ["old"]


def test_batches_larger_than_a_copy_are_stored_whole(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks_module, "COPY_CHUNK", 2)
    monkeypatch.setattr(tasks_module, "SQLITE_ROWS", 3)  # 8 rows: INSERTs of 3, 3 and 2
    app = make_app()
    engine = app.extensions["store"].engine
    with database.write(engine) as conn:
        insert_rows(conn, rows("f") + rows("g"))
    assert stored(app, "f") == stored(app, "g")
    assert len(stored(app, "g")) == 4 + 3


def test_rows_made_as_they_are_taken_are_stored_in_order_and_returned(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's rows are made one at a time as the insert takes them; on PostgreSQL each
    is made while a COPY is open, after the rows before it were sent, so that making them
    overlaps the server storing the rest."""
    monkeypatch.setattr(tasks_module, "COPY_CHUNK", 3)  # 8 rows: COPYs of 3, 3 and 2
    app = make_app()
    engine = app.extensions["store"].engine
    copying = []
    copy_rows = database.copy_rows

    def watched(conn: Any, statement: str, values: Any, types: Any = None) -> None:
        copying.append(statement)
        copy_rows(conn, statement, values, types)
        copying.pop()

    monkeypatch.setattr(database, "copy_rows", watched)
    made: list[tuple[str, bool]] = []

    def lazily() -> Iterator[dict[str, Any]]:
        for row in rows("f") + rows("g"):
            made.append((row["id"], bool(copying)))
            yield row

    with database.write(engine) as conn:
        inserted = insert_rows(conn, lazily())
    assert [r["id"] for r in inserted] == [r["id"] for r in rows("f") + rows("g")]
    assert stored(app, "f") == stored(app, "g")
    assert len(stored(app, "g")) == 4 + 3
    with database.read(engine) as conn:
        ids = conn.execute(select(tasks.c.id).order_by(tasks.c.seq)).scalars().all()
    assert ids == [r["id"] for r in inserted]
    if engine.dialect.name == "postgresql":
        # The first row of each COPY opens it; every other is made inside one.
        assert [within for _, within in made] == [False, True, True] * 2 + [False, True]


def test_a_submission_that_loses_the_race_for_its_id_answers_as_a_replay(
    make_app: AppFactory,
) -> None:
    """The other submission's row is written but not committed when this one writes the
    same id: on PostgreSQL its COPY waits for that row's lock, then fails on the unique
    id, and the submission runs again and finds the stored task."""
    app = make_app()
    engine = app.extensions["store"].engine
    body = {"id": "dup", "type": "t", "duration_ms": 1}
    written, release = threading.Event(), threading.Event()

    def hold(**_: Any) -> None:
        if threading.current_thread().name == "holder":
            written.set()
            assert release.wait(10)

    answers: list[bool] = []

    def submit() -> None:
        answers.append(submissions.submit(engine, body).created)

    with faults.injected("database.commit", hold):
        holder = threading.Thread(target=submit, name="holder")
        holder.start()
        assert written.wait(10)
        waiting = threading.Thread(target=submit, name="waiting")
        waiting.start()
        if engine.dialect.name == "postgresql":
            wait_for_a_lock_wait(engine)
        release.set()
        holder.join(10)
        waiting.join(10)
    assert sorted(answers) == [False, True]


def wait_for_a_lock_wait(engine: Any, timeout_s: float = 10.0) -> None:
    """Return once a session of this database waits for a lock (the COPY on the id)."""
    deadline = time.monotonic() + timeout_s
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
    raise AssertionError("the second submission never waited for the first one's row")

"""Task rows as submissions insert them: on SQLite straight to the driver, stored exactly
as SQLAlchemy's column types would have stored them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import insert, select

from app.storage import database
from app.storage.tables import deps, tasks
from app.storage.tasks import insert_rows

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
    ]


def stored(app: Flask, prefix: str) -> list[tuple[Any, ...]]:
    """Every column but seq and the prefixed id, as the driver reads it back raw."""
    engine = app.extensions["store"].engine
    with database.read(engine) as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        found = raw.execute(
            "SELECT * FROM tasks WHERE id LIKE ? ORDER BY seq", (prefix + "%",)
        ).fetchall()
        edges = raw.execute(
            "SELECT * FROM task_dependencies WHERE task_id LIKE ? ORDER BY task_id, position",
            (prefix + "%",),
        ).fetchall()
    return [r[2:] for r in found] + [(t[1:], d[1:], p) for t, d, p in edges]


def test_sqlite_rows_are_stored_as_the_column_types_store_them(app: Flask) -> None:
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
    assert len(fast) == 3 + 3
    assert fast == slow
    with database.read(engine) as conn:
        payloads = conn.execute(select(tasks.c.payload).order_by(tasks.c.seq)).scalars().all()
    assert payloads[:3] == [{}, rows("f")[1]["payload"], None]

"""The migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import Connection, Engine, MetaData, Table, event, insert, inspect, select, text
from sqlalchemy.exc import OperationalError

from app import create_app
from app.extensions import db
from app.runtime.metrics import Metrics
from app.runtime.reaper import Reaper
from app.services import actions, blockers, reads, schedules, submissions
from app.services import queues as queue_services
from app.statuses import Status
from app.storage import counts, database, health, retention
from app.storage.database import utcnow
from app.storage.health import SCHEMA_REVISION, schema_problem
from app.storage.reads import newest_first
from app.storage.store import Outcome
from app.storage.tables import deps, tasks
from tests.support.store import register


def test_upgrade_matches_the_models_and_downgrade_removes_them(database_url: str) -> None:
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            indexes = {i["name"] for i in inspect(conn).get_indexes("tasks")}
        assert diff == []
        assert {"ix_tasks_ready", "ix_tasks_running", "ix_tasks_status_seq"} <= indexes
        downgrade(revision="base")
        with db.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        db.engine.dispose()


def test_upgrade_to_0003_keeps_run_at_apart_from_a_backoff(database_url: str) -> None:
    """A database the previous version filled: its backoffs move out of run_at."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    # Ahead of the clock, so that no later revision finds these times passed (0006 promotes).
    now = utcnow().replace(microsecond=0) + timedelta(days=1)
    later, much_later = now + timedelta(minutes=5), now + timedelta(days=1)
    with app.app_context():
        upgrade(revision="0002")
        with db.engine.begin() as conn:
            old = Table("tasks", MetaData(), autoload_with=conn)
            base = {
                "type": "t",
                "duration_ms": 1,
                "payload": {},
                "priority": 0,
                "trigger_rule": "all_success",
                "max_attempts": 3,
                "retry_backoff_ms": 1000,
                "pending_deps": 0,
                "attempts": 0,
                "failures": 0,
                "created_at": now,
                "updated_at": now,
                "cancel_requested": False,
                "run_at": None,
                "finished_at": None,
            }
            conn.execute(
                insert(old),
                [
                    {**base, "id": "waiting", "status": "QUEUED", "run_at": much_later},
                    {
                        **base,
                        "id": "backing-off",
                        "status": "QUEUED",
                        "run_at": later,
                        "attempts": 1,
                        "failures": 1,
                    },
                    {**base, "id": "plain", "status": "QUEUED", "run_at": None},
                    {
                        **base,
                        "id": "done",
                        "status": "COMPLETED",
                        "run_at": later,
                        "attempts": 2,
                        "failures": 1,
                        "finished_at": now,
                    },
                    {**base, "id": "child", "status": "QUEUED", "pending_deps": 1},
                ],
            )
            edges = Table("task_dependencies", MetaData(), autoload_with=conn)
            conn.execute(
                insert(edges), [{"task_id": "child", "dependency_id": "plain", "position": 0}]
            )
        upgrade()
        with db.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
            kept_edges = conn.execute(select(deps.c.task_id, deps.c.dependency_id)).all()
        assert (rows["waiting"].run_at, rows["waiting"].not_before) == (much_later, much_later)
        assert (rows["backing-off"].run_at, rows["backing-off"].not_before) == (None, later)
        assert (rows["plain"].run_at, rows["plain"].not_before) == (None, None)
        assert (rows["done"].run_at, rows["done"].not_before) == (later, None)
        assert kept_edges == [("child", "plain")]

        # The upgraded rows schedule as before: the backoff and run_at still hold.
        store = app.extensions["store"]
        store.register(
            {"id": "w", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
        )
        assert [c.id for c in store.claim("w", 10, now)] == ["plain"]
        assert [c.id for c in store.claim("w", 10, later)] == ["backing-off"]

        downgrade(revision="0002")
        with db.engine.connect() as conn:
            old = Table("tasks", MetaData(), autoload_with=conn)
            back = {r.id: r.run_at for r in conn.execute(select(old.c.id, old.c.run_at))}
        assert back["waiting"] == much_later
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0004_keeps_instances_of_the_previous_version_working(
    database_url: str,
) -> None:
    """Instances registered before 0004 run every type and are judged by heartbeat_at."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = datetime(2026, 12, 3, 12, 0, 0)
    with app.app_context():
        upgrade(revision="0003")
        with db.engine.begin() as conn:
            old = Table("scheduler_instances", MetaData(), autoload_with=conn)
            assert "task_types" not in old.c
            row = {"hostname": "elsewhere", "pid": 1, "state": "running", "started_at": now}
            conn.execute(
                insert(old),
                [
                    {**row, "id": "silent", "heartbeat_at": now - timedelta(minutes=5)},
                    {**row, "id": "fresh", "heartbeat_at": now},
                ],
            )
            old_tasks = Table("tasks", MetaData(), autoload_with=conn)
            conn.execute(
                insert(old_tasks),
                {
                    "id": "odd-type",
                    "type": "anything",
                    "duration_ms": 1,
                    "payload": {},
                    "status": "QUEUED",
                    "priority": 0,
                    "trigger_rule": "all_success",
                    "max_attempts": 1,
                    "retry_backoff_ms": 0,
                    "pending_deps": 0,
                    "attempts": 0,
                    "failures": 0,
                    "created_at": now,
                    "updated_at": now,
                    "cancel_requested": False,
                },
            )
        upgrade()
        with db.engine.connect() as conn:
            indexes = {i["name"] for i in inspect(conn).get_indexes("tasks")}
        assert "ix_tasks_ready_type" in indexes
        store = app.extensions["store"]
        rows = {r.id: r for r in store.instances()}
        assert (rows["fresh"].task_types, rows["fresh"].heartbeat_monotonic) == (None, None)
        # An old instance runs every type: nothing waits for a handler.
        answer = blockers.blockers(store.engine, "odd-type")
        assert answer["blockers"] == [{"kind": "no_slot"}]
        # Without a monotonic heartbeat, staleness is judged by heartbeat_at as before.
        reaper = Reaper(store, 60, "this-host", lambda: None, Metrics())
        reaper.run_once(now)
        assert {r.id for r in store.instances()} == {"fresh"}
        downgrade(revision="0003")
        with db.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("scheduler_instances")}
        assert "task_types" not in columns and "heartbeat_monotonic" not in columns
        downgrade(revision="base")
        db.engine.dispose()


def _index_definition(conn: Connection, name: str) -> str:
    if conn.dialect.name == "sqlite":
        sql = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        sql = (
            "SELECT indexdef FROM pg_indexes"
            " WHERE indexname = :name AND schemaname = current_schema()"
        )
    return str(conn.execute(text(sql), {"name": name}).scalar_one())


def _stored_at(revision: str, rows: list[dict[str, Any]]) -> None:
    """Upgrade to `revision` and store `rows` in its tasks table, as that version did."""
    upgrade(revision=revision)
    with db.engine.begin() as conn:
        old = Table("tasks", MetaData(), autoload_with=conn)
        conn.execute(insert(old), rows)


def _old_task(task_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "t",
        "duration_ms": 1,
        "payload": {},
        "status": "QUEUED",
        "priority": 0,
        "trigger_rule": "all_success",
        "max_attempts": 1,
        "retry_backoff_ms": 0,
        "pending_deps": 0,
        "attempts": 0,
        "failures": 0,
        "created_at": at,
        "updated_at": at,
        "cancel_requested": False,
        "run_at": None,
        "not_before": None,
        "batch_id": None,
        "finished_at": None,
        **fields,
    }


def test_upgrade_to_0006_promotes_what_is_due_and_keeps_the_delayed_out_of_the_ready_index(
    database_url: str,
) -> None:
    """A database 0004 filled: its due tasks lose not_before, the others keep it."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    past, future = now - timedelta(minutes=5), now + timedelta(days=1)
    with app.app_context():
        _stored_at(
            "0004",
            [
                _old_task("due", past, run_at=past, not_before=past),
                _old_task("backed-off", past, failures=1, not_before=past),
                _old_task("later", past, run_at=future, not_before=future),
                _old_task("plain", past, batch_id="b1"),
                _old_task("waits", past, pending_deps=1, run_at=past, not_before=past),
                _old_task("done", past, status="COMPLETED", not_before=past, finished_at=now),
            ],
        )
        upgrade()
        with db.engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
            for name in ("ix_tasks_ready", "ix_tasks_ready_type"):
                assert "not_before IS NULL" in _index_definition(conn, name)
            indexes = {i["name"] for i in inspect(conn).get_indexes("tasks")}
        # The pairs 0006 added, led by type and batch since 0013.
        assert {"ix_tasks_type_status_seq", "ix_tasks_batch_status_seq"} <= indexes
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect() as conn:
                options = conn.exec_driver_sql(
                    "SELECT attoptions FROM pg_attribute WHERE attrelid ="
                    " 'task_dependencies'::regclass AND attname = 'dependency_id'"
                ).scalar_one()
            assert "n_distinct=-0.5" in options
        promoted = {i for i, r in rows.items() if r.status == "QUEUED" and r.not_before is None}
        assert promoted == {"due", "backed-off", "plain", "waits"}
        assert (rows["due"].run_at, rows["later"].not_before) == (past, future)
        assert rows["done"].not_before == past  # only queued tasks are promoted
        store = app.extensions["store"]
        store.register(
            {"id": "w", "hostname": "h", "pid": 0, "started_at": now, "heartbeat_at": now}
        )
        assert [c.id for c in store.claim("w", 10)] == ["due", "backed-off", "plain"]
        assert [c.id for c in store.claim("w", 10, future)] == ["later"]

        downgrade(revision="0004")
        with db.engine.connect() as conn:
            assert "not_before" not in _index_definition(conn, "ix_tasks_ready")
            indexes = {i["name"] for i in inspect(conn).get_indexes("tasks")}
        assert "ix_tasks_status_type_seq" not in indexes
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0007_names_queued_in_the_walks_indexes_as_the_walks_do(
    database_url: str,
) -> None:
    """On PostgreSQL the ready and delayed indexes are built again with the status term
    the scheduler's walks write; tasks the previous version stored are claimed and
    promoted through them. Nothing changes on SQLite."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow()
    later = now + timedelta(hours=1)
    with app.app_context():
        _stored_at(
            "0006",
            [
                _old_task("ready", now),
                _old_task("delayed", now, run_at=later, not_before=later),
                _old_task("done", now, status="COMPLETED", finished_at=now),
            ],
        )
        upgrade()
        pg = db.engine.dialect.name == "postgresql"
        with db.engine.connect() as conn:
            for name in ("ix_tasks_ready", "ix_tasks_ready_type", "ix_tasks_delayed"):
                definition = _index_definition(conn, name)
                assert ("|| ''" in definition) == pg, definition
        store = app.extensions["store"]
        register(store, "w")
        assert [c.id for c in store.claim("w", 10)] == ["ready"]
        assert [c.id for c in store.claim("w", 10, later + timedelta(seconds=1))] == ["delayed"]
        downgrade(revision="0006")
        with db.engine.connect() as conn:
            assert "|| ''" not in _index_definition(conn, "ix_tasks_delayed")
        downgrade(revision="base")
        db.engine.dispose()


def _old_counted(task_id: str, status: str, now: datetime) -> dict[str, object]:
    return {
        "id": task_id,
        "type": "t",
        "duration_ms": 1,
        "payload": {},
        "status": status,
        "priority": 0,
        "trigger_rule": "all_success",
        "max_attempts": 1,
        "retry_backoff_ms": 0,
        "pending_deps": 0,
        "attempts": 0,
        "failures": 0,
        "created_at": now,
        "updated_at": now,
        "cancel_requested": False,
    }


def test_upgrade_to_0005_counts_the_stored_tasks(database_url: str) -> None:
    """The counts start from the tasks the previous version stored, then follow them."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = datetime(2026, 12, 5, 12, 0, 0)
    statuses = ["QUEUED"] * 3 + ["RUNNING", "COMPLETED", "COMPLETED", "FAILED", "CANCELLED"]
    with app.app_context():
        upgrade(revision="0004")
        with db.engine.begin() as conn:
            old = Table("tasks", MetaData(), autoload_with=conn)
            conn.execute(
                insert(old), [_old_counted(f"t{i}", s, now) for i, s in enumerate(statuses)]
            )
        upgrade()
        engine = app.extensions["store"].engine
        with database.read(engine) as conn:
            assert counts.by_status(conn) == {
                "QUEUED": 3,
                "RUNNING": 1,
                "COMPLETED": 2,
                "FAILED": 1,
                "UPSTREAM_FAILED": 0,
                "CANCELLED": 1,
            }
        submissions.submit(engine, {"id": "new", "type": "t", "duration_ms": 1})
        actions.cancel(engine, "t0")
        counts.fold(engine)
        with database.read(engine) as conn:
            found = counts.by_status(conn)
        assert (found["QUEUED"], found["CANCELLED"]) == (3, 2)

        downgrade(revision="0004")
        with db.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        assert not {"task_counts", "task_count_deltas"} & tables
        # Nothing is left that would write to the dropped tables.
        with db.engine.begin() as conn:
            old = Table("tasks", MetaData(), autoload_with=conn)
            conn.execute(insert(old), _old_counted("after", "QUEUED", now))
            conn.execute(old.update().values(status="CANCELLED"))
            conn.execute(old.delete())
        downgrade(revision="base")
        db.engine.dispose()


def _triggers(engine: Engine) -> list[tuple[str, str]]:
    """Every trigger (and on PostgreSQL every function) of the database, as defined."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
            return [(name, " ".join(sql.split())) for name, sql in conn.execute(text(query))]
        triggers = text(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal ORDER BY tgname"
        )
        functions = text(
            "SELECT proname, prosrc FROM pg_proc "
            "WHERE pronamespace = current_schema()::regnamespace ORDER BY proname"
        )
        found = [(n, " ".join(d.split())) for n, d in conn.execute(triggers)]
        return found + [(n, " ".join(d.split())) for n, d in conn.execute(functions)]


def test_create_all_makes_the_triggers_the_migrations_make(database_url: str) -> None:
    """The tests build their schemas with create_all: it must count as the service does."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        upgrade()
        migrated = _triggers(db.engine)
        downgrade(revision="base")
        db.create_all()
        db.create_all()  # over an existing schema: still one of each
        created = _triggers(db.engine)
        db.drop_all()
        db.engine.dispose()
    names = {name for name, _ in migrated}
    assert {"task_counts_insert", "task_counts_update", "task_counts_delete"} <= names
    assert created == migrated


def test_upgrade_to_0008_adds_schedules_beside_the_stored_tasks(database_url: str) -> None:
    """A 0007 database with tasks gains the schedules table; a schedule made after the
    upgrade fires beside the stored tasks; a downgrade drops only the schedules."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    with app.app_context():
        _stored_at("0007", [_old_task("before", now)])
        upgrade()
        spec = schedules.parse_new({"id": "tick", "interval_s": 60, "task": _SCHEDULED})
        schedules.create(db.engine, spec, now=now)
        fired = schedules.fire_due(db.engine, now=now + timedelta(seconds=60))
        assert [n for _, _, n in fired.fired] == [1]
        with db.engine.connect() as conn:
            ids = sorted(r[0] for r in conn.exec_driver_sql("SELECT id FROM tasks"))
        assert ids[0] == "before" and ids[1].startswith("tick.")
        downgrade(revision="0007")
        with db.engine.connect() as conn:
            assert "schedules" not in inspect(conn).get_table_names()
            assert conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar() == 2
        downgrade(revision="base")
        db.engine.dispose()


_SCHEDULED = {"type": "t", "duration_ms": 1}


def test_the_code_needs_the_newest_revision_and_refuses_an_older_schema(
    database_url: str,
) -> None:
    """SCHEMA_REVISION is the head of migrations/; on a database an older version
    migrated, the commands refuse to work and say how to upgrade."""
    heads = ScriptDirectory(str(Path(__file__).parents[2] / "migrations")).get_heads()
    assert heads == [SCHEMA_REVISION]
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        upgrade(revision="0007")
        problem = schema_problem(db.engine)
        assert problem is not None
        assert f"at revision 0007, and this version needs {SCHEMA_REVISION}" in problem
        listed = app.test_cli_runner().invoke(args=["tasks", "list"])
        assert listed.exit_code == 1
        assert "flask db upgrade" in listed.stderr
        upgrade()
        assert schema_problem(db.engine) is None
        downgrade(revision="base")
        assert schema_problem(db.engine) is not None  # no tasks table: never migrated
        db.engine.dispose()


def test_an_app_served_on_a_schema_it_cannot_use_answers_503_saying_how_to_upgrade(
    database_url: str,
) -> None:
    """gunicorn, `flask run` and the commands refuse such a database at start; an app served
    by another WSGI server meets it at its first request, which must say the fix (whole, and
    with no Retry-After: waiting does not mend it), and /health must not call it healthy."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    client = app.test_client()

    def refused(answer: Any, said: str) -> None:
        assert answer.status_code == 503
        assert "Retry-After" not in answer.headers
        body = answer.get_json()
        assert (body["code"], body["details"]) == ("database_unusable", {"reason": "schema"})
        assert said in body["error"] and "run `flask db upgrade`" in body["error"]
        assert not body["error"].endswith("...")  # not cut at the length errors are kept to

    never = "none of the service's tables"
    refused(client.get("/api/tasks"), never)
    refused(client.post("/api/tasks", json={"type": "noop", "duration_ms": 1}), never)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["database"]["status"] == "unusable"
    assert never in health.get_json()["database"]["error"]
    with app.app_context():
        upgrade(revision="0007")
        refused(client.get("/api/tasks"), "at revision 0007, older than this version's")
        assert client.get("/health").get_json()["database"]["reason"] == "schema"
        upgrade()
    assert client.get("/health").status_code == 200
    assert client.get("/api/tasks").status_code == 200
    created = client.post("/api/tasks", json={"id": "t", "type": "noop", "duration_ms": 1})
    assert created.status_code == 201
    with app.app_context():
        downgrade(revision="base")  # gone from under a running app: found at the next request
    refused(client.get("/api/tasks"), never)
    assert client.get("/health").status_code == 503
    app.extensions["store"].engine.dispose()


def test_upgrade_into_a_postgresql_schema_that_does_not_exist_stops_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from urllib.parse import quote

    from tests.support.apps import require_postgres

    base = require_postgres()
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options={quote('-csearch_path=no_schema_of_that_name')}"
    app = create_app({"DATABASE_URL": url, "SCHEDULER_ENABLED": "false"})
    with app.app_context(), pytest.raises(SystemExit) as stopped:
        upgrade()
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: DATABASE_URL: its search_path (no_schema_of_that_name)")
    assert "CREATE SCHEMA" in line and "\n" not in line
    app.extensions["store"].engine.dispose()


def test_a_schema_look_that_failed_is_not_taken_for_a_usable_schema(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"DATABASE_URL": sqlite_url, "SCHEDULER_ENABLED": "false"})
    client = app.test_client()

    def fails(_conn: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the connection broke"))

    with monkeypatch.context() as patched:
        patched.setattr(health, "inspect", fails)
        assert client.get("/health").get_json()["database"]["status"] != "unusable"
    assert client.get("/health").get_json()["database"]["status"] == "unusable"
    assert client.get("/api/tasks").get_json()["code"] == "database_unusable"
    app.extensions["store"].engine.dispose()


def test_upgrade_to_0009_puts_stored_tasks_in_the_default_queue_and_counts_them(
    database_url: str,
) -> None:
    """A 0008 database with tasks in every state (and unfolded count deltas on
    PostgreSQL): after the upgrade each is in `default`, the counts per queue match the
    tasks, the claim works through pauses and limits, and a downgrade keeps the tasks."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    statuses = ["QUEUED", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
    with app.app_context():
        _stored_at("0008", [_old_task(f"t{k}", now, status=s) for k, s in enumerate(statuses)])
        upgrade()
        engine = app.extensions["store"].engine
        with database.read(engine) as conn:
            by_queue = counts.by_queue(conn)
            queues_of = {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT queue FROM tasks")}
        assert queues_of == {"default"}
        assert set(by_queue) == {"default"}
        assert {s: n for s, n in by_queue["default"].items() if n} == {
            "QUEUED": 2,
            "RUNNING": 1,
            "COMPLETED": 1,
            "FAILED": 1,
            "CANCELLED": 1,
        }
        store = app.extensions["store"]
        submissions.submit(engine, {"id": "mailed", "type": "t", "duration_ms": 1, "queue": "mail"})
        queue_services.pause(engine, "default")
        register(store, "w1")
        assert [c.id for c in store.claim("w1", 10)] == ["mailed"]
        queue_services.resume(engine, "default")
        queue_services.set_limits(
            engine, "default", {"concurrency_limit": 2, "rate_limit_per_s": None}
        )
        # t2 is RUNNING already: one slot of two is left.
        assert [c.id for c in store.claim("w1", 10)] == ["t0"]
        counts.fold(engine)
        with database.read(engine) as conn:
            assert counts.by_queue(conn)["mail"]["RUNNING"] == 1
        downgrade(revision="0008")
        with db.engine.connect() as conn:
            assert "queues" not in inspect(conn).get_table_names()
            assert conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar() == 7
        with database.read(engine) as conn:
            found = conn.exec_driver_sql(
                "SELECT status, sum(n) FROM task_counts GROUP BY status"
            ).all()
        assert dict(found)["QUEUED"] == 1 and dict(found)["RUNNING"] == 3
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0010_keeps_the_last_attempt_of_each_stored_task(database_url: str) -> None:
    """A 0009 database: each stored task whose row tells of its last attempt gets it in
    the history (finished ones, and a failure waiting for its retry); a task that never
    ran, or runs now, gets none. The history then grows with each attempt, and a
    downgrade drops it and the instances' slots."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    began, ended = now - timedelta(seconds=5), now - timedelta(seconds=1)
    ran = {"started_at": began, "worker": "old-1", "attempts": 2}
    # Every row names the same columns: they are inserted together.
    unset = {"started_at": None, "worker": None, "error": None, "error_code": None}
    rows = [
        _old_task("never", now, **unset),
        _old_task("running", now, status="RUNNING", **{**unset, **ran}),
        _old_task("done", now, status="COMPLETED", finished_at=ended, **{**unset, **ran}),
        _old_task(
            "broke",
            now,
            status="FAILED",
            finished_at=ended,
            error="boom",
            error_code="handler_error",
            **ran,
        ),
        _old_task("again", now, failures=1, error="flaky", error_code="timeout", **ran),
        _old_task("stopped", now, status="CANCELLED", finished_at=ended, **{**unset, **ran}),
    ]
    with app.app_context():
        _stored_at("0009", rows)
        upgrade()
        engine = app.extensions["store"].engine
        with database.read(engine) as conn:
            history = {
                r.task_id: r
                for r in conn.exec_driver_sql(
                    "SELECT task_id, attempt, instance, host, started_at, finished_at,"
                    " outcome, error, error_code, traceback FROM task_attempts"
                )
            }
        assert set(history) == {"done", "broke", "again", "stopped"}
        assert {i: (r.attempt, r.outcome) for i, r in history.items()} == {
            "done": (2, "COMPLETED"),
            "broke": (2, "FAILED"),
            "again": (2, "FAILED"),
            "stopped": (2, "CANCELLED"),
        }
        assert (history["broke"].error, history["broke"].error_code) == ("boom", "handler_error")
        assert (history["again"].error, history["again"].error_code) == ("flaky", "timeout")
        assert history["done"].instance == "old-1" and history["done"].host is None
        assert history["done"].traceback is None
        assert str(history["done"].started_at).startswith(str(began)[:19])
        assert str(history["done"].finished_at).startswith(str(ended)[:19])

        # An attempt the new code ends joins the history beside the recovered ones.
        store = app.extensions["store"]
        register(store, "w1")
        (claim,) = store.claim("w1", 1)
        assert (claim.id, claim.attempt) == ("never", 1)
        failed = Outcome(Status.FAILED, error="no", error_code="handler_error", traceback="tb")
        assert store.finish(claim, failed)
        shown = reads.get_attempts(engine, "never")
        assert [(a["attempt"], a["outcome"], a["traceback"]) for a in shown["attempts"]] == [
            (1, "FAILED", "tb")
        ]
        assert reads.get_attempts(engine, "running")["attempts"][0]["outcome"] == "RUNNING"
        downgrade(revision="0009")
        with db.engine.connect() as conn:
            assert "task_attempts" not in inspect(conn).get_table_names()
            columns = {c["name"] for c in inspect(conn).get_columns("scheduler_instances")}
            assert "slots" not in columns
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0011_marks_the_edges_a_fan_out_added_so_replays_still_match(
    database_url: str,
) -> None:
    """A 0010 database where `after` was submitted naming `m`, and m's completion added
    `m.join`, which `after` then waited for too: the upgrade marks that edge adopted (its
    dependency is younger than its task), so a replay of `after` answers 200."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    later = now + timedelta(seconds=3)
    rows = [
        _old_task("m", now, status="COMPLETED", finished_at=later, attempts=1),
        _old_task("after", now + timedelta(seconds=1), pending_deps=1),
        _old_task("m.join", later),
    ]
    with app.app_context():
        _stored_at("0010", rows)
        with db.engine.begin() as conn:
            old = Table("task_dependencies", MetaData(), autoload_with=conn)
            conn.execute(
                insert(old),
                [
                    {"task_id": "after", "dependency_id": "m", "position": 0},
                    {"task_id": "after", "dependency_id": "m.join", "position": 1},
                    {"task_id": "m.join", "dependency_id": "m", "position": 0},
                ],
            )
        upgrade()
        with db.engine.connect() as conn:
            marked = set(
                conn.execute(
                    text("SELECT task_id, dependency_id FROM task_dependencies WHERE adopted")
                ).all()
            )
        assert marked == {("after", "m.join")}
        engine = app.extensions["store"].engine
        body = {"id": "after", "type": "t", "duration_ms": 1, "dependencies": ["m"]}
        body.update(max_attempts=1, retry_backoff_ms=0)
        replayed = submissions.submit(engine, body)
        assert not replayed.created and replayed.task["dependencies"] == ["m", "m.join"]
        downgrade(revision="0010")
        with db.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("task_dependencies")}
            assert "adopted" not in columns
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0012_adds_the_event_log_that_each_change_then_writes(
    database_url: str,
) -> None:
    """A 0011 database with stored tasks: the log starts empty (earlier changes left no
    event), each change after the upgrade writes one, and a downgrade drops it."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    with app.app_context():
        _stored_at("0011", [_old_task("old", now)])
        upgrade()
        engine = app.extensions["store"].engine
        body = {"id": "new", "type": "t", "duration_ms": 1}
        submissions.submit(engine, body)
        actions.cancel(engine, "old")
        with database.read(engine) as conn:
            logged = conn.exec_driver_sql(
                "SELECT task_id, status FROM task_events ORDER BY seq"
            ).all()
        assert [tuple(r) for r in logged] == [("new", "QUEUED"), ("old", "CANCELLED")]
        downgrade(revision="0011")
        with db.engine.connect() as conn:
            assert "task_events" not in inspect(conn).get_table_names()
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0013_leads_the_pairs_by_batch_and_type_and_indexes_finished_tasks_only(
    database_url: str,
) -> None:
    """A 0012 database with tasks of two batches and two types, some finished: after the
    upgrade the lists by batch and status and by type and status, and pruning, find what
    they found before, through the new indexes; a downgrade builds the old ones again."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    old = now - timedelta(days=2)
    rows = [
        _old_task(f"{batch}-{k}", old + timedelta(seconds=k), batch_id=batch, type=kind, **done)
        for batch in ("b1", "b2")
        for k, (kind, done) in enumerate(
            [
                ("a", {"status": "COMPLETED", "finished_at": old + timedelta(minutes=1)}),
                ("b", {"status": "FAILED", "finished_at": old + timedelta(minutes=2)}),
                ("a", {"status": "RUNNING", "worker": "w", "attempts": 1}),
                ("b", {}),
                ("a", {"status": "COMPLETED", "finished_at": now}),
            ]
        )
    ]
    with app.app_context():
        _stored_at("0012", rows)
        upgrade()
        engine = app.extensions["store"].engine
        with db.engine.connect() as conn:
            indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("tasks")}
            finished = _index_definition(conn, "ix_tasks_finished_at")
        assert indexes["ix_tasks_batch_status_seq"] == ["batch_id", "status", "seq"]
        assert indexes["ix_tasks_type_status_seq"] == ["type", "status", "seq"]
        assert not {"ix_tasks_status_batch_seq", "ix_tasks_status_type_seq"} & set(indexes)
        assert "finished_at IS NOT NULL" in finished

        def listed(**filters: Any) -> list[str]:
            return [t["id"] for t in reads.list_tasks(engine, **filters).tasks]

        assert listed(batch_id="b1", statuses=("COMPLETED",)) == ["b1-4", "b1-0"]
        assert listed(batch_id="b2", statuses=("QUEUED",)) == ["b2-3"]
        assert listed(task_type="a", statuses=("RUNNING",)) == ["b2-2", "b1-2"]
        assert listed(task_type="b", statuses=("FAILED",)) == ["b2-1", "b1-1"]
        assert retention.prune(engine, timedelta(days=1), now=now) == 4
        assert sorted(listed()) == ["b1-2", "b1-3", "b1-4", "b2-2", "b2-3", "b2-4"]

        downgrade(revision="0012")
        with db.engine.connect() as conn:
            names = {i["name"] for i in inspect(conn).get_indexes("tasks")}
            finished = _index_definition(conn, "ix_tasks_finished_at")
        assert {"ix_tasks_status_batch_seq", "ix_tasks_status_type_seq"} <= names
        assert not {"ix_tasks_batch_status_seq", "ix_tasks_type_status_seq"} & names
        assert "WHERE" not in finished
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_on_sqlite_takes_the_write_lock_first_so_a_commit_meanwhile_cannot_fail_it(
    sqlite_url: str,
) -> None:
    """A running instance commits a write while the upgrade is under way: the upgrade,
    holding the write lock from its first statement, keeps it (the instance's write waits
    instead, here refused at once), rather than failing with "database is locked"."""
    app = create_app({"DATABASE_URL": sqlite_url, "SCHEDULER_ENABLED": "false"})
    path = sqlite_url.removeprefix("sqlite:///")
    refused: list[str] = []

    def instance_writes(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("CREATE INDEX") or refused:
            return
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("UPDATE tasks SET priority = priority + 1")
            other.commit()
            refused.append("no")
        except sqlite3.OperationalError as exc:
            refused.append(str(exc))
        finally:
            other.close()

    with app.app_context():
        _stored_at("0012", [_old_task("old", utcnow())])
        event.listen(db.engine, "before_cursor_execute", instance_writes)
        try:
            upgrade()
        finally:
            event.remove(db.engine, "before_cursor_execute", instance_writes)
        with db.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert (revision, refused) == (SCHEMA_REVISION, ["database is locked"])
        downgrade(revision="base")
        db.engine.dispose()


def test_upgrade_to_0013_measures_the_new_indexes_where_sqlite_keeps_statistics(
    sqlite_url: str,
) -> None:
    """Statistics taken at 0012 knew the old indexes only; without the new ones' a page of
    one type was read through the new type+status index and sorted whole."""
    app = create_app({"DATABASE_URL": sqlite_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow()
    rows = [
        _old_task(
            f"t{k}",
            now,
            type="a" if k % 10 else "b",
            batch_id=f"b{k % 3}",
            status="COMPLETED",
            finished_at=now,
        )
        for k in range(300)
    ]
    with app.app_context():
        _stored_at("0012", rows)
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        upgrade()
        engine = app.extensions["store"].engine
        with database.read(engine) as conn:
            measured = {
                r[0]
                for r in conn.exec_driver_sql("SELECT idx FROM sqlite_stat1 WHERE tbl = 'tasks'")
            }
            sent: list[tuple[str, Any]] = []

            def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
                sent.append((sql, params))

            event.listen(conn, "before_cursor_execute", record)
            newest_first(conn, statuses=(), task_type="a", batch_id=None, before=None, limit=101)
            event.remove(conn, "before_cursor_execute", record)
            ((sql, params),) = sent
            plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
        assert not any("TEMP B-TREE" in step for step in plan), plan
        assert {"ix_tasks_type_status_seq", "ix_tasks_batch_status_seq"} <= measured
        downgrade(revision="base")
        db.engine.dispose()


def test_0013_writes_its_statements_as_a_script_offline(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`flask db upgrade 0012:0013 --sql` prints the revision instead of failing on the
    question it cannot ask offline (whether SQLite keeps statistics)."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        capsys.readouterr()
        upgrade(revision="0012:0013", sql=True)
        script = capsys.readouterr().out
        downgrade(revision="0013:0012", sql=True)
        back = capsys.readouterr().out
    assert "CREATE INDEX ix_tasks_batch_status_seq" in script
    assert "DROP INDEX ix_tasks_status_type_seq" in script
    assert "CREATE INDEX ix_tasks_status_batch_seq" in back


# What each result is on reading, after it was stored by a 0013 database, then upgraded:
# on SQLite the numbers it changed stay changed (their old values are gone), and a float
# it kept is rewritten with every digit; PostgreSQL changed nothing.
_RESULTS_AT_0013 = {
    "big": (2**63, float(2**63)),
    "whole": (3.0, 3),
    "fraction": (0.1, 0.1),
    "close": (1 / 3, 1 / 3),
    "int": (12, 12),
    "text": ("12", "12"),
    "nested": ({"n": 2**63, "f": 3.0}, {"n": 2**63, "f": 3.0}),
    "none": (None, None),
}


def test_upgrade_to_0014_builds_the_tasks_table_again_keeping_everything_it_refers_to(
    database_url: str,
) -> None:
    """A 0013 database with results of every kind, edges, ended attempts and counts: the
    upgrade keeps every row, index, trigger and count, reads each result as before (a
    float with all its digits), and from then on keeps a bare number as written; a
    downgrade builds the table as it was."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    sqlite = database_url.startswith("sqlite")
    now = utcnow().replace(microsecond=0)
    done = {"status": "COMPLETED", "finished_at": now}
    rows = [
        _old_task(name, now, result=stored, **done)
        for name, (stored, _) in _RESULTS_AT_0013.items()
    ]
    rows.append(_old_task("later", now, status="QUEUED", result=None, finished_at=None))
    with app.app_context():
        _stored_at("0013", rows)
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO task_dependencies (task_id, dependency_id, position, adopted)"
                " VALUES ('later', 'big', 0, false), ('later', 'none', 1, false)"
            )
            conn.exec_driver_sql(
                "INSERT INTO task_attempts (task_id, attempt, outcome)"
                " VALUES ('big', 1, 'COMPLETED')"
            )
        if sqlite:  # a row left behind by hand (the sqlite3 shell enforces no keys)
            by_hand = sqlite3.connect(database_url.removeprefix("sqlite:///"))
            by_hand.execute(
                "INSERT INTO task_attempts (task_id, attempt, outcome) VALUES ('gone', 1, 'FAILED')"
            )
            by_hand.commit()
            by_hand.close()
        before = _tasks_schema(db.engine)
        stored = _counts(db.engine)
        upgrade()  # not refused for the row it did not leave
        engine = app.extensions["store"].engine
        shown = {name: reads.get_task(engine, name)["result"] for name in _RESULTS_AT_0013}
        expected = {n: read if sqlite else kept for n, (kept, read) in _RESULTS_AT_0013.items()}
        assert shown == expected
        assert {n: type(v) for n, v in shown.items()} == {n: type(v) for n, v in expected.items()}
        assert reads.get_task(engine, "later")["dependencies"] == ["big", "none"]
        assert [a["attempt"] for a in reads.get_attempts(engine, "big")["attempts"]] == [1]
        assert _counts(db.engine) == stored
        after = _tasks_schema(db.engine)
        assert {k: v for k, v in after.items() if k != "tasks"} == {
            k: v for k, v in before.items() if k != "tasks"
        }
        if sqlite:
            assert "result TEXT" in after["tasks"]
            # Renamed into place, as SQLite's documentation builds a table again.
            assert after["tasks"].replace("result TEXT", "result JSON") == before["tasks"].replace(
                "CREATE TABLE tasks", 'CREATE TABLE "tasks"'
            )
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
                kinds = conn.exec_driver_sql(
                    "SELECT DISTINCT typeof(result) FROM tasks WHERE result IS NOT NULL"
                ).scalars()
                assert set(kinds) == {"text"}

        # From now on a bare number is kept as written, and dependents still count down.
        store = app.extensions["store"]
        register(store, "w1")
        (claim,) = store.claim("w1", 1)
        assert claim.id == "later"
        assert store.finish(claim, Outcome(Status.COMPLETED, result=3.0))
        kept = reads.get_task(engine, "later")["result"]
        assert (kept, type(kept)) == (3.0, float)
        finished = _counts(db.engine)

        downgrade(revision="0013")
        back = _tasks_schema(db.engine)
        assert {k: v for k, v in back.items() if k != "tasks"} == {
            k: v for k, v in before.items() if k != "tasks"
        }
        assert back["tasks"] == after["tasks"].replace("result TEXT", "result JSON")
        assert reads.get_task(engine, "later")["dependencies"] == ["big", "none"]
        assert _counts(db.engine) == finished
        downgrade(revision="base")
        db.engine.dispose()


def _tasks_schema(engine: Engine) -> dict[str, str]:
    """The stored definitions of `tasks`, its indexes and triggers (on PostgreSQL, of its
    indexes, triggers and the type of `result`)."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            made = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'tasks' AND sql IS NOT NULL"
            )
            return {name: sql for name, sql in made}
        found = {i["name"]: str(i) for i in inspect(conn).get_indexes("tasks")}
        triggers = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
        ).scalars()
        found.update((name, "trigger") for name in triggers)
        (result,) = [c for c in inspect(conn).get_columns("tasks") if c["name"] == "result"]
        found["tasks"] = str(result["type"])
        return found


def _counts(engine: Engine) -> dict[str, dict[str, int]]:
    with database.read(engine) as conn:
        return counts.by_queue(conn)


def test_0014_as_a_script_is_refused_in_one_line_on_sqlite_and_empty_on_postgresql(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        capsys.readouterr()
        if database_url.startswith("sqlite"):
            with pytest.raises(SystemExit) as stopped:
                upgrade(revision="0013:0014", sql=True)
            assert stopped.value.code == 2
            (line,) = capsys.readouterr().err.strip().splitlines()
            assert "revision 0014 builds the tasks table again" in line
        else:
            upgrade(revision="0013:0014", sql=True)
            script = capsys.readouterr().out
            assert "UPDATE alembic_version SET version_num='0014'" in script
            assert "tasks" not in script.replace("UPDATE alembic_version", "")


def test_upgrade_to_0015_stores_each_instances_lease_and_judges_the_older_by_the_judges(
    database_url: str,
) -> None:
    """A 0014 database with two instances registered by the previous version, one with
    a task running: the upgrade keeps them with no lease, each is judged by the judge's
    own (as before), and an instance registered after the upgrade stores its own."""
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    now = utcnow().replace(microsecond=0)
    with app.app_context():
        _stored_at("0014", [_old_task("held", now, status="RUNNING", attempts=1, worker="old1")])
        with db.engine.begin() as conn:
            old = Table("scheduler_instances", MetaData(), autoload_with=conn)
            assert "lease_s" not in old.c
            row = {"hostname": "elsewhere", "pid": 1, "state": "running", "started_at": now}
            conn.execute(
                insert(old),
                [
                    {**row, "id": "old1", "heartbeat_at": now - timedelta(seconds=20)},
                    {**row, "id": "old2", "heartbeat_at": now},
                ],
            )
        upgrade()
        store = app.extensions["store"]
        assert {r.id: r.lease_s for r in store.instances()} == {"old1": None, "old2": None}
        row = {"hostname": "h", "pid": 2, "started_at": now, "heartbeat_at": now}
        store.register({**row, "id": "new", "lease_s": 45})
        assert {r.id: r.lease_s for r in store.instances()}["new"] == 45
        reaper = Reaper(store, 15, "this-host", lambda: None, Metrics())
        assert reaper.run_once(now + timedelta(seconds=1)) == 1  # old1: 21 s against 15
        assert {r.id for r in store.instances()} == {"old2", "new"}
        downgrade(revision="0014")
        with db.engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("scheduler_instances")}
        assert "lease_s" not in columns
        downgrade(revision="base")
        db.engine.dispose()

"""Database faults answer with what a client can act on, never a 500.

The classification (`app.dbfaults`) is checked on errors provoked for real where this
machine can provoke them (a locked, read-only, unopenable or full SQLite file, a refused
PostgreSQL connection, an exhausted pool) and on constructed driver errors for the server
states a test cannot cause on demand. Then, through the API: a full SQLite database
answers 507 and stores nothing until space is made; a commit lost in flight answers
`outcome_unknown`, and resubmitting the same body settles it; an unreachable server
answers 503 with Retry-After, and /health says what is wrong.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, event, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool
from werkzeug.test import TestResponse

from app import create_app, faults
from app.errors import DATABASE_RETRY_AFTER_S
from app.extensions import db
from app.storage import database
from app.storage.dbfaults import CommitUnknown, Kind, classify, lost_in_commit
from app.storage.tables import deps, tasks
from tests.support.apps import AppFactory, build_app
from tests.support.client import assert_error
from tests.support.servers import free_port
from tests.support.store import count

BIG = "x" * 60_000  # a payload that needs fresh pages: the database must grow to take it


# -- errors provoked for real -------------------------------------------------------------


def _raised(action: Callable[[], Any]) -> SQLAlchemyError:
    with pytest.raises(SQLAlchemyError) as info:
        action()
    return info.value


def _sqlite(path: Path, **options: Any) -> Engine:
    return create_engine(f"sqlite:///{path}", **options)


def sqlite_locked(tmp_path: Path) -> SQLAlchemyError:
    """A second writer gives up at once while the first holds the write lock."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    impatient = _sqlite(path, connect_args={"timeout": 0})
    try:
        with impatient.connect() as conn:
            return _raised(lambda: conn.exec_driver_sql("INSERT INTO t VALUES (1)"))
    finally:
        impatient.dispose()
        holder.close()


def sqlite_read_only(tmp_path: Path) -> SQLAlchemyError:
    path = tmp_path / "ro.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x)")
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            return _raised(lambda: conn.exec_driver_sql("INSERT INTO t VALUES (1)"))
    finally:
        engine.dispose()


def sqlite_cannot_open(tmp_path: Path) -> SQLAlchemyError:
    engine = _sqlite(tmp_path / "no-such-directory" / "x.db")
    try:
        return _raised(engine.connect)
    finally:
        engine.dispose()


def sqlite_full(tmp_path: Path) -> SQLAlchemyError:
    """A database capped at its current size cannot take a row that needs a new page."""
    engine = _sqlite(tmp_path / "full.db")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
            conn.exec_driver_sql("PRAGMA max_page_count = 1")  # clamped to the current size
            return _raised(lambda: conn.exec_driver_sql(f"INSERT INTO t VALUES ('{BIG}')"))
    finally:
        engine.dispose()


def sqlite_no_such_table(tmp_path: Path) -> SQLAlchemyError:
    engine = _sqlite(tmp_path / "bug.db")
    try:
        with engine.connect() as conn:
            return _raised(lambda: conn.exec_driver_sql("SELECT * FROM nowhere"))
    finally:
        engine.dispose()


def postgresql_refused(_tmp_path: Path) -> SQLAlchemyError:
    """Nothing listens on a port that was free a moment ago: the connection is refused."""
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    try:
        return _raised(engine.connect)
    finally:
        engine.dispose()


def pool_exhausted(tmp_path: Path) -> SQLAlchemyError:
    engine = _sqlite(
        tmp_path / "pool.db", poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.01
    )
    try:
        with engine.connect():
            return _raised(engine.connect)
    finally:
        engine.dispose()


# -- errors as drivers raise them, for server states a test cannot cause on demand -------


def wrapped(orig: Exception, invalidated: bool = False) -> DBAPIError:
    """Wrap a driver error as SQLAlchemy does (its class follows the driver's)."""
    return DBAPIError.instance("COMMIT", None, orig, type(orig), connection_invalidated=invalidated)


def sqlite_io_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 10 | (4 << 8)  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_IOERR_WRITE"  # type: ignore[attr-defined]
    return error


SERVER_CLOSED = "consuming input failed: server closed the connection unexpectedly"
PROVOKED = {
    "sqlite locked": (sqlite_locked, Kind.UNAVAILABLE, "locked"),
    "sqlite read-only": (sqlite_read_only, Kind.UNAVAILABLE, "read_only"),
    "sqlite cannot open": (sqlite_cannot_open, Kind.UNAVAILABLE, "cannot_open"),
    "sqlite full": (sqlite_full, Kind.STORAGE_FULL, "disk_full"),
    "postgresql refused": (postgresql_refused, Kind.UNAVAILABLE, "unreachable"),
    "pool exhausted": (pool_exhausted, Kind.UNAVAILABLE, "pool_exhausted"),
}
CONSTRUCTED: dict[str, tuple[Callable[[], BaseException], Kind, str]] = {
    "57P01 admin shutdown": (
        lambda: wrapped(psycopg.errors.AdminShutdown("terminating connection")),
        Kind.UNAVAILABLE,
        "shutting_down",
    ),
    "57P02 crash shutdown": (
        lambda: wrapped(psycopg.errors.CrashShutdown("terminating connection")),
        Kind.UNAVAILABLE,
        "crash_recovery",
    ),
    "57P03 cannot connect now": (
        lambda: wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")),
        Kind.UNAVAILABLE,
        "starting_up",
    ),
    "53300 too many connections": (
        lambda: wrapped(psycopg.errors.TooManyConnections("too many clients already")),
        Kind.UNAVAILABLE,
        "too_many_connections",
    ),
    "08006 connection failure": (
        lambda: wrapped(psycopg.errors.ConnectionFailure("connection failure")),
        Kind.UNAVAILABLE,
        "connection_lost",
    ),
    "connection closed, no sqlstate": (
        lambda: wrapped(psycopg.OperationalError(SERVER_CLOSED)),
        Kind.UNAVAILABLE,
        "connection_lost",
    ),
    "refused while starting up": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                "FATAL:  the database system is starting up"
            )
        ),
        Kind.UNAVAILABLE,
        "starting_up",
    ),
    "refused: no such database": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                'FATAL:  database "nosuchdb" does not exist'
            )
        ),
        Kind.REFUSED,
        "no_such_database",
    ),
    "refused: no such role": (
        lambda: wrapped(
            psycopg.OperationalError('connection failed: FATAL:  role "nobody" does not exist')
        ),
        Kind.REFUSED,
        "no_such_role",
    ),
    "refused: wrong password": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: FATAL:  password authentication failed for user "app"'
            )
        ),
        Kind.REFUSED,
        "login_refused",
    ),
    "refused: no pg_hba.conf entry": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.5", user '
                '"app", database "tasks", no encryption'
            )
        ),
        Kind.REFUSED,
        "login_refused",
    ),
    "too many connections for a role, transient": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: FATAL:  too many connections for role "limited"'
            )
        ),
        Kind.UNAVAILABLE,
        "too_many_connections",
    ),
    "a role that may not log in": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: FATAL:  role "nologin" is not permitted to log in'
            )
        ),
        Kind.REFUSED,
        "login_refused",
    ),
    "a database that takes no connections": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: FATAL:  database "closed" is not currently accepting '
                "connections"
            )
        ),
        Kind.UNAVAILABLE,
        "not_accepting_connections",
    ),
    "no password given": (
        lambda: wrapped(
            psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                "fe_sendauth: no password supplied"
            )
        ),
        Kind.REFUSED,
        "login_refused",
    ),
    "refused while shutting down": (
        lambda: wrapped(
            psycopg.OperationalError(
                "connection failed: FATAL:  the database system is shutting down"
            )
        ),
        Kind.UNAVAILABLE,
        "shutting_down",
    ),
    "25006 read-only transaction (a standby after a failover)": (
        lambda: wrapped(psycopg.errors.ReadOnlySqlTransaction("read-only transaction")),
        Kind.UNAVAILABLE,
        "read_only_transaction",
    ),
    "57014 statement cancelled": (
        lambda: wrapped(psycopg.errors.QueryCanceled("canceling statement due to timeout")),
        Kind.UNAVAILABLE,
        "statement_cancelled",
    ),
    "55P03 lock timeout": (
        lambda: wrapped(psycopg.errors.LockNotAvailable("canceling statement: lock timeout")),
        Kind.UNAVAILABLE,
        "lock_timeout",
    ),
    "40P01 deadlock after every retry": (
        lambda: wrapped(psycopg.errors.DeadlockDetected("deadlock detected")),
        Kind.UNAVAILABLE,
        "conflict",
    ),
    "53200 out of memory": (
        lambda: wrapped(psycopg.errors.OutOfMemory("out of memory")),
        Kind.UNAVAILABLE,
        "out_of_resources",
    ),
    "58030 server I/O error": (
        lambda: wrapped(psycopg.errors.IoError("could not read block")),
        Kind.UNAVAILABLE,
        "server_io_error",
    ),
    "53100 disk full": (
        lambda: wrapped(psycopg.errors.DiskFull("could not extend file")),
        Kind.STORAGE_FULL,
        "disk_full",
    ),
    "sqlite I/O error": (lambda: wrapped(sqlite_io_error()), Kind.UNAVAILABLE, "io_error"),
    "any error on a connection SQLAlchemy saw die": (
        lambda: wrapped(psycopg.errors.InternalError_("??"), invalidated=True),
        Kind.UNAVAILABLE,
        "connection_lost",
    ),
    "a commit cut off in flight": (
        lambda: CommitUnknown(wrapped(psycopg.OperationalError(SERVER_CLOSED), True)),
        Kind.OUTCOME_UNKNOWN,
        "commit_interrupted",
    ),
}


@pytest.mark.parametrize("name", list(PROVOKED))
def test_provoked_faults_are_classified(name: str, tmp_path: Path) -> None:
    provoke, kind, reason = PROVOKED[name]
    fault = classify(provoke(tmp_path))
    assert fault is not None
    assert (fault.kind, fault.reason) == (kind, reason)
    assert fault.problem and fault.problem[0].islower() and len(fault.problem) < 100


@pytest.mark.parametrize("name", list(CONSTRUCTED))
def test_driver_errors_are_classified(name: str) -> None:
    make, kind, reason = CONSTRUCTED[name]
    fault = classify(make())
    assert fault is not None
    assert (fault.kind, fault.reason) == (kind, reason)


@pytest.mark.parametrize(
    "make",
    [
        lambda _p: wrapped(psycopg.errors.UniqueViolation("duplicate key")),
        lambda _p: wrapped(psycopg.errors.SyntaxError("syntax error")),
        lambda _p: wrapped(psycopg.ProgrammingError("a client-side misuse")),
        sqlite_no_such_table,
        lambda _p: ValueError("a bug"),
        lambda _p: KeyError("a bug"),
    ],
    ids=["unique violation", "syntax error", "programming error", "no such table", "value", "key"],
)
def test_bugs_are_not_classified(make: Callable[[Path], BaseException], tmp_path: Path) -> None:
    assert classify(make(tmp_path)) is None


@pytest.mark.parametrize(
    ("make", "uncertain"),
    [
        (lambda: wrapped(psycopg.OperationalError(SERVER_CLOSED)), True),
        (lambda: wrapped(psycopg.errors.AdminShutdown("terminating connection")), True),
        (lambda: wrapped(psycopg.errors.ConnectionFailure("connection failure")), True),
        (lambda: wrapped(psycopg.errors.InternalError_("??"), invalidated=True), True),
        (lambda: wrapped(sqlite_io_error()), True),
        # The database refused the commit and rolled it back: nothing was applied.
        (lambda: wrapped(psycopg.errors.SerializationFailure("could not serialize")), False),
        (lambda: wrapped(psycopg.errors.DiskFull("could not extend file")), False),
        (lambda: wrapped(psycopg.errors.UniqueViolation("duplicate key")), False),
    ],
    ids=[
        "server closed",
        "admin shutdown",
        "connection failure",
        "invalidated",
        "sqlite I/O error",
        "serialization failure",
        "disk full",
        "unique violation",
    ],
)
def test_only_a_broken_connection_leaves_a_commit_uncertain(
    make: Callable[[], DBAPIError], uncertain: bool
) -> None:
    assert lost_in_commit(make()) is uncertain


def test_a_full_sqlite_database_refuses_the_commit_without_uncertainty(tmp_path: Path) -> None:
    assert lost_in_commit(sqlite_full(tmp_path)) is False
    assert lost_in_commit(sqlite_locked(tmp_path)) is False


# -- through the API ------------------------------------------------------------------------


def body(task_id: str, *dependencies: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "simulate",
        "duration_ms": 1,
        "dependencies": list(dependencies),
        **extra,
    }


def engine_of(app: Flask) -> Engine:
    engine: Engine = app.extensions["store"].engine
    return engine


def assert_retry_later(response: TestResponse, code: str) -> dict[str, Any]:
    answer = assert_error(response, 503, code)
    assert response.headers["Retry-After"] == str(DATABASE_RETRY_AFTER_S)
    return answer


@contextmanager
def page_limit(engine: Engine) -> Iterator[dict[str, int]]:
    """Cap every connection's database size at `limit["pages"]` from its next checkout.

    SQLite clamps a cap below the current size to that size: 1 means "no more growth".
    """
    limit = {"pages": 1}

    def cap(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {int(limit['pages'])}")

    event.listen(engine, "checkout", cap)
    try:
        yield limit
    finally:
        event.remove(engine, "checkout", cap)


def test_a_full_sqlite_database_answers_507_stores_nothing_and_recovers(
    app: Flask, client: FlaskClient
) -> None:
    assert client.post("/api/tasks", json=body("before")).status_code == 201
    big = body("big", "before", payload={"blob": BIG})
    batch = {"tasks": [body("b1"), body("b2", "b1", payload={"blob": BIG})]}
    with page_limit(engine_of(app)) as limit:
        refused = assert_error(client.post("/api/tasks", json=big), 507, "storage_full")
        assert "Retry-After" not in client.post("/api/tasks", json=big).headers
        assert "space" in refused["error"] and refused["details"] == {"reason": "disk_full"}
        assert_error(client.post("/api/tasks/batch", json=batch), 507, "storage_full")
        # Nothing of either is stored: no task row, no dependency edge.
        assert_error(client.get("/api/tasks/big"), 404, "not_found")
        assert (count(app), count(app, deps)) == (1, 0)
        with database.read(engine_of(app)) as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        # Reads still work, and /health says what is wrong with writes.
        health = client.get("/health")
        assert health.status_code == 503
        storage = health.get_json()["database"]
        assert storage["status"] == "refusing_writes" and storage["reason"] == "disk_full"
        assert "full" in storage["error"]
        # Space made: the same submissions now succeed, and /health is well again.
        limit["pages"] = 1_000_000
        created = client.post("/api/tasks", json=big)
        assert created.status_code == 201, created.get_json()
        assert created.get_json()["payload"] == {"blob": BIG}
        assert client.post("/api/tasks/batch", json=batch).status_code == 201
    assert (count(app), count(app, deps)) == (4, 2)
    assert client.get("/health").get_json()["database"] == {"dialect": "sqlite", "status": "ok"}


def disconnect(dialect: str) -> DBAPIError:
    """The error a driver raises when the server vanishes with the COMMIT unanswered."""
    if dialect == "postgresql":
        return wrapped(psycopg.OperationalError(SERVER_CLOSED), invalidated=True)
    return wrapped(sqlite_io_error())


@contextmanager
def commit_fails_once(apply_first: bool) -> Iterator[list[str]]:
    """Make the next write's COMMIT fail as a lost connection, after applying it or not."""
    fired: list[str] = []

    def hook(transaction: Any) -> None:
        if fired:
            return
        dialect = transaction.connection.dialect.name
        fired.append(dialect)
        if apply_first:
            transaction.commit()
        raise disconnect(dialect)

    with faults.injected("database.commit", hook):
        yield fired


def test_a_commit_lost_after_it_applied_answers_outcome_unknown_and_the_replay_settles_it(
    make_app: AppFactory,
) -> None:
    client = make_app().test_client()
    sent = body("lost-ack", payload={"n": 1})
    with commit_fails_once(apply_first=True) as fired:
        answer = assert_retry_later(client.post("/api/tasks", json=sent), "outcome_unknown")
    assert fired, "the fault point was never reached"
    assert "same id" in answer["error"] and "replay" in answer["error"]
    assert answer["details"] == {"reason": "commit_interrupted"}
    replay = client.post("/api/tasks", json=sent)
    assert replay.status_code == 200, replay.get_json()  # it had been stored: a replay
    assert replay.get_json()["id"] == "lost-ack"
    assert count(client.application, task_id="lost-ack") == 1


def test_a_commit_lost_before_it_applied_answers_outcome_unknown_and_the_resubmission_stores_it(
    make_app: AppFactory,
) -> None:
    client = make_app().test_client()
    sent = body("lost-commit")
    with commit_fails_once(apply_first=False):
        assert_retry_later(client.post("/api/tasks", json=sent), "outcome_unknown")
    assert count(client.application, task_id="lost-commit") == 0
    assert client.post("/api/tasks", json=sent).status_code == 201
    assert count(client.application, task_id="lost-commit") == 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (lambda: wrapped(psycopg.errors.DiskFull("could not extend file")), 507, "storage_full"),
        (lambda: wrapped(psycopg.errors.TooManyConnections("no")), 503, "database_unavailable"),
        (lambda: wrapped(psycopg.errors.UndefinedTable("no such table")), 500, "internal_error"),
        (lambda: RuntimeError("a bug"), 500, "internal_error"),
    ],
    ids=["disk full", "too many connections", "undefined table", "a bug"],
)
def test_a_commit_the_database_refused_is_answered_for_its_cause(
    client: FlaskClient, error: Callable[[], Exception], status: int, code: str
) -> None:
    """Refused (not cut off) at the commit: nothing was applied, whatever the cause says."""

    def hook(transaction: Any) -> None:
        raise error()

    with faults.injected("database.commit", hook):
        answer = client.post("/api/tasks", json=body("refused"))
        assert_error(answer, status, code)
        assert answer.headers.get("Retry-After") == ("1" if status == 503 else None)
    assert count(client.application) == 0
    assert client.post("/api/tasks", json=body("refused")).status_code == 201


@pytest.fixture
def unreachable() -> Iterator[Flask]:
    """An app whose PostgreSQL server is not there: its port refuses connections."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/tasks"
    app = create_app({"DATABASE_URL": url, "SCHEDULER_ENABLED": "false"})
    app.config["TESTING"] = True
    yield app
    engine_of(app).dispose()


def test_an_unreachable_server_answers_503_with_retry_after_and_health_says_why(
    unreachable: Flask,
) -> None:
    client = unreachable.test_client()
    answer = assert_retry_later(client.post("/api/tasks", json=body("a")), "database_unavailable")
    assert answer["details"] == {"reason": "unreachable"}
    assert "cannot be reached" in answer["error"]
    assert_retry_later(client.get("/api/tasks"), "database_unavailable")
    assert_retry_later(client.post("/api/tasks/a/cancel"), "database_unavailable")
    health = client.get("/health")
    assert health.status_code == 503
    storage = health.get_json()["database"]
    assert storage == {
        "dialect": "postgresql",
        "status": "unreachable",
        "reason": "unreachable",
        "error": "the database server cannot be reached",
    }


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_unusable_not_unreachable(postgres_url: str) -> None:
    """The server answers and refuses the login: a setting to fix, not a moment to wait
    for. Before, the API and /health said the server could not be reached, and to try
    again shortly."""
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    app = create_app({"DATABASE_URL": missing.split("?")[0], "SCHEDULER_ENABLED": "false"})
    app.config["TESTING"] = True
    client = app.test_client()
    try:
        answer = client.post("/api/tasks", json=body("a"))
        assert answer.status_code == 503 and "Retry-After" not in answer.headers
        error = answer.get_json()
        assert error["code"] == "database_unusable"
        assert error["details"] == {"reason": "no_such_database"}
        assert "until DATABASE_URL or the database server is fixed" in error["error"]
        storage = client.get("/health").get_json()["database"]
        assert (storage["status"], storage["reason"]) == ("unusable", "no_such_database")
        listed = app.test_cli_runner().invoke(args=["tasks", "list"])
        assert listed.exit_code == 1 and "error: database_unusable:" in listed.output
    finally:
        engine_of(app).dispose()


def test_the_cli_names_the_fault_as_the_api_does(unreachable: Flask) -> None:
    result = unreachable.test_cli_runner().invoke(
        args=["tasks", "submit", "-"], input=json.dumps(body("a"))
    )
    assert result.exit_code == 1
    assert "error: database_unavailable: The database is unavailable" in result.output
    assert "Traceback" not in result.output


def test_a_server_that_never_answers_gets_a_503_not_a_hung_request() -> None:
    """A cut network path: TCP connects, nothing answers. libpq alone would wait forever."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)  # the kernel completes handshakes; nobody ever reads
        port = black_hole.getsockname()[1]
        app = create_app(
            {
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/tasks",
                "SCHEDULER_ENABLED": "false",
            }
        )
        outcome: list[Any] = []
        request = threading.Thread(
            target=lambda: outcome.append(app.test_client().post("/api/tasks", json=body("a")))
        )
        request.start()
        # Far beyond the connect timeout: without one, the request would still be waiting.
        request.join(60)
        try:
            assert not request.is_alive(), "the request hung on a server that never answers"
            assert_retry_later(outcome[0], "database_unavailable")
        finally:
            engine_of(app).dispose()


def test_health_names_a_stuck_scheduler_loop(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL="1000")
    scheduler = app.extensions["scheduler"]
    clock = [100.0]
    scheduler.clock = lambda: clock[0]
    scheduler.open()
    assert scheduler.step()
    clock[0] += 30
    state = app.test_client().get("/health").get_json()["scheduler"]
    assert state["problem"] == "the scheduler loop has not run a pass for 30 s (limit 2 s)"


def test_a_full_disk_stays_reported_while_only_the_scheduler_writes(
    app: Flask, client: FlaskClient
) -> None:
    """A heartbeat that still fits proves nothing about submissions: /health keeps saying."""
    assert client.post("/api/tasks", json=body("before")).status_code == 201
    big = body("big", payload={"blob": BIG})
    with page_limit(engine_of(app)) as limit:
        assert_error(client.post("/api/tasks", json=big), 507, "storage_full")
        # A small write outside any request (as a heartbeat or a pass) still fits.
        with database.write(engine_of(app)) as conn:
            conn.execute(update(tasks).where(tasks.c.id == "before").values(priority=1))
        storage = client.get("/health").get_json()["database"]
        assert (storage["status"], storage["reason"]) == ("refusing_writes", "disk_full")
        limit["pages"] = 1_000_000
        assert client.post("/api/tasks", json=big).status_code == 201
    assert client.get("/health").get_json()["database"]["status"] == "ok"


@pytest.mark.postgres
def test_a_read_only_database_answers_503_not_500(postgres_url: str) -> None:
    """What a failover to a standby looks like: every write refused as read-only."""
    writable = create_app({"DATABASE_URL": postgres_url, "SCHEDULER_ENABLED": "false"})
    with writable.app_context():
        db.create_all()
    engine_of(writable).dispose()
    read_only = postgres_url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20")
    app = create_app({"DATABASE_URL": read_only, "SCHEDULER_ENABLED": "false"})
    app.config["TESTING"] = True
    client = app.test_client()
    try:
        answer = assert_retry_later(
            client.post("/api/tasks", json=body("a")), "database_unavailable"
        )
        assert answer["details"] == {"reason": "read_only_transaction"}
        assert client.get("/api/tasks").status_code == 200  # reads still work
        storage = client.get("/health").get_json()["database"]
        assert (storage["status"], storage["reason"]) == (
            "refusing_writes",
            "read_only_transaction",
        )
    finally:
        engine_of(app).dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_a_session_ended_during_a_walk_of_the_graph_answers_503_not_500(
    postgres_url: str, action: str
) -> None:
    """The server ends the session (an administrator, a failover) while a cancel or a
    retry walks the graph with its plans held to the indexes: the walk's cleanup read the
    connection's state, which the lost connection refused, and that error hid the
    database's own, so the answer was a 500."""
    app = build_app(postgres_url, {})
    engine = engine_of(app)
    client = app.test_client()
    assert client.post("/api/tasks", json=body("up")).status_code == 201
    assert client.post("/api/tasks", json=body("down", "up")).status_code == 201
    if action == "retry":
        assert client.post("/api/tasks/up/cancel").status_code == 200
    ended: list[int] = []
    admin = create_engine(postgres_url)

    def end_the_session(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "SET LOCAL enable_seqscan" in statement and not ended:
            pid = conn.connection.driver_connection.info.backend_pid
            ended.append(pid)
            with admin.begin() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    event.listen(engine, "after_cursor_execute", end_the_session)
    try:
        answer = client.post(f"/api/tasks/up/{action}")
    finally:
        event.remove(engine, "after_cursor_execute", end_the_session)
    assert ended, "the walk never ran"
    assert answer.status_code == 503, answer.get_json()
    assert answer.get_json()["code"] == "database_unavailable"
    assert client.post(f"/api/tasks/up/{action}").status_code == 200  # and then it works
    engine.dispose()
    admin.dispose()


@pytest.mark.postgres
def test_on_postgresql_the_sessions_name_the_application(postgres_url: str) -> None:
    """An operator finds them in pg_stat_activity (to end one instance's, say) by name."""
    app = build_app(postgres_url, {})
    engine = app.extensions["store"].engine
    with engine.connect() as conn:
        name = conn.exec_driver_sql("SELECT current_setting('application_name')").scalar()
    engine.dispose()
    assert name == "task-scheduler"
    # One the URL names, in its own parameter or in options, is kept.
    for named in ("&application_name=mine", "&options=-capplication_name%3Dmine"):
        given = database.engine_options(postgres_url + named, 1)["connect_args"]
        assert "application_name" not in given, named


def test_pgappname_names_the_sessions_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGAPPNAME", "mine")
    given = database.engine_options("postgresql://u@h/d", 1)["connect_args"]
    assert "application_name" not in given and given["connect_timeout"] == 5

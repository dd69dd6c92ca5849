"""Engine set-up and transactions: SQLite done properly, PostgreSQL as it comes."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy import Connection, Engine, RootTransaction, Table, event, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from app import events, faults
from app.statuses import TERMINAL
from app.storage import dbfaults, wakeups
from app.storage.tables import task_events

log = logging.getLogger("app.database")

# How long a SQLite writer waits for the lock before giving up: long enough that a
# large batch never turns into "database is locked" for the requests queued behind it.
SQLITE_BUSY_TIMEOUT_MS = 60_000


def utcnow() -> datetime:
    """Return the current UTC time as a naive datetime, the form stored everywhere."""
    return datetime.now(UTC).replace(tzinfo=None)


def storable(text: str | None) -> str | None:
    """Return `text` as both databases can store it: each NUL (which PostgreSQL refuses
    in text) and each lone surrogate (which neither can encode) becomes U+FFFD.

    A handler's error or traceback can hold either; written as they are, the statement
    fails, and so does every pass that carries it.
    """
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def naive_utc(moment: datetime) -> datetime:
    """Return `moment` as the naive UTC time stored in the database."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def sqlite_time(moment: datetime) -> str:
    """Return a time as SQLAlchemy's SQLite DateTime stores it: the year on four digits
    (strftime's %Y leaves years before 1000 short, which sort after every later year and
    which Python cannot read back), microseconds always, no offset."""
    if moment.tzinfo is None:
        return _naive_time(moment)
    return _time_text(moment)


# A batch's rows share one creation time, and a pass's changes one moment: each text is
# made once (a cached answer costs a tenth of making it). Naive times only: two aware
# times in different zones are equal, and their texts are not.
@lru_cache(maxsize=256)
def _naive_time(moment: datetime) -> str:
    return _time_text(moment)


def _time_text(moment: datetime) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} {moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}"
    )


# libpq waits without limit for a server that never answers (a network path cut, a host
# frozen): give up after a few seconds, so that a request answers 503 instead of hanging,
# and let TCP keepalives notice a connection whose peer vanished (the LISTEN connection
# sits idle for as long as nothing is announced). A value in the URL takes precedence.
POSTGRESQL_CONNECT = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    # How the server's views (pg_stat_activity) and logs name our sessions.
    "application_name": "task-scheduler",
}
# How long a request waits for a pooled connection before it is answered 503.
POOL_TIMEOUT_S = 10


def postgresql_connect_args(url: str) -> dict[str, Any]:
    """Return the libpq parameters of POSTGRESQL_CONNECT that `url` does not set itself
    (nor, for the application's name, PGAPPNAME)."""
    given = {k for k in POSTGRESQL_CONNECT if k in url}
    if os.environ.get("PGAPPNAME"):
        given.add("application_name")
    return {k: v for k, v in POSTGRESQL_CONNECT.items() if k not in given}


def engine_options(url: str, max_concurrent: int) -> dict[str, Any]:
    """Return the create_engine options for `url`."""
    if url.startswith("sqlite"):
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 60}}
        if _sqlite_file(url):
            # The connection given back last is lent first: the scheduler's loop, which
            # writes many times a second, finds its own connection again, with its page
            # cache and prepared statements warm, rather than each in turn.
            options["pool_use_lifo"] = True
        return options
    # One connection per running task, plus the scheduler loop and a few requests.
    return {
        "pool_size": max_concurrent + 4,
        "max_overflow": 16,
        "pool_pre_ping": True,
        "pool_timeout": POOL_TIMEOUT_S,
        "connect_args": postgresql_connect_args(url),
    }


def _sqlite_file(url: str) -> bool:
    """Tell whether SQLAlchemy serves a SQLite URL as a file, with a QueuePool: a database
    in memory gets a pool of another kind, which takes no lending order. The same test as
    SQLAlchemy's, on the decoded query."""
    parsed = make_url(url)
    return parsed.database not in (None, "", ":memory:") and parsed.query.get("mode") != "memory"


def configure_postgresql(engine: Engine, lease_s: int) -> None:
    """Make a session that sits inside a transaction for a whole lease end on the server.

    A scheduler paused in the middle of a transaction (SIGSTOP, a frozen VM) would hold
    its row locks forever and stall the live instances that need them to recover its
    work; the server ends such a session after `lease_s`, releasing them.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {int(lease_s * 1000)}")
        dbapi_connection.commit()


_BEGIN = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE")}
# How a transaction `_transaction` begins on SQLite, set around its BEGIN only (any other
# begins DEFERRED). Not an execution option: a connection given options is a copy whose
# events are joined anew at each use, which cost every statement of a pass a microsecond.
_begin_mode: ContextVar[str] = ContextVar("sqlite_begin", default="DEFERRED")


def configure_sqlite(engine: Engine, synchronous: str) -> None:
    """Set WAL, durability, a busy timeout and in-memory temporary storage; make writers
    take the lock up front."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy issue BEGIN itself instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        record.info[_BUSY_TIMEOUT] = SQLITE_BUSY_TIMEOUT_MS
        cursor.execute("PRAGMA foreign_keys=ON")
        # A statement whose rows fire the count triggers needs a statement journal per
        # row; in a temporary file, that is file system calls per task written.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A deferred transaction that reads then writes gets SQLITE_BUSY at once,
        # without waiting; a writer must hold the lock from its first statement.
        # Sent to the driver directly: as a statement of SQLAlchemy's, with its result set
        # up and its events run, it cost a scheduler pass as much as its claim.
        # The migrations ask by an execution option; `_transaction` by `_begin_mode`.
        mode = connection.get_execution_options().get("sqlite_begin") or _begin_mode.get()
        if mode == "IMMEDIATE":
            _begin_immediate(connection)
        else:
            _busy_timeout(connection, SQLITE_BUSY_TIMEOUT_MS)
            driver_execute(connection, _BEGIN[mode])


# The busy timeout a pooled SQLite connection has now, in its pool record's `info`. A
# write (`_begin_immediate`) runs with SQLite's busy handler off: it polls for the write
# lock itself, and once it holds it no statement of its transaction waits for another
# connection. Every other transaction runs with SQLITE_BUSY_TIMEOUT_MS. A connection is
# set as its next transaction needs, not back after each: the scheduler's connection,
# which writes pass after pass, sends no PRAGMA at all.
_BUSY_TIMEOUT = "busy_timeout_ms"


def _busy_timeout(connection: Connection, ms: int) -> None:
    """Give `connection` SQLite's busy timeout `ms`, unless it has it already."""
    info = connection.connection.info
    if info.get(_BUSY_TIMEOUT) != ms:
        info.pop(_BUSY_TIMEOUT, None)  # unknown until the PRAGMA has run
        driver_execute(connection, f"PRAGMA busy_timeout={ms}")
        info[_BUSY_TIMEOUT] = ms


# The sleeps between a writer's tries for the write lock another process holds: short at
# first, then every BUSY_WAITS_S[-1] until SQLITE_BUSY_TIMEOUT_MS. SQLite's own busy
# handler sleeps 1, 2, 5, 10, 15 ms and more in turn, so a writer woke up to several ms
# after the lock was free: with another process's writes holding it 8 ms in 20, a write
# waited 1.25 ms on average and 8.4 ms at the 90th percentile, against 0.95 and 5.7.
BUSY_WAITS_S = (0.0001, 0.0002, 0.0005, 0.001)


def _begin_immediate(connection: Connection) -> None:
    """BEGIN IMMEDIATE, trying again every BUSY_WAITS_S while another process holds the
    write lock (threads of this process queue on `_writer_lock` before they get here).

    SQLite's busy handler is off for these tries and stays off for the transaction, which
    holds the lock (see `_BUSY_TIMEOUT`). Only a plain SQLITE_BUSY is tried again: a stale
    snapshot (SQLITE_BUSY_SNAPSHOT) would fail every time, and fails at once, as it did
    before.
    """
    _busy_timeout(connection, 0)
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    tries = 0
    while True:
        try:
            driver_execute(connection, "BEGIN IMMEDIATE")
            break
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlite_errorcode", None)
            if code != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(BUSY_WAITS_S[min(tries, len(BUSY_WAITS_S) - 1)])
        tries += 1


def driver_execute(conn: Connection, sql: str, params: Any = ()) -> tuple[Sequence[Any], int]:
    """Run one of the scheduler pass's fixed statements; return its rows (as tuples) and
    how many rows it changed.

    On SQLite the statement goes to the driver's own cursor. SQLAlchemy's execution
    (a context, a result and its metadata per statement) cost a pass about as much as
    SQLite's own work, all of it holding the GIL the task threads wait for. What callers
    rely on is kept: the `before_cursor_execute` listeners still see the statement (the
    simulation fails statements through them), and an error is raised as SQLAlchemy
    raises a statement's. PostgreSQL's statements go through SQLAlchemy as before.
    """
    if conn.dialect.name != "sqlite":
        result = conn.exec_driver_sql(sql, params)
        return (list(result) if result.returns_rows else []), result.rowcount
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        for listener in conn.dispatch.before_cursor_execute:
            sql, params = listener(conn, cursor, sql, params, None, False)
        cursor.execute(sql, params)
        return cursor.fetchall(), cursor.rowcount
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


@contextmanager
def _transaction(
    engine: Engine, begin: str, writes: bool = False, staged: Sequence[events.Change] = ()
) -> Iterator[Connection]:
    with engine.connect() as conn:
        try:
            token = _begin_mode.set(begin)
            try:
                transaction = conn.begin()
            finally:
                _begin_mode.reset(token)
            with transaction:
                yield conn
                if writes:
                    if staged:
                        record_changes(conn, staged)
                    _commit(transaction)
        except BaseException:
            if engine.dialect.name == "sqlite":
                # A statement left unfinished by the error would keep an old snapshot
                # open on this connection, and its next BEGIN IMMEDIATE would fail at
                # once with SQLITE_BUSY_SNAPSHOT; discard the connection instead.
                conn.invalidate()
            raise


# The OID of the `tasks` table a session sees: what tells this deployment from others in
# other schemas of the same database (and test runs beside each other). It keys the
# advisory locks, and it ends the name of every NOTIFY channel, so that their
# notifications wake this deployment's listeners only.
DEPLOYMENT_SQL = "CAST(CAST('tasks' AS regclass) AS oid)"


def channel_sql(name: str) -> str:
    """Return the SQL naming this deployment's channel `name` (a SQL expression giving the
    base name): the base name, an underscore and the deployment's OID."""
    return f"({name} || '_' || {DEPLOYMENT_SQL}::text)"


# Carries the ids of the tasks a transaction ended, comma-separated (an id holds no
# comma), in payloads under PostgreSQL's limit of 8,000 bytes: what wakes the requests
# waiting for those tasks, on every instance (notify.Listener).
ENDED_CHANNEL = "task_scheduler_ended"
MAX_PAYLOAD = 7900
# Tells the instances' event streams that a transaction wrote events (no payload).
EVENTS_CHANNEL = "task_scheduler_events"
# Rows per statement of events (SQLite binds at most 32,766 parameters), and the longest
# reason an event keeps.
EVENT_ROWS = 500
MAX_EVENT_REASON = 1000
_EVENT_AT = {"sqlite": "?", "postgresql": "timezone('UTC', clock_timestamp())"}
# Past this many events, a PostgreSQL transaction writes them by COPY.
COPY_EVENTS_FROM = 100


def record_changes(conn: Connection, changes: Sequence[events.Change]) -> None:
    """Write the transaction's state changes (at least one) to `task_events`, and on
    PostgreSQL tell the listening instances, once it commits, that events were written and
    which tasks ended.

    A pass's few events go in one INSERT; on PostgreSQL the notifications ride on it (a
    data-modifying CTE), so no round trip is added. A large submission's go by COPY, which
    PostgreSQL takes at several times the rate of a many-row INSERT.
    """
    d = conn.dialect.name
    if d == "sqlite":
        at = sqlite_time(utcnow())
        for start in range(0, len(changes), EVENT_ROWS):
            part = changes[start : start + EVENT_ROWS]
            params: list[Any] = []
            for task_id, task_type, attempt, status, why in part:
                params += (task_id, task_type, attempt, status, _stored_reason(why), at)
            driver_execute(conn, events_insert_sql(d, len(part)), params)
        # Other processes' waiting requests and event streams, once it commits.
        ended = [change[0] for change in changes if change[3] in TERMINAL]
        if ended:
            wakeups.ask(wakeups.ENDED, ended_payloads(ended))
        wakeups.ask(wakeups.EVENTS)
        return
    notify, notify_params = _notify_sql(changes)
    if len(changes) <= COPY_EVENTS_FROM:
        insert = events_insert_sql(d, len(changes))
        params = [v for change in changes for v in _event_row(change)]
        conn.exec_driver_sql(f"WITH written AS ({insert}) {notify}", (*params, *notify_params))
        return
    # The notifications (sent at commit) and the clock the events are stamped with, in
    # one statement; then the rows.
    clock = notify.replace("SELECT ", "SELECT timezone('UTC', clock_timestamp()), ", 1)
    at = conn.exec_driver_sql(clock, notify_params).scalar_one()
    statement, types = _COPY_EVENTS
    copy_rows(conn, statement, ((*_event_row(change), at) for change in changes), types)


def _event_row(change: events.Change) -> tuple[Any, ...]:
    """Return the event's task id, type, attempt, status and reason, as stored."""
    task_id, task_type, attempt, status, why = change
    return task_id, task_type, attempt, status, _stored_reason(why)


# Most reasons repeat (a submission's tasks share one, a pass's claims another): each is
# made storable once.
@lru_cache(maxsize=1024)
def _stored_reason(why: str) -> str | None:
    return storable(why[:MAX_EVENT_REASON])


def _notify_sql(changes: Sequence[events.Change]) -> tuple[str, tuple[str, ...]]:
    """Return the SELECT that notifies EVENTS_CHANNEL, and ENDED_CHANNEL of the ended ids."""
    ended = [change[0] for change in changes if change[3] in TERMINAL]
    payloads = ["", *ended_payloads(ended)]
    channels = [EVENTS_CHANNEL] + [ENDED_CHANNEL] * (len(payloads) - 1)
    calls = ", ".join([f"pg_notify({channel_sql('%s')}, %s)"] * len(payloads))
    return f"SELECT {calls}", tuple(
        v for pair in zip(channels, payloads, strict=True) for v in pair
    )


def copy_statement(table: Table, columns: Sequence[str]) -> tuple[str, list[str]]:
    """Return the binary COPY ... FROM STDIN of `columns` of `table`, and their types as
    `copy_rows` takes them.

    Binary: psycopg adapts each value by the type given rather than looking it up, and
    PostgreSQL reads numbers and times without parsing text (a 10,000-task batch's COPY
    costs our process less than half the CPU of the text format, the server 5% less).
    """
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    return statement, [_copy_type(table.c[name].type) for name in columns]


def _copy_type(sql_type: Any) -> str:
    """Return the name psycopg knows a column's PostgreSQL type by."""
    compiled = sql_type.compile(dialect=postgresql.dialect()).split("(", 1)[0]
    return _COPY_TYPES[compiled]


_COPY_TYPES = {
    "VARCHAR": "varchar",
    "TEXT": "text",
    "SMALLINT": "int2",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "BOOLEAN": "bool",
    # JSON values come serialized (our encoder, floats exact): sent as text, which the
    # column's binary input reads as its text.
    "JSON": "text",
    "TIMESTAMP WITHOUT TIME ZONE": "timestamp",
}
_COPY_EVENTS = copy_statement(task_events, ["task_id", "type", "attempt", "status", "reason", "at"])


def copy_rows(
    conn: Connection,
    statement: str,
    rows: Iterable[Sequence[Any]],
    types: Sequence[str] | None = None,
) -> None:
    """Run the PostgreSQL COPY ... FROM STDIN `statement` with `rows` (in the binary
    format with `types`, as `copy_statement` makes them).

    Its errors are raised as SQLAlchemy raises a statement's (a duplicate key as an
    IntegrityError), and a connection it broke is not given back to the pool.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            if types is not None:
                copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        if raw.closed or raw.broken:
            conn.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


@lru_cache(maxsize=64)
def events_insert_sql(d: str, n: int) -> str:
    """Return the statement adding `n` events for `d`: positional parameters, task id,
    type, attempt, status and reason of each in turn, then (on SQLite) the time."""
    mark = "?" if d == "sqlite" else "%s"
    row = f"({mark}, {mark}, {mark}, {mark}, {mark}, {_EVENT_AT[d]})"
    return (
        "INSERT INTO task_events (task_id, type, attempt, status, reason, at)"
        f" VALUES {', '.join([row] * n)}"
    )


def ended_payloads(ids: Sequence[str]) -> list[str]:
    """Return the payloads that name `ids` on ENDED_CHANNEL."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for task_id in ids:
        if current and size + len(task_id) + 1 > MAX_PAYLOAD:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(task_id)
        size += len(task_id) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


def _commit(transaction: RootTransaction) -> None:
    """Commit a write, telling a failure of the COMMIT itself from one of the body.

    An error raised by the body means nothing was committed. One raised by the COMMIT on
    a connection that broke may come after the server applied it: the caller cannot know,
    and must be told so (CommitUnknown) rather than that nothing happened.
    """
    try:
        faults.point("database.commit", transaction=transaction)
        transaction.commit()
    except DBAPIError as exc:
        if dbfaults.lost_in_commit(exc):
            raise dbfaults.CommitUnknown(exc) from exc
        raise


# SQLite admits one writer. Threads of one process queue on this lock instead of on
# SQLite's busy handler, which sleeps in steps of up to 100 ms and so left a writer
# waiting long after the lock was free. A writer that finds another process's lock tries
# again every BUSY_WAITS_S (`_begin_immediate`).
_writers: WeakKeyDictionary[Engine, threading.RLock] = WeakKeyDictionary()
_writers_guard = threading.Lock()


def _writer_lock(engine: Engine) -> threading.RLock:
    with _writers_guard:
        lock = _writers.get(engine)
        if lock is None:
            lock = _writers[engine] = threading.RLock()
        return lock


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """Run one write transaction; it commits on success and rolls back on error."""
    serialised = _writer_lock(engine) if engine.dialect.name == "sqlite" else nullcontext()
    try:
        # State changes the transaction stages are logged once it committed.
        with (
            wakeups.after_commit(engine),  # once the write lock is free
            serialised,
            events.staging(engine) as staged,
            _transaction(engine, "IMMEDIATE", True, staged) as conn,
        ):
            yield conn
    except Exception as exc:
        dbfaults.record(engine, exc)  # /health reports a write refused while reads work
        raise
    dbfaults.record(engine, None)


T = TypeVar("T")
# PostgreSQL's deadlock_detected and serialization_failure: the transaction did nothing,
# and running it again, once the other one has finished, is safe.
CONFLICTS = ("40P01", "40001")
TRANSACTION_TRIES = 8


def transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work` in one write transaction, again if PostgreSQL aborted it for a conflict.

    Two transactions that lock the same task rows in different orders (two retries of a
    task's two failed dependencies) can deadlock; PostgreSQL aborts one of them, which
    then runs again and sees what the other committed.
    """
    for attempt in range(TRANSACTION_TRIES):
        try:
            with write(engine) as conn:
                return work(conn)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate not in CONFLICTS or attempt == TRANSACTION_TRIES - 1:
                raise
        time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")


def close(engine: Engine) -> None:
    """Close the engine's idle connections as the process ends; never raise.

    On SQLite, first copy the write-ahead log's commits into the database file, without
    waiting for any other connection: the file alone then holds them, so a copy of it
    taken after a stop is whole. The log file itself goes once its last connection, in
    whichever process, closes.
    """
    try:
        if engine.dialect.name == "sqlite":
            raw = engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                raw.close()
        engine.dispose()
    except Exception as exc:  # a database gone or out: nothing more to keep
        log.info("database connections not closed cleanly at exit: %s", exc)


def read(engine: Engine) -> AbstractContextManager[Connection]:
    """Run one short read transaction."""
    return _transaction(engine, "DEFERRED")


@contextmanager
def snapshot_read(engine: Engine) -> Iterator[Connection]:
    """Run one read transaction whose statements all see the same snapshot: on
    PostgreSQL REPEATABLE READ, read only (never refused for a conflict); SQLite's read
    transactions always do."""
    with _transaction(engine, "DEFERRED") as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


def advisory_lock(conn: Connection, name: int, *, wait: bool = True, shared: bool = False) -> bool:
    """Take the PostgreSQL transaction lock `name` (a 32-bit number) for this deployment,
    alone or `shared`; without `wait`, only if it is free. Tell whether it is held.

    The lock is keyed by the name and the OID of the `tasks` table the session sees, so
    deployments in other schemas of the same database (and test runs beside each other)
    never wait for each other's locks.
    """
    signed = name - (1 << 32) if name >= 1 << 31 else name
    function = ("pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock") + (
        "_shared" if shared else ""
    )
    sql = f"SELECT {function}(%(name)s, {DEPLOYMENT_SQL}::int)"
    held = conn.exec_driver_sql(sql, {"name": signed}).scalar()
    return wait or bool(held)


# What `by_index` turns off; JIT too, which the costs of a misled plan would switch on.
_BY_INDEX = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin", "jit")


@contextmanager
def by_index(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, plan the statements inside with index scans and nested loops.

    A cascade or a retry walks the dependency edges from a few tasks. PostgreSQL plans
    such a walk from its statistics, and they mislead it: it guesses a recursive query's
    rows far too high, and where most edges share one dependency (a wide fan-out) it
    expects every probe by dependency to return them all. Either way it would read whole
    tables at every failure. Here a walk reads what it reaches, through the indexes. The
    settings are local to the transaction and put back when the block ends.
    """
    if conn.dialect.name != "postgresql" or conn.info.get("by_index"):
        yield
        return
    conn.info["by_index"] = True
    conn.exec_driver_sql("; ".join(f"SET LOCAL {name} = off" for name in _BY_INDEX))
    try:
        yield
    finally:
        # A connection lost meanwhile refuses even a look at its state: it is thrown away
        # with it, and the database's error is the one to pass on.
        if not conn.invalidated:
            conn.info.pop("by_index", None)
    conn.exec_driver_sql("; ".join(f"RESET {name}" for name in _BY_INDEX))


def now(conn: Connection) -> datetime:
    """Return the time a transaction compares and stamps with, read when it is called.

    On PostgreSQL every instance and every API worker, on whatever host, reads the one
    clock they share, the database's, so a skewed host neither shifts a delay nor stamps a
    finish out of order. SQLite lives on this host, whose clock is the database's.
    """
    if conn.dialect.name == "postgresql":
        moment: datetime = conn.execute(
            select(func.timezone("UTC", func.clock_timestamp()))
        ).scalar_one()
        return moment
    return utcnow()


def stamp(conn: Connection, now: datetime) -> Any:
    """Return the time to record for a state change, read while the row is written.

    A task's start must never be stamped before the finish that made it ready. SQLite
    serialises writers, so `now`, read once the write lock is held, is exact. PostgreSQL
    does not: the database clock, read as the statement writes the row (after its snapshot
    saw the finish committed), is.
    """
    if conn.dialect.name == "postgresql":
        return func.timezone("UTC", func.clock_timestamp())
    return now

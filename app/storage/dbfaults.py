"""What a failed database call means for the request it interrupted, decided in one place.

A client can act on four outcomes of an infrastructure fault, and on nothing finer:

- UNAVAILABLE: the database could not be reached, or gave up on the work before it
  committed (a restart, a shutdown, no free connection, SQLite locked past its busy
  timeout, an I/O error, a read-only file). Nothing changed; the same request later works.
- STORAGE_FULL: the disk (or SQLite's size limit) refused the write. Nothing changed, and
  repeating the request fails until someone frees space.
- OUTCOME_UNKNOWN: the connection failed while the COMMIT was in flight, so the change may
  or may not be stored. Only a request that is safe to repeat settles it: a submission
  with its id is answered as a replay when it was stored.
- REFUSED: the server answers but refuses this deployment's login (no such database or
  role, a wrong password, no pg_hba.conf entry). Nothing changed, and nothing will until
  an operator fixes DATABASE_URL or the server: no "try again shortly".

Anything else is a bug and stays one: `classify` returns None. `app.errors` turns these
into HTTP answers, `/health` into a sentence. `record` and `refusing_writes` remember a
write refused while reads still work (a full disk), which a `SELECT 1` cannot see.
"""

from __future__ import annotations

import enum
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import psycopg
from flask import has_request_context
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import (
    ApiError,
    DatabaseUnavailable,
    DatabaseUnusable,
    OutcomeUnknown,
    StorageFull,
)


class Kind(enum.Enum):
    """What the client may conclude about its request."""

    UNAVAILABLE = "unavailable"
    STORAGE_FULL = "storage_full"
    OUTCOME_UNKNOWN = "outcome_unknown"
    REFUSED = "refused"


@dataclass(frozen=True)
class Reason:
    """One cause: what it means for the request, and how an operator would put it."""

    kind: Kind
    problem: str
    # A COMMIT that failed for this reason may have been applied before the failure.
    uncertain_at_commit: bool = False
    # Reads may still work while writes fail this way, so /health must remember it.
    refuses_writes: bool = False


REASONS: dict[str, Reason] = {
    "unreachable": Reason(Kind.UNAVAILABLE, "the database server cannot be reached", True),
    "connection_lost": Reason(
        Kind.UNAVAILABLE, "the connection to the database server was lost", True
    ),
    "shutting_down": Reason(
        Kind.UNAVAILABLE,
        "the database server ended the session (shutting down, restarting, or ended by an "
        "administrator)",
        True,
    ),
    "crash_recovery": Reason(
        Kind.UNAVAILABLE, "the database server is recovering from a crash", True
    ),
    "starting_up": Reason(
        Kind.UNAVAILABLE, "the database server is starting up and not yet accepting connections"
    ),
    "too_many_connections": Reason(
        Kind.UNAVAILABLE, "the database server has no free connection slots"
    ),
    "pool_exhausted": Reason(Kind.UNAVAILABLE, "no database connection became free in time"),
    "not_accepting_connections": Reason(
        Kind.UNAVAILABLE,
        "the database takes no connections for now (an administrator turned them off, "
        "ALLOW_CONNECTIONS false)",
    ),
    "locked": Reason(
        Kind.UNAVAILABLE,
        "the SQLite database stayed locked by another writer past the busy timeout",
        refuses_writes=True,
    ),
    "io_error": Reason(
        Kind.UNAVAILABLE, "the SQLite file could not be read or written (I/O error)", True
    ),
    "read_only": Reason(
        Kind.UNAVAILABLE,
        "the SQLite database is read-only (permissions, or a read-only disk)",
        refuses_writes=True,
    ),
    "cannot_open": Reason(Kind.UNAVAILABLE, "the SQLite database file cannot be opened"),
    "read_only_transaction": Reason(
        Kind.UNAVAILABLE,
        "the database accepts no writes (a standby, or default_transaction_read_only)",
        refuses_writes=True,
    ),
    "statement_cancelled": Reason(
        Kind.UNAVAILABLE, "the database cancelled the statement (a timeout, or an operator)"
    ),
    "lock_timeout": Reason(Kind.UNAVAILABLE, "a row stayed locked past the lock timeout"),
    "conflict": Reason(
        Kind.UNAVAILABLE, "the transaction kept meeting concurrent ones (deadlock) and gave up"
    ),
    "out_of_resources": Reason(
        Kind.UNAVAILABLE, "the database server ran out of memory or another resource"
    ),
    "server_io_error": Reason(
        Kind.UNAVAILABLE, "the database server could not read or write its files (I/O error)"
    ),
    "disk_full": Reason(
        Kind.STORAGE_FULL, "the database or the disk holding it is full", refuses_writes=True
    ),
    "commit_interrupted": Reason(
        Kind.OUTCOME_UNKNOWN, "the connection failed while a commit was in flight"
    ),
    "no_such_database": Reason(
        Kind.REFUSED, "the database server has no database of the name DATABASE_URL gives"
    ),
    "no_such_role": Reason(
        Kind.REFUSED, "the database server has no role (user) of the name DATABASE_URL gives"
    ),
    "login_refused": Reason(
        Kind.REFUSED,
        "the database server refused the login (the password, or no pg_hba.conf entry for "
        "this user, database and host)",
    ),
}

# PostgreSQL SQLSTATEs of a session the server ended or never began; class 08 is the
# connection exceptions. 53100 is disk_full.
SQLSTATES = {
    "57P01": "shutting_down",  # admin_shutdown
    "57P02": "crash_recovery",  # crash_shutdown
    "57P03": "starting_up",  # cannot_connect_now
    "53300": "too_many_connections",
    "53100": "disk_full",
    "53000": "out_of_resources",  # insufficient_resources
    "53200": "out_of_resources",  # out_of_memory
    "25006": "read_only_transaction",  # a standby after a failover, or read-only by setting
    "57014": "statement_cancelled",  # query_canceled: statement_timeout, pg_cancel_backend
    "55P03": "lock_timeout",  # lock_not_available
    "40P01": "conflict",  # deadlock_detected, still there after every retry
    "40001": "conflict",  # serialization_failure, likewise
    "58030": "server_io_error",
}
# SQLite primary result codes (the extended ones, such as SQLITE_IOERR_FSYNC, share them).
SQLITE_CODES = {
    "SQLITE_BUSY": "locked",
    "SQLITE_LOCKED": "locked",
    "SQLITE_IOERR": "io_error",
    "SQLITE_READONLY": "read_only",
    "SQLITE_CANTOPEN": "cannot_open",
    "SQLITE_FULL": "disk_full",
}
# libpq reports a refused connection in words only: no SQLSTATE reaches the client.
CONNECT_MESSAGES = (
    # Transient first: these name a role or a database too.
    ("too many connections for", "too_many_connections"),
    ("starting up", "starting_up"),
    ("not yet accepting connections", "starting_up"),
    ("in recovery mode", "crash_recovery"),
    ("shutting down", "shutting_down"),
    ("too many clients", "too_many_connections"),
    ("remaining connection slots", "too_many_connections"),
    ("is not currently accepting connections", "not_accepting_connections"),
    # Refused, until DATABASE_URL or the server changes.
    ("password authentication failed", "login_refused"),
    ("no pg_hba.conf entry", "login_refused"),
    ("authentication failed", "login_refused"),
    ("no password supplied", "login_refused"),
    ("is not permitted to log in", "login_refused"),
    ("permission denied for database", "login_refused"),
)
# Names that do not exist: `role "x" does not exist`, `database "x" does not exist`.
MISSING = (
    (re.compile(r'role "[^"]*" does not exist'), "no_such_role"),
    (re.compile(r'database "[^"]*" does not exist'), "no_such_database"),
)


@dataclass(frozen=True)
class Fault:
    """A classified database error: its kind, a stable reason code and a sentence."""

    kind: Kind
    reason: str
    problem: str


class CommitUnknown(SQLAlchemyError):
    """The connection failed while COMMIT was in flight: the write may have been applied.

    An SQLAlchemyError, so that whatever handles database errors handles this one too;
    not a DBAPIError, so that nothing retries it as if it had certainly rolled back.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"commit outcome unknown: {describe(cause)}")
        self.cause = cause


def classify(exc: BaseException) -> Fault | None:
    """Return what `exc` means for the request, or None when it is no infrastructure fault."""
    reason = _reason(exc)
    if reason is None:
        return None
    return Fault(REASONS[reason].kind, reason, REASONS[reason].problem)


def from_database(exc: BaseException) -> bool:
    """Tell whether `exc` came from the database or the way to it (any driver error,
    classified or not), rather than from this process's own code."""
    return isinstance(exc, SQLAlchemyError) or classify(exc) is not None


def lost_in_commit(exc: BaseException) -> bool:
    """Tell whether a COMMIT that raised `exc` may nevertheless have been applied.

    True when the connection broke (the server may have committed and failed to answer);
    false when the database refused the commit and rolled back (a full disk, a conflict).
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    reason = _reason(exc)
    return reason is not None and REASONS[reason].uncertain_at_commit


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, CommitUnknown):
        return "commit_interrupted"
    if isinstance(exc, PoolTimeout):
        return "pool_exhausted"
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, psycopg.Error):
        return _postgresql_reason(orig) or _invalidated(exc)
    if isinstance(orig, sqlite3.Error):
        name = getattr(orig, "sqlite_errorname", None) or ""
        return SQLITE_CODES.get("_".join(name.split("_")[:2])) or _invalidated(exc)
    return _invalidated(exc)


def _postgresql_reason(error: psycopg.Error) -> str | None:
    sqlstate = error.sqlstate
    if sqlstate is not None:
        return "connection_lost" if sqlstate.startswith("08") else SQLSTATES.get(sqlstate)
    if not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return None
    # No SQLSTATE: libpq's own failure, to connect or on a connection that went away.
    text = str(error).lower()
    if text.startswith("connection failed") or "connection refused" in text:
        for words, reason in CONNECT_MESSAGES:
            if words in text:
                return reason
        for pattern, reason in MISSING:
            if pattern.search(text):
                return reason
        return "unreachable"
    return "connection_lost"


def _invalidated(exc: BaseException) -> str | None:
    # SQLAlchemy's own verdict that the connection died, for errors we do not otherwise know.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "connection_lost"
    return None


def describe(exc: BaseException) -> str:
    """Return the first line of the driver's own message, for a log line."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = str(orig).strip().splitlines()
    return lines[0][:200] if lines else type(orig).__name__


# -- writes refused while reads work ---------------------------------------------------

# How long a refused write is reported by /health when no write has succeeded since:
# long enough to be seen, short enough that space freed while nothing writes shows soon.
REFUSED_WRITE_MEMORY_S = 60.0

_refused: WeakKeyDictionary[Engine, tuple[Fault, float]] = WeakKeyDictionary()
_refused_guard = threading.Lock()


def record(engine: Engine, exc: BaseException | None) -> None:
    """Note how a write transaction ended: committed (None), or refused by `exc`."""
    if exc is None and not _refused:
        return  # the common case, on every commit: nothing to forget
    with _refused_guard:
        if exc is None:
            # A disk short of space may still take the scheduler's small writes (a
            # heartbeat) while it refuses submissions: only a request's write that
            # commits, or the memory's end, clears that refusal.
            found = _refused.get(engine)
            if found is not None and (
                found[0].kind is not Kind.STORAGE_FULL or has_request_context()
            ):
                del _refused[engine]
            return
        fault = classify(exc)
        if fault is not None and REASONS[fault.reason].refuses_writes:
            _refused[engine] = (fault, time.monotonic())


def refusing_writes(engine: Engine) -> tuple[Fault, float] | None:
    """Return the fault that refused this process's last write and its age in seconds,
    unless a write has committed since or it is older than REFUSED_WRITE_MEMORY_S."""
    with _refused_guard:
        found = _refused.get(engine)
    if found is None:
        return None
    fault, at = found
    age = time.monotonic() - at
    return (fault, age) if age <= REFUSED_WRITE_MEMORY_S else None


def database_error(exc: BaseException) -> ApiError | None:
    """Return the answer to an infrastructure fault, or None for any other error (a bug)."""
    fault = classify(exc)
    if fault is None:
        return None
    details = {"reason": fault.reason}
    if fault.kind is Kind.STORAGE_FULL:
        return StorageFull(
            f"The write was refused: {fault.problem}. Nothing was stored; repeating it "
            "fails until space is freed.",
            details,
        )
    if fault.kind is Kind.REFUSED:
        return DatabaseUnusable(
            f"The database cannot be used: {fault.problem}. Nothing was changed, and "
            "nothing will be until DATABASE_URL or the database server is fixed.",
            details,
        )
    if fault.kind is Kind.OUTCOME_UNKNOWN:
        return OutcomeUnknown(
            "The connection to the database failed during the commit: this may or may not "
            "have been stored. Repeating the request is safe; the same submission with the "
            "same id is a replay if stored.",
            details,
        )
    return DatabaseUnavailable(
        f"The database is unavailable: {fault.problem}. Nothing was changed; try again shortly.",
        details,
    )

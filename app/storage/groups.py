"""Group commit: the writes of concurrent requests share one SQLite transaction.

SQLite admits one writer at a time, so concurrent single submissions queue on the write
lock, and each pays for its own transaction: a pooled connection, BEGIN IMMEDIATE, a
durable COMMIT. Under load they spent a third of their time waiting for that lock. Here
the first caller to arrive leads: once it holds the lock it takes every caller waiting
behind it (up to `GROUP_LIMIT`) and runs their work in one transaction, each in a
savepoint of its own, then commits once and hands each caller its own answer. The next
waiting caller leads the next group.

Nothing is acknowledged before the one commit that holds it. A caller's expected refusal
(`expected`, an answer such as "duplicate id") rolls back its savepoint only and leaves
the others' work in the group; it is the answer only once the group has committed, since
it may rest on another caller's work (a duplicate of an id inserted earlier in the
group). Any other error of a caller's work rolls the whole transaction back, and the
others then run their work again alone, each in a transaction of its own, as if there
had been no group. A failed commit is the failure of every caller whose work it held;
those it refused are asked again alone.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from app import events
from app.storage import database, tasks

T = TypeVar("T")
# Callers per transaction at most: each holds a thread of the server, so a group is
# bounded by the threads anyway; this bounds how long the lock is held.
GROUP_LIMIT = 64


class _Entry(Generic[T]):
    """One caller's work, and what became of it."""

    def __init__(self, first: Callable[[Connection], T], work: Callable[[Connection], T]) -> None:
        self.first = first
        self.work = work
        self.turn = threading.Event()  # set when answered, or when it is this one's turn
        self.answered = False
        self.alone = False  # run again in a transaction of its own
        self.result: T | None = None
        # Its own refusal: the answer, once the group has committed.
        self.refusal: Exception | None = None
        # What it raises instead: the error of its own work, or of the group's commit.
        self.error: BaseException | None = None


class GroupCommit:
    """Runs callers' inserting transactions together, one commit for all of them."""

    def __init__(self, engine: Engine, expected: tuple[type[Exception], ...]) -> None:
        self.engine = engine
        self.expected = expected
        self._guard = threading.Lock()
        self._waiting: deque[_Entry[Any]] = deque()
        self._leading = False

    def run(self, work: Callable[[Connection], T], first: Callable[[Connection], T]) -> T:
        """Run as `tasks.inserting(engine, work, first)` does, in a group.

        `first` runs in the group's transaction; if the unique key refuses what it
        inserted, `work` runs instead, in the same transaction.
        """
        entry: _Entry[T] = _Entry(first, work)
        with self._guard:
            self._waiting.append(entry)
            lead = not self._leading
            self._leading = True
        if not lead:
            entry.turn.wait()
        if not entry.answered:  # this caller's turn to lead
            try:
                self._lead(entry)
            finally:
                self._pass_on()
        if entry.alone:
            return tasks.inserting(self.engine, work, first)
        if entry.error is not None:
            raise entry.error
        if entry.refusal is not None:
            raise entry.refusal
        return entry.result  # type: ignore[return-value]

    def _pass_on(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting[0].turn.set()  # the oldest waiting caller leads next
            else:
                self._leading = False

    def _lead(self, own: _Entry[Any]) -> None:
        group: list[_Entry[Any]] = []
        wrote = False
        try:
            with database.write(self.engine) as conn:
                # Taken once the lock is held: whoever queued meanwhile joins.
                with self._guard:
                    while self._waiting and len(group) < GROUP_LIMIT:
                        group.append(self._waiting.popleft())
                for entry in group:
                    self._one(conn, entry)
                wrote = True
        except BaseException as exc:
            if not group:  # the transaction never began: the leader alone is told
                with self._guard:
                    self._waiting.remove(own)
                own.error = exc
                own.answered = True
            for entry in group:
                if entry.error is not None:
                    continue  # the error of its own work, which spoiled the group
                if wrote and entry.refusal is None:
                    # The commit failed: nothing of its work is known to hold.
                    entry.error = _own_copy(exc)
                else:
                    # Not written; a refusal may have rested on another's rolled-back
                    # work (a duplicate of an id no one stored): asked again, alone.
                    entry.refusal = None
                    entry.alone = True
        finally:
            for entry in group:
                entry.answered = True
                entry.turn.set()

    def _one(self, conn: Connection, entry: _Entry[Any]) -> None:
        """Run one caller's work in a savepoint; its expected refusal spoils nothing."""
        try:
            try:
                entry.result = _in_savepoint(conn, entry.first)
            except IntegrityError:
                if not _open(conn):
                    raise
                entry.result = _in_savepoint(conn, entry.work)
        except self.expected as exc:
            if not _open(conn):
                entry.error = exc
                raise
            entry.refusal = exc
        except BaseException as exc:
            entry.error = exc
            raise


def _in_savepoint(conn: Connection, work: Callable[[Connection], T]) -> T:
    database.driver_execute(conn, "SAVEPOINT entry")
    try:
        with events.held():
            result = work(conn)
    except BaseException:
        if _open(conn):
            database.driver_execute(conn, "ROLLBACK TO entry")
            database.driver_execute(conn, "RELEASE entry")
        raise
    database.driver_execute(conn, "RELEASE entry")
    return result


def _open(conn: Connection) -> bool:
    """Tell whether the transaction is still open: after some errors (an I/O error, a
    full disk) SQLite rolls the whole of it back itself, savepoints included."""
    return bool(getattr(conn.connection.dbapi_connection, "in_transaction", True))


def _own_copy(exc: BaseException) -> BaseException:
    """Return a copy of `exc` for one caller to raise: raised in several threads, one
    exception would collect all their tracebacks (and keep their frames alive)."""
    try:
        copied = copy.copy(exc)
    except Exception:
        return exc
    copied.__cause__, copied.__context__ = exc.__cause__, exc.__context__
    copied.__traceback__ = None
    return copied


_groups: WeakKeyDictionary[Engine, GroupCommit] = WeakKeyDictionary()
_groups_guard = threading.Lock()


def of(engine: Engine, expected: tuple[type[Exception], ...]) -> GroupCommit:
    """Return the group commit of `engine`'s inserting transactions."""
    with _groups_guard:
        group = _groups.get(engine)
        if group is None:
            group = _groups[engine] = GroupCommit(engine, expected)
        return group

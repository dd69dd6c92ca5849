"""Event streams (`GET /api/events`): server-sent events of task state changes.

A stream sends its headers and a `retry:` line at once, then every event after where it
starts (the newest event, or the client's `Last-Event-ID`) that matches its filters, in
the order of their numbers, each as `id`, `event: task` and a JSON `data` line. Events are
read from `task_events` (app/storage/eventlog.py), so a stream sees the changes of every
process and instance that shares the database.

What wakes a stream: a transaction of this process that committed changes
(events.watchers), and on PostgreSQL another instance's (NOTIFY on
database.EVENTS_CHANNEL, heard by one LISTEN connection per process), on a SQLite file
another process's (a datagram to this process's socket: storage/wakeups); as a safety net
a read every `recheck_s`. A stream holds a thread of its worker but a database connection
only while it reads.

Bounds: at most `capacity` streams per worker (one more: 503 with Retry-After); each
ends after `max_s` (the client reconnects with `Last-Event-ID` and misses nothing still
retained); a comment line every `keepalive_s` while nothing happens, so a dead client is
noticed by a failed write; nothing is buffered for a slow client: the next events are
read only once the last ones were written out, and a write that waits SEND_TIMEOUT_S for
a client that does not read ends the stream.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from app.errors import TooManyStreams
from app.events import Change
from app.services.listening import LazyListener
from app.storage import database, dbfaults, eventlog
from app.storage.database import EVENTS_CHANNEL
from app.storage.eventlog import Cursor, Filters

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Events per read: a client far behind catches up in pages of this size.
PAGE = 500
# How soon a stream held back by a hole in the numbers reads again (PostgreSQL).
HOLE_RECHECK_S = 0.05
# What a client waits before reconnecting after the stream ends, in milliseconds.
RETRY_MS = 1000
# A comment line this often while nothing happens: a client that went away is found by
# the write failing, and its place given back.
KEEPALIVE_S = 5.0
# A write to a client that does not read fails after this long (the HTTP layer's socket
# would wait for ever), ending the stream and giving its place back.
SEND_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


class Streams:
    """The event streams of one process."""

    def __init__(
        self,
        engine: Engine,
        capacity: int,
        recheck_s: float,
        max_s: float,
        keepalive_s: float = KEEPALIVE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.capacity = capacity
        self.recheck_s = recheck_s
        self.max_s = max_s
        self.keepalive_s = keepalive_s
        self.clock = clock
        self._lock = threading.Lock()
        self._open: list[threading.Event] = []
        self._closed = False
        self._listening = LazyListener(engine, self.notified, EVENTS_CHANNEL)

    @property
    def open(self) -> int:
        """How many streams are open now."""
        return len(self._open)

    def start(self, filters: Filters, last_event_id: int | None) -> Iterator[str]:
        """Take a place and return the stream's text, chunk by chunk; raise TooManyStreams
        when every place is taken. The place is given back when the stream ends (or the
        client goes away and the server closes the iterator). Once the worker stops, a
        stream ends at once, after its `retry:` line."""
        if self._closed:  # a stopping worker: the client reconnects, to another one
            return iter([f"retry: {RETRY_MS}\n\n"])
        woken = self._take()
        if woken is None and self.capacity == 0:
            raise TooManyStreams(
                "This server serves no event streams (MAX_EVENT_STREAMS is 0, or its "
                "GUNICORN_THREADS leave none); poll instead.",
                {"max_event_streams": 0},
            )
        if woken is None:
            raise TooManyStreams(
                f"This server already holds {self.capacity} event streams, its "
                "MAX_EVENT_STREAMS (each holds a thread; a stream whose client went away "
                f"frees its place within {KEEPALIVE_S:g} s); try again shortly.",
                {"max_event_streams": self.capacity},
            )
        try:
            with database.read(self.engine) as conn:
                if last_event_id is None:
                    cursor = eventlog.opening(conn)
                else:
                    # Past the newest event: numbers this database never gave (another
                    # database's, or everything was pruned), so from the newest.
                    newest = eventlog.latest(conn)
                    cursor = Cursor(min(last_event_id, newest) if newest else 0)
        except BaseException:
            self._give_back(woken)
            raise
        return self._stream(woken, cursor, filters)

    def _stream(self, woken: threading.Event, cursor: Cursor, filters: Filters) -> Iterator[str]:
        try:
            yield f"retry: {RETRY_MS}\n\n"
            end = self.clock() + self.max_s
            quiet_since = self.clock()
            while not self._closed:
                woken.clear()  # before the read: a change committed after it wakes us
                try:
                    with database.read(self.engine) as conn:
                        rows, held = eventlog.read(conn, cursor, filters, PAGE)
                except Exception as exc:  # the client reconnects with Last-Event-ID
                    fault = dbfaults.classify(exc)
                    if fault is None:
                        raise
                    log.warning("event stream ended: %s", fault.problem)
                    return
                if rows:
                    yield "".join(_event(row) for row in rows)
                    quiet_since = self.clock()
                now = self.clock()
                if now >= end:
                    return
                if cursor.more:
                    continue
                if now - quiet_since >= self.keepalive_s:
                    yield ": keepalive\n\n"
                    quiet_since = now
                pause = HOLE_RECHECK_S if held else self._listening.recheck_s(self.recheck_s)
                woken.wait(min(pause, end - now, self.keepalive_s))
        finally:
            self._give_back(woken)

    def changed(self, changes: Sequence[Change]) -> None:
        """Wake every stream: this process committed changes."""
        if not self._open:
            return
        with self._lock:
            woken = list(self._open)
        for event in woken:
            event.set()

    def notified(self, _payload: str) -> None:
        """Wake every stream: another instance wrote events (or the listener reconnected
        and may have missed some)."""
        self.changed(())

    def close(self) -> None:
        """End every stream now (the worker is stopping) and stop listening."""
        self._closed = True
        self.changed(())
        self._listening.stop()

    def _take(self) -> threading.Event | None:
        with self._lock:
            if len(self._open) >= self.capacity or self._closed:
                return None
            woken = threading.Event()
            self._open.append(woken)
            self._listening.want()
            return woken

    def _give_back(self, woken: threading.Event) -> None:
        with self._lock:
            if woken in self._open:
                self._open.remove(woken)


def _event(row: dict[str, Any]) -> str:
    data = {
        "seq": row["seq"],
        "at": row["at"].isoformat(timespec="milliseconds") + "Z",  # as every time shown
        "task_id": row["task_id"],
        "batch_id": row["batch_id"],
        "type": row["type"],
        "attempt": row["attempt"],
        "status": row["status"],
        "reason": row["reason"],
    }
    return f"id: {row['seq']}\nevent: task\ndata: {json.dumps(data)}\n\n"

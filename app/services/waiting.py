"""Requests waiting for a task to end (`GET /api/tasks/<id>?wait=S`), and what wakes them.

A waiting request holds a thread of its worker but no database connection: it reads the
task, sleeps on an event of its own, and reads it again when woken. What wakes it:
- a transaction of this process that changed the task (events.watchers), at once;
- on PostgreSQL, another instance's transaction that ended it (NOTIFY on
  database.ENDED_CHANNEL, heard by one LISTEN connection per process, opened on the
  first wait); on a SQLite file, another process's (its ids sent to this process's
  socket, bound on the first wait: storage/wakeups);
- as a safety net, a read every `recheck_s` (a notification lost while the listener
  reconnected, or a process whose wake-ups cannot reach this one).

A worker holds at most `capacity` waiting requests; one more is answered 503 with
Retry-After at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.errors import TooManyWaiting
from app.events import Change
from app.services.listening import LazyListener
from app.services.reads import check_task_id, get_task
from app.statuses import TERMINAL
from app.storage.database import ENDED_CHANNEL

if TYPE_CHECKING:
    from sqlalchemy import Engine

# The longest wait a request may ask for, in seconds.
MAX_WAIT_S = 60.0


class Waiters:
    """The requests of one process waiting for tasks to end."""

    def __init__(
        self,
        engine: Engine,
        capacity: int,
        recheck_s: float,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.capacity = capacity
        self.recheck_s = recheck_s
        self.clock = clock
        self._lock = threading.Lock()
        self._by_task: dict[str, list[threading.Event]] = {}
        self._waiting = 0
        self._closed = False
        self._listening = LazyListener(engine, self.notified, ENDED_CHANNEL)
        # Told how many requests wait, at each change (the metrics' gauge).
        self._report = report

    @property
    def waiting(self) -> int:
        """How many requests are waiting now."""
        return self._waiting

    def wait(self, task_id: str, seconds: float) -> dict[str, Any]:
        """Return the task once it is terminal, or as it is after `seconds`."""
        check_task_id(task_id)
        deadline = self.clock() + seconds
        if seconds <= 0 or self._closed:
            return get_task(self.engine, task_id)
        # Registered before the first read, so that no change after it goes unheard.
        woken = self._take(task_id)
        try:
            while True:
                if woken is not None:
                    woken.clear()  # before the read: a change committed after it wakes us
                task = get_task(self.engine, task_id)
                left = deadline - self.clock()
                if task["status"] in TERMINAL or left <= 0 or self._closed:
                    return task
                if woken is None:  # full: a task that has ended is still answered
                    raise TooManyWaiting(
                        f"This server already holds {self.capacity} waiting requests "
                        "(MAX_WAITING_REQUESTS); try again shortly, or read without wait.",
                        {"max_waiting_requests": self.capacity},
                    )
                woken.wait(min(left, self._listening.recheck_s(self.recheck_s)))
        finally:
            if woken is not None:
                self._give_back(task_id, woken)

    def changed(self, changes: Sequence[Change]) -> None:
        """Wake the requests waiting for tasks these committed changes touched."""
        if not self._waiting:
            return
        with self._lock:
            for change in changes:
                for woken in self._by_task.get(change[0], ()):
                    woken.set()

    def notified(self, payload: str) -> None:
        """Wake the requests waiting for the tasks another instance ended (all of them
        for an empty payload: the listener reconnected and may have missed some)."""
        if not self._waiting:
            return
        with self._lock:
            if payload:
                woken = [e for i in payload.split(",") for e in self._by_task.get(i, ())]
            else:
                woken = [e for events in self._by_task.values() for e in events]
        for event in woken:
            event.set()

    def close(self) -> None:
        """Answer every waiting request now (the worker is stopping) and stop listening."""
        self._closed = True
        self.notified("")
        self._listening.stop()

    def _take(self, task_id: str) -> threading.Event | None:
        """Take one of the worker's waiting places for `task_id`: return its wake-up
        event, or None when every place is taken."""
        with self._lock:
            if self._waiting >= self.capacity:
                return None
            woken = threading.Event()
            self._waiting += 1
            self._by_task.setdefault(task_id, []).append(woken)
            if self._report is not None:
                self._report(self._waiting)
            if not self._closed:
                self._listening.want()
            return woken

    def _give_back(self, task_id: str, woken: threading.Event) -> None:
        with self._lock:
            self._waiting -= 1
            if self._report is not None:
                self._report(self._waiting)
            others = self._by_task[task_id]
            others.remove(woken)
            if not others:
                del self._by_task[task_id]

"""One log line per task state change, formatted and written off the hot path.

A scheduler pass that settles and claims hundreds of tasks would spend more time in the
logging module than in its commit: a record, a handler lock, a clock format and a flush
per line. So the hot path only appends its batch of changes to a queue, and a writer
thread turns each batch into lines (text, or JSON with LOG_FORMAT=json) and writes them
to stderr in one call, a few times a second. The lines have the same shape as the other
log lines; the `app.events` logger's level still decides whether they are queued at all.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from json.encoder import encode_basestring
from typing import TextIO

from sqlalchemy import Engine

LOGGER = "app.events"
FLUSH_S = 0.2
# Changes waiting to be written, at most: past this (a stream that blocks), new ones are
# counted and dropped rather than held in memory.
MAX_PENDING = 200_000
MAX_REASON = 300

# (task id, type, attempt, status, reason)
Change = tuple[str, str, int, str, str]
# The changes of the write transaction this thread is in, until it commits.
_staged: ContextVar[list[Change] | None] = ContextVar("task_events", default=None)


class Events:
    """A queue of state changes and the thread that writes them out."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self.stream = stream
        self._pending: deque[tuple[float, Sequence[Change]]] = deque()
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._logger = logging.getLogger(LOGGER)
        # Called with each committed transaction's changes (the requests waiting for
        # tasks to finish), whatever the log level.
        self.watchers: list[Callable[[Sequence[Change]], None]] = []

    def add(self, changes: Sequence[Change]) -> None:
        """Queue one line for each change; cheap enough to call inside a transaction."""
        if not changes or not self._logger.isEnabledFor(logging.INFO):
            return
        if self._count >= MAX_PENDING:
            self._dropped += len(changes)
            return
        self._count += len(changes)
        self._pending.append((time.time(), changes))
        if self._thread is None:
            self._start()

    def flush(self) -> int:
        """Write every queued change now; return how many lines were written."""
        with self._lock:
            batches = []
            while self._pending:
                batches.append(self._pending.popleft())
            dropped, self._dropped = self._dropped, 0
            self._count = 0
            lines = [line for at, changes in batches for line in self._lines(at, changes)]
            if dropped:
                note = f"{dropped} state change(s) not logged: the log stream fell behind"
                lines.append(self._line(time.time(), "WARNING", note))
            if lines:
                stream = self.stream or sys.stderr
                try:
                    stream.write("".join(lines))
                    stream.flush()
                except (OSError, ValueError):
                    return 0  # a closed or broken stream: logging must never stop the work
            return len(lines)

    def close(self) -> None:
        """Stop the writer thread after writing what is queued."""
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._wake.wait(FLUSH_S):
            self.flush()

    def _lines(self, at: float, changes: Sequence[Change]) -> list[str]:
        when = stamp(at)
        lines = []
        for task_id, task_type, attempt, status, why in changes:
            reason = _reason(why)
            message = f"task {task_id} {status} (type {task_type}, attempt {attempt}): {reason}"
            if not self.json:
                lines.append(f"{when} INFO {LOGGER} {message}\n")
                continue
            lines.append(
                f'{{"time": "{when}", "level": "INFO", "logger": "{LOGGER}", '
                f'"message": {encode_basestring(message)}, '
                f'"task_id": {encode_basestring(task_id)}, '
                f'"type": {encode_basestring(task_type)}, "attempt": {int(attempt)}, '
                f'"status": "{status}", "reason": {encode_basestring(reason)}}}\n'
            )
        return lines

    def _line(self, at: float, level: str, message: str) -> str:
        when = stamp(at)
        if self.json:
            return (
                f'{{"time": "{when}", "level": "{level}", "logger": "{LOGGER}", '
                f'"message": {encode_basestring(message)}}}\n'
            )
        return f"{when} {level} {LOGGER} {message}\n"


_by_engine: weakref.WeakKeyDictionary[Engine, Events] = weakref.WeakKeyDictionary()
_every: weakref.WeakSet[Events] = weakref.WeakSet()
_guard = threading.Lock()


def attach(engine: Engine, events: Events) -> Events:
    """Write the state changes of transactions on `engine` through `events`."""
    with _guard:
        _by_engine[engine] = events
        _every.add(events)
    return events


def of(engine: Engine) -> Events:
    """Return the log of `engine`'s state changes (text on stderr unless attached)."""
    found = _by_engine.get(engine)
    return found if found is not None else attach(engine, Events())


@contextmanager
def staging(engine: Engine) -> Iterator[list[Change]]:
    """Around a write transaction: log what it staged once it committed, drop it if not.

    Yields the list of changes staged so far (the transaction announces the ends among
    them before it commits)."""
    changes: list[Change] = []
    token = _staged.set(changes)
    try:
        yield changes
    finally:
        _staged.reset(token)
    if changes:
        log = of(engine)
        log.add(changes)
        for watcher in log.watchers:
            watcher(changes)


@contextmanager
def held() -> Iterator[None]:
    """Inside a write transaction, around a savepoint: what the block stages joins the
    transaction's changes only if the block succeeds (a rolled-back savepoint's do not)."""
    outer = _staged.get()
    if outer is None:
        raise RuntimeError("task state changes are staged inside database.write() only")
    mine: list[Change] = []
    token = _staged.set(mine)
    try:
        yield
    finally:
        _staged.reset(token)
    outer.extend(mine)


def stage(changes: Iterable[Change]) -> None:
    """Hold changes of the current write transaction until it commits."""
    staged = _staged.get()
    if staged is None:
        raise RuntimeError("task state changes are staged inside database.write() only")
    staged.extend(changes)


@atexit.register
def _flush_every() -> None:
    for events in list(_every):
        events.flush()


def _reason(reason: str) -> str:
    if len(reason) <= MAX_REASON and "\n" not in reason and "\r" not in reason:
        return reason  # the common case, already one short line
    text = " ".join(reason.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def stamp(at: float) -> str:
    """UTC, to the millisecond, as the JSON log lines write time."""
    seconds = int(at)
    millis = int((at - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}+00:00"

"""The LISTEN connection a process's waiting requests or event streams share, opened on
first use (on a SQLite file, a socket other processes send to), and how often they read
again as a safety net while it hears other instances."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from app.storage import wakeups
from app.storage.database import ENDED_CHANNEL, EVENTS_CHANNEL
from app.storage.notify import Listener

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Between two safety-net reads while notifications reach this process (PostgreSQL).
LISTENING_RECHECK_S = 5.0
# The socket channel of each notification channel, on a SQLite file.
_ON_SQLITE = {ENDED_CHANNEL: wakeups.ENDED, EVENTS_CHANNEL: wakeups.EVENTS}


class LazyListener:
    """A Listener on `channel`, started the first time it is wanted; on a SQLite file, a
    doorbell for what other processes send on it."""

    def __init__(self, engine: Engine, on_notify: Callable[[str], None], channel: str) -> None:
        self._engine = engine
        self._on_notify = on_notify
        self._channel = channel
        self.listener: Listener | wakeups.Doorbell | None = None

    def want(self) -> None:
        """Start listening unless it has started already (or nothing can be heard)."""
        if self.listener is not None:
            return
        if self._engine.dialect.name == "postgresql":
            self.listener = Listener(self._engine, self._on_notify, self._channel)
        elif (bell := wakeups.bell(self._engine)) is not None and self._channel in _ON_SQLITE:
            self.listener = bell.listen(_ON_SQLITE[self._channel], self._on_notify)
        else:
            return
        self.listener.start()

    def stop(self) -> None:
        """Stop listening, if it ever started."""
        if self.listener is not None:
            self.listener.stop()

    def recheck_s(self, recheck_s: float) -> float:
        """Return the pause between safety-net reads: `recheck_s`, stretched to
        LISTENING_RECHECK_S while PostgreSQL's notifications reach this process (not for
        SQLite's, which a process with another temporary directory would not send)."""
        listener = self.listener
        listening = isinstance(listener, Listener) and listener.listening.is_set()
        return max(recheck_s, LISTENING_RECHECK_S) if listening else recheck_s

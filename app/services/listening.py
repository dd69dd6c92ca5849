"""The LISTEN connection a process's waiting requests or event streams share, opened on
first use, and how often they read again as a safety net while it hears other instances."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from app.storage.notify import Listener

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Between two safety-net reads while notifications reach this process (PostgreSQL).
LISTENING_RECHECK_S = 5.0


class LazyListener:
    """A Listener on `channel`, started the first time it is wanted, on PostgreSQL only."""

    def __init__(self, engine: Engine, on_notify: Callable[[str], None], channel: str) -> None:
        self._engine = engine
        self._on_notify = on_notify
        self._channel = channel
        self.listener: Listener | None = None

    def want(self) -> None:
        """Start listening unless it has started already (or the database is SQLite)."""
        if self.listener is None and self._engine.dialect.name == "postgresql":
            self.listener = Listener(self._engine, self._on_notify, self._channel)
            self.listener.start()

    def stop(self) -> None:
        """Stop listening, if it ever started."""
        if self.listener is not None:
            self.listener.stop()

    def recheck_s(self, recheck_s: float) -> float:
        """Return the pause between safety-net reads: `recheck_s`, stretched to
        LISTENING_RECHECK_S while notifications reach this process."""
        listening = self.listener is not None and self.listener.listening.is_set()
        return max(recheck_s, LISTENING_RECHECK_S) if listening else recheck_s

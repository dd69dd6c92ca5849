"""Wake-ups across instances on PostgreSQL: NOTIFY when work becomes ready or tasks end,
LISTEN for it.

On SQLite the other processes sharing the database file are woken through their sockets
(`wakeups`): their schedulers, their requests waiting for tasks to end, their event
streams. Within one process all of them are woken directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, Engine, text

from app import faults
from app.storage import wakeups
from app.storage.database import DEPLOYMENT_SQL, channel_sql, postgresql_connect_args

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.notify")

CHANNEL = "task_scheduler_ready"


def announce(conn: Connection) -> None:
    """Tell every listening scheduler that work is ready, when this transaction commits."""
    faults.point("notify.announce")
    if conn.dialect.name == "postgresql":
        sql = f"SELECT pg_notify({channel_sql(':channel')}, '')"
        conn.execute(text(sql), {"channel": CHANNEL})
    else:
        wakeups.ask()


class Listener:
    """A thread holding one PostgreSQL connection that LISTENs on this deployment's
    `channel` (database.channel_sql) and calls `on_notify` with each payload, and with ""
    once (re)connected: what was sent while it was away is lost, so anything may have
    happened."""

    def __init__(
        self, engine: Engine, on_notify: Callable[[str], None], channel: str = CHANNEL
    ) -> None:
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_args = postgresql_connect_args(self._conninfo)
        self._on_notify = on_notify
        self._channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set while the LISTEN connection is up, once it has caught up with what it missed.
        self.listening = threading.Event()

    def start(self) -> None:
        """Start listening in the background."""
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (within a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._connect_args) as conn:
                    found = conn.execute(f"SELECT {DEPLOYMENT_SQL}").fetchone()
                    assert found is not None
                    conn.execute(f"LISTEN {self._channel}_{int(found[0])}")
                    delay = 0.5
                    # Connected: what was announced while we were away may be waiting.
                    self._on_notify("")
                    self.listening.set()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=1.0, stop_after=1):
                            self._on_notify(notice.payload)
            except psycopg.Error:
                self.listening.clear()
                log.warning("LISTEN connection lost; reconnecting in %.1f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

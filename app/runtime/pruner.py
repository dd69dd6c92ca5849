"""The pruners: finished tasks older than RETENTION_DAYS, events older than
EVENT_RETENTION_S."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from app.storage import database, eventlog
from app.storage.retention import prune
from app.storage.store import Store

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.maintenance")

# How often finished tasks older than RETENTION_DAYS are pruned.
RETENTION_EVERY_S = 3600.0


class Pruner:
    """Deletes finished tasks older than the retention period, a short chunk at a time."""

    every_s = RETENTION_EVERY_S

    def __init__(self, store: Store, retention_days: int) -> None:
        self.store = store
        self.retention_days = retention_days
        self.stop_event = threading.Event()

    def run_once(self, now: datetime | None = None) -> int:
        """Prune once; return how many tasks went."""
        if self.retention_days <= 0:
            return 0
        older_than = timedelta(days=self.retention_days)
        at = now or self.store.database_now()
        removed = prune(self.store.engine, older_than, now=at, stop=self.stop_event)
        if removed:
            log.info("pruned %d finished task(s) older than %d days", removed, self.retention_days)
        return removed


# How often events older than EVENT_RETENTION_S are pruned, and how many go per transaction.
EVENTS_EVERY_S = 60.0
EVENTS_CHUNK = 5000


class EventPruner:
    """Deletes the events older than `retention_s`, a chunk per short transaction."""

    every_s = EVENTS_EVERY_S

    def __init__(self, store: Store, retention_s: float) -> None:
        self.store = store
        self.retention_s = retention_s
        self.stop_event = threading.Event()

    def run_once(self, now: datetime | None = None) -> int:
        """Prune once; return how many events went."""
        before = (now or self.store.database_now()) - timedelta(seconds=self.retention_s)
        removed = 0
        while not self.stop_event.is_set():
            with database.write(self.store.engine) as conn:
                gone = eventlog.prune(conn, before, EVENTS_CHUNK)
            removed += gone
            if gone < EVENTS_CHUNK:
                break
        return removed

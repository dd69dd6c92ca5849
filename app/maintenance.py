"""Upkeep of a scheduler instance: membership, heartbeats, recovery of the dead, pruning."""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from . import process
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)

# How often finished tasks older than RETENTION_DAYS are pruned.
RETENTION_EVERY_S = 3600.0


class Upkeep:
    """Keeps an instance registered and alive, and cleans up after dead ones."""

    store: Store
    metrics: Metrics
    id: str | None
    host: str
    lease_s: float
    poll_interval_s: float
    retention_days: int
    _next_maintenance: float
    _next_heartbeat: float
    _next_prune: float

    def _join(self) -> None:
        """Register under a new identity: at start, or after being declared dead."""
        self.id = f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        now = self.store.database_now()
        self.store.register(
            {
                "id": self.id,
                "hostname": self.host,
                "pid": os.getpid(),
                "process_start": process.start_time(os.getpid()),
                "started_at": now,
                "heartbeat_at": now,
                "state": "running",
            }
        )
        self._next_heartbeat = time.monotonic() + self.lease_s / 3

    def _rejoin(self) -> None:
        # The attempts still running under the old identity were ended by whoever
        # declared us dead; their late writes will be refused.
        log.error("scheduler %s was declared dead; rejoining under a new identity", self.id)
        self._join()
        log.info("scheduler rejoined as %s", self.id)

    def maintain(self) -> None:
        """Heartbeat when due, and end the attempts of instances that are dead."""
        assert self.id is not None
        now = time.monotonic()
        self._next_maintenance = now + max(0.2, min(self.poll_interval_s, self.lease_s / 3))
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.lease_s / 3
            if not self.store.heartbeat(self.id):
                self._rejoin()
            else:
                self.metrics.heartbeat()
        stale = self.store.database_now() - timedelta(seconds=self.lease_s)
        for other in self.store.instances():
            death = self._death(other, stale)
            if death is not None:
                reason, stale_before = death
                reaped = self.store.reap(other.id, reason, stale_before=stale_before)
                self.metrics.recovered(len(reaped))
                log.warning("recovered %d task(s) of %s: %s", len(reaped), other.id, reason)
        for worker in self.store.orphan_workers():
            reaped = self.store.reap(worker, f"scheduler {worker} is no longer registered")
            self.metrics.recovered(len(reaped))
            log.warning("recovered %d task(s) of unregistered %s", len(reaped), worker)

    def _death(self, other: Any, stale: datetime) -> tuple[str, datetime | None] | None:
        """Say why `other` is dead, and the heartbeat it must still be behind, if it is."""
        if other.id == self.id:
            return None
        if other.hostname == self.host and not process.is_alive(other.pid, other.process_start):
            return f"scheduler {other.id} (pid {other.pid}) exited while running it", None
        if other.heartbeat_at < stale:
            reason = f"scheduler {other.id} stopped heartbeating for over {self.lease_s:g} s"
            return reason, stale
        return None

    # -- one attempt --------------------------------------------------------------

    def _prune(self) -> None:
        """Delete finished tasks older than the retention period, once an hour."""
        self._next_prune = time.monotonic() + RETENTION_EVERY_S
        if self.retention_days <= 0:
            return
        from .retention import prune

        removed = prune(self.store.engine, timedelta(days=self.retention_days))
        if removed:
            log.info("pruned %d finished task(s) older than %d days", removed, self.retention_days)

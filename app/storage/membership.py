"""Scheduler instances: who is registered, their heartbeats, in the database's time."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from app import faults
from app.storage import database
from app.storage.database import utcnow
from app.storage.tables import RUNNING, instances, tasks


class Membership:
    """The scheduler_instances table: register, heartbeat, state, list, deregister.

    `clock` is the time of this host, used on SQLite (which lives on it); on PostgreSQL
    every instance reads the database's clock instead, the one they all share.
    `monotonic` is this host's monotonic clock, which every process of one boot shares and
    no step of the wall clock moves: instances on one host judge each other's heartbeats
    by it.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.monotonic = monotonic
        self.shared_clock = engine.dialect.name == "postgresql"
        # The host of each instance this process registered, for the attempts it records.
        self.hosts: dict[str, str] = {}

    def now(self, conn: Connection) -> datetime:
        """Return the time for `conn`'s transaction (the database's clock, on PostgreSQL)."""
        return database.now(conn) if self.shared_clock else self.clock()

    def register(self, row: dict[str, Any]) -> None:
        """Record a new scheduler instance."""
        with database.write(self.engine) as conn:
            conn.execute(insert(instances).values(**row))
        self.hosts[row["id"]] = host_name(row["hostname"])

    def database_now(self) -> datetime:
        """Return the current UTC time of the clock every instance shares."""
        if not self.shared_clock:
            return self.clock()  # SQLite lives on this host: its clock is ours
        with database.read(self.engine) as conn:
            return self.now(conn)

    def heartbeat(self, instance_id: str, now: datetime | None = None) -> bool:
        """Prove `instance_id` alive at `now` (database time); False when declared dead."""
        faults.point("heartbeat.before_write", instance=instance_id)
        with database.write(self.engine) as conn:
            stmt = (
                update(instances)
                .where(instances.c.id == instance_id)
                .values(heartbeat_at=now or self.now(conn), heartbeat_monotonic=self.monotonic())
            )
            return conn.execute(stmt).rowcount == 1

    def set_state(self, instance_id: str, state: str) -> None:
        """Record what an instance is doing (running, draining)."""
        stmt = update(instances).where(instances.c.id == instance_id).values(state=state)
        with database.write(self.engine) as conn:
            conn.execute(stmt)

    def deregister(self, instance_id: str) -> None:
        """Remove an instance that stopped cleanly."""
        with database.write(self.engine) as conn:
            conn.execute(delete(instances).where(instances.c.id == instance_id))

    def instances(self) -> list[Any]:
        """Return every registered scheduler instance."""
        with database.read(self.engine) as conn:
            return list(conn.execute(select(instances)).all())

    def orphan_workers(self) -> list[str]:
        """Return workers holding RUNNING tasks that no registered instance owns."""
        known = select(instances.c.id)
        stmt = select(tasks.c.worker).where(RUNNING, tasks.c.worker.not_in(known)).distinct()
        with database.read(self.engine) as conn:
            return [w for (w,) in conn.execute(stmt) if w is not None]


def serving_types(conn: Connection) -> list[tuple[str | None, str | None]]:
    """Return the task types and the queues (each a JSON list, or None for all) of each
    running instance."""
    rows = conn.execute(select(instances.c.state, instances.c.task_types, instances.c.queues))
    return [(types, queues) for state, types, queues in rows if state == "running"]


def host_name(host_key: str) -> str:
    """Return the host's name from an instance's host key (name:boot id:namespace)."""
    return host_key.split(":", 1)[0]

"""Scheduler instances: who is registered, their heartbeats, in the database's time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from . import database
from .database import stamp, utcnow
from .tables import RUNNING, instances, tasks


class Membership:
    """The scheduler_instances table: register, heartbeat, state, list, deregister."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, row: dict[str, Any]) -> None:
        """Record a new scheduler instance."""
        with database.write(self.engine) as conn:
            conn.execute(insert(instances).values(**row))

    def database_now(self) -> datetime:
        """Return the database's current UTC time: the one clock every instance shares."""
        if self.engine.dialect.name != "postgresql":
            return utcnow()  # SQLite lives on this host: its clock is ours
        with database.read(self.engine) as conn:
            moment: datetime = conn.execute(select(func.timezone("UTC", func.now()))).scalar_one()
            return moment

    def heartbeat(self, instance_id: str) -> bool:
        """Prove `instance_id` alive, in database time; False when it was declared dead."""
        with database.write(self.engine) as conn:
            stmt = (
                update(instances)
                .where(instances.c.id == instance_id)
                .values(heartbeat_at=stamp(conn, utcnow()))
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

"""The scheduler instances registered in the database, as `GET /api/instances` shows them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.storage import database
from app.storage.membership import host_name
from app.storage.reads import instances_with_load

if TYPE_CHECKING:
    from sqlalchemy import Engine


def listing(engine: Engine, lease_s: float) -> list[dict[str, Any]]:
    """Return every registered instance, oldest first, with the attempts it holds now.

    One whose last heartbeat is older than its lease (by the database's clock; `lease_s`
    for one registered before leases were stored) shows as `stale`: it is dead, or cut
    off, and the next scheduler to look will recover its attempts; until then it is
    still registered.
    """
    with database.read(engine) as conn:
        rows = instances_with_load(conn)
        now = database.now(conn)
    return [
        {
            "id": row["id"],
            "host": host_name(row["hostname"]),
            "pid": row["pid"],
            "started_at": row["started_at"],
            "heartbeat_at": row["heartbeat_at"],
            "state": "stale" if _silent(row, now, lease_s) else row["state"],
            "running": row["running"],
            "slots": row["slots"],
            "lease_s": row["lease_s"],
            "types": _names(row["task_types"]),
            "queues": _names(row["queues"]),
        }
        for row in rows
    ]


def _silent(row: Any, now: datetime, lease_s: float) -> bool:
    return bool(row["heartbeat_at"] < now - timedelta(seconds=row["lease_s"] or lease_s))


def _names(stored: str | None) -> list[str] | None:
    return None if stored is None else list(json.loads(stored))

"""The scheduler instances registered in the database, as `GET /api/instances` shows them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from app.storage import database
from app.storage.membership import host_name
from app.storage.reads import instances_with_load

if TYPE_CHECKING:
    from sqlalchemy import Engine


def listing(engine: Engine) -> list[dict[str, Any]]:
    """Return every registered instance, oldest first, with the attempts it holds now."""
    with database.read(engine) as conn:
        rows = instances_with_load(conn)
    return [
        {
            "id": row["id"],
            "host": host_name(row["hostname"]),
            "pid": row["pid"],
            "started_at": row["started_at"],
            "heartbeat_at": row["heartbeat_at"],
            "state": row["state"],
            "running": row["running"],
            "slots": row["slots"],
            "types": _names(row["task_types"]),
            "queues": _names(row["queues"]),
        }
        for row in rows
    ]


def _names(stored: str | None) -> list[str] | None:
    return None if stored is None else list(json.loads(stored))

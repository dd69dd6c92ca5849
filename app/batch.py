"""Whole graphs in one transaction: `POST /api/tasks/batch`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

MAX_BATCH_TASKS = 100_000


@dataclass(frozen=True)
class BatchSubmitted:
    """A batch's answer: its id, its tasks in submission order, and whether it is new."""

    batch_id: str
    tasks: list[dict[str, Any]]
    created: bool


def submit_batch(engine: Engine, body: dict[str, Any]) -> BatchSubmitted:
    """Validate and store a whole graph, or return the existing one for a replay."""
    raise NotImplementedError

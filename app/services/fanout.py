"""Tasks a handler adds to the graph (dynamic fan-out), created with its completion.

A handler calls `ctx.add_tasks([...])` (app/handlers.py checks each body, its ids and its
dependencies as it is added); when the attempt completes, `spawn` runs inside the very
transaction that records the completion, so the added tasks exist if and only if the
completion committed. They obey a batch's rules: known types, ids not taken,
MAX_QUEUED_TASKS, MAX_QUEUES. They join the adding task's batch, and every task that
depended on the adding task now waits for them too. A refusal raises the ApiError that a
batch would get; the store then fails the attempt with its code (queue_full, ...), to be
retried by its policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.errors import DuplicateId
from app.services.admission import Admission
from app.services.batch import creation_order, new_rows
from app.services.submissions import OPEN, insert_tasks, normalise
from app.storage import tasks

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from app.storage.store import Claim


def spawn(
    conn: Connection,
    parent: Claim,
    added: Sequence[dict[str, Any]],
    now: datetime,
    admission: Admission = OPEN,
) -> None:
    """Create the tasks the attempt `parent` added, and make its dependents wait for them."""
    wanted = [normalise(task) for task in added]
    admission.check_types(task["type"] for task in wanted)
    ids = [task["id"] for task in wanted]
    taken = tasks.existing(conn, ids)
    if taken:
        shown = sorted(taken)
        raise DuplicateId(
            f"{len(taken)} of the added tasks' ids are taken, e.g. {shown[0]!r}.",
            {"ids": shown[:20]},
        )
    row = tasks.row(conn, parent.id, with_payload=False)
    rows = new_rows(conn, wanted, creation_order(wanted), row.batch_id)
    admission.make_room(conn, rows)
    dependents = tasks.dependents_of(conn, parent.id)  # before the added tasks join them
    insert_tasks(conn, rows)
    tasks.adopt(conn, dependents, ids)

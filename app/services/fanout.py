"""Tasks a handler adds to the graph (dynamic fan-out), created with its completion.

A handler calls `ctx.add_tasks([...])` (app/handlers.py checks each body, its ids and its
dependencies as it is added); when the attempt completes, `spawn` runs inside the very
transaction that records the completion, so the added tasks exist if and only if the
completion committed. They obey a batch's rules: known types, ids not taken,
MAX_QUEUED_TASKS, MAX_QUEUES, MAX_DEPENDENCIES. They join the adding task's batch, and
every task that depended on the adding task now waits for the last of them (those no
other added task depends on), and so for all of them. A refusal raises the ApiError that a
batch would get; the store then fails the attempt with its code (queue_full, ...), to be
retried by its policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.errors import DuplicateId, ValidationFailed
from app.schemas import MAX_DEPENDENCIES
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
    # First, the adding task's row: a submission naming it as a dependency holds it FOR
    # SHARE until it commits, so the dependents read next are every one there is.
    batch_id = tasks.lock_for_adding(conn, parent.id)
    rows = new_rows(conn, wanted, creation_order(wanted), batch_id)
    admission.make_room(conn, (row["status"] for row in rows))
    dependents = tasks.dependents_of(conn, parent.id)  # before the added tasks join them
    # The dependents wait for the added tasks that no other added task depends on: the
    # graph's last tasks, which wait for the rest (a map's join, or each of its leaves).
    named = {d for task in wanted for d in task["dependencies"]}
    last = [task_id for task_id in ids if task_id not in named]
    most = max((count for _, _, count in dependents), default=0) + len(last)
    if dependents and most > MAX_DEPENDENCIES:
        raise ValidationFailed(
            f"A task depending on {parent.id} would wait for {most} tasks; at most "
            f"{MAX_DEPENDENCIES}. Add one task that depends on the added ones, for the "
            "dependents to wait for.",
            {"dependencies": f"At most {MAX_DEPENDENCIES}."},
        )
    insert_tasks(conn, rows)
    tasks.adopt(conn, [(d, last_position) for d, last_position, _ in dependents], last)

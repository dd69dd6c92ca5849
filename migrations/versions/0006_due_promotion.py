"""Delayed tasks leave the ready indexes until due; composite indexes for the list's pairs.

Until this revision the ready indexes held every QUEUED task without pending
dependencies, delayed ones included, and each claim walked past the tasks whose run_at or
retry backoff had not come yet. From now on they hold only tasks with no not_before: a
scheduler pass first clears not_before of the delayed tasks that fell due (promotion,
along ix_tasks_delayed), then claims from the ready indexes alone. run_at keeps the
submitter's value.

Existing rows: QUEUED tasks whose not_before has passed are promoted here, so the new
ready indexes hold them from the start.

The list of tasks gets an index for each pair it is asked for: status and type, status and
batch (only tasks submitted in a batch have one).

On PostgreSQL the edge table's two id columns are declared mostly distinct (n_distinct
-0.5), so that the planner probes them by index even after one wide fan-out was stored
(it would otherwise read the whole index at each step of a cascade), and analysed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OLD_READY = "status = 'QUEUED' AND pending_deps = 0"
READY = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NULL"
IN_A_BATCH = "batch_id IS NOT NULL"
READY_INDEXES = {
    "ix_tasks_ready": [sa.literal_column("priority DESC"), "seq"],
    "ix_tasks_ready_type": ["type", sa.literal_column("priority DESC"), "seq"],
}


def upgrade():
    promote = sa.text(
        "UPDATE tasks SET not_before = NULL"
        " WHERE status = 'QUEUED' AND not_before IS NOT NULL AND not_before <= :now"
    ).bindparams(sa.bindparam("now", datetime.now(UTC).replace(tzinfo=None), sa.DateTime()))
    op.execute(promote)
    _ready_indexes(READY)
    op.create_index("ix_tasks_status_type_seq", "tasks", ["status", "type", "seq"])
    op.create_index(
        "ix_tasks_status_batch_seq",
        "tasks",
        ["status", "batch_id", "seq"],
        sqlite_where=sa.text(IN_A_BATCH),
        postgresql_where=sa.text(IN_A_BATCH),
    )
    _edge_statistics([*EDGE_STATISTICS, "ANALYZE task_dependencies"])


EDGE_STATISTICS = tuple(
    f"ALTER TABLE task_dependencies ALTER COLUMN {column} SET (n_distinct = -0.5)"
    for column in ("task_id", "dependency_id")
)


def _edge_statistics(statements):
    if op.get_bind().dialect.name == "postgresql":
        for statement in statements:
            op.execute(statement)


def downgrade():
    _edge_statistics(
        f"ALTER TABLE task_dependencies ALTER COLUMN {column} RESET (n_distinct)"
        for column in ("task_id", "dependency_id")
    )
    op.drop_index("ix_tasks_status_batch_seq", "tasks")
    op.drop_index("ix_tasks_status_type_seq", "tasks")
    # The older claim reads not_before itself: a promoted task (NULL) is ready to it.
    _ready_indexes(OLD_READY)


def _ready_indexes(where: str) -> None:
    for name, columns in READY_INDEXES.items():
        op.drop_index(name, "tasks")
        op.create_index(
            name,
            "tasks",
            columns,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )

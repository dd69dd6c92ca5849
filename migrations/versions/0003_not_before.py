"""Keep the submitter's run_at apart from the retry backoff: a not_before column.

Until this revision a failed attempt with retries left wrote the end of its backoff into
run_at, losing the time the submitter set, and a user's retry cleared it. From now on the
claim reads not_before (run_at, or the end of a backoff if later) and run_at is never
changed by the scheduler.

Existing rows: a QUEUED row gets not_before = run_at. A QUEUED row with failures > 0 and a
run_at holds a backoff there (its own run_at had passed when its first attempt started):
that time moves to not_before and run_at becomes null.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_DELAYED = "status = 'QUEUED' AND pending_deps = 0 AND run_at IS NOT NULL"
DELAYED = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NOT NULL"


def upgrade():
    # A plain ADD COLUMN, as in 0002: a batch copy of tasks would drop the table and, with
    # foreign keys on, take every dependency edge with it.
    op.add_column("tasks", sa.Column("not_before", sa.DateTime(), nullable=True))
    op.execute("UPDATE tasks SET not_before = run_at WHERE status = 'QUEUED'")
    op.execute(
        "UPDATE tasks SET run_at = NULL"
        " WHERE status = 'QUEUED' AND failures > 0 AND run_at IS NOT NULL"
    )
    op.drop_index("ix_tasks_delayed", "tasks")
    op.create_index(
        "ix_tasks_delayed",
        "tasks",
        ["not_before"],
        sqlite_where=sa.text(DELAYED),
        postgresql_where=sa.text(DELAYED),
    )


def downgrade():
    op.drop_index("ix_tasks_delayed", "tasks")
    # The older code reads only run_at: give a backing-off task its backoff back there.
    op.execute(
        "UPDATE tasks SET run_at = not_before"
        " WHERE status = 'QUEUED' AND not_before IS NOT NULL"
        " AND (run_at IS NULL OR not_before > run_at)"
    )
    op.create_index(
        "ix_tasks_delayed",
        "tasks",
        ["run_at"],
        sqlite_where=sa.text(OLD_DELAYED),
        postgresql_where=sa.text(OLD_DELAYED),
    )
    op.drop_column("tasks", "not_before")

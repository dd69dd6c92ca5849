"""Instances say which task types they claim and when they last beat on the host's clock.

Two nullable columns on scheduler_instances, filled by the instances themselves:

- task_types: the JSON list of types an instance claims (NULL: every type, which is what
  an instance registered by an earlier version does).
- heartbeat_monotonic: the host's monotonic clock at the last heartbeat; instances on the
  same host judge each other by it, so a step of the wall clock declares no one dead.
  NULL (earlier versions) falls back to heartbeat_at.

And one partial index, ix_tasks_ready_type, for the claim of an instance that runs only
some types: one ordered walk per type, never over the ready tasks of other types.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

READY = "status = 'QUEUED' AND pending_deps = 0"


def upgrade():
    op.add_column("scheduler_instances", sa.Column("heartbeat_monotonic", sa.Float(), nullable=True))
    op.add_column("scheduler_instances", sa.Column("task_types", sa.Text(), nullable=True))
    op.create_index(
        "ix_tasks_ready_type",
        "tasks",
        ["type", sa.literal_column("priority DESC"), "seq"],
        sqlite_where=sa.text(READY),
        postgresql_where=sa.text(READY),
    )


def downgrade():
    op.drop_index("ix_tasks_ready_type", "tasks")
    # SQLite drops a column in place since 3.35; the batch mode would copy the table.
    op.drop_column("scheduler_instances", "task_types")
    op.drop_column("scheduler_instances", "heartbeat_monotonic")

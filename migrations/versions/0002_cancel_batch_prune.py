"""Cancel requests, and indexes for delayed tasks, batch listing and pruning.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DELAYED = "status = 'QUEUED' AND pending_deps = 0 AND run_at IS NOT NULL"


def upgrade():
    # A plain ADD COLUMN: a batch copy of tasks would drop the table and, with foreign
    # keys on, take every dependency edge with it.
    op.add_column(
        "tasks",
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index("ix_tasks_batch_seq", "tasks", ["batch_id", "seq"])
    op.create_index(
        "ix_tasks_delayed",
        "tasks",
        ["run_at"],
        sqlite_where=sa.text(DELAYED),
        postgresql_where=sa.text(DELAYED),
    )
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])


def downgrade():
    op.drop_index("ix_tasks_finished_at", "tasks")
    op.drop_index("ix_tasks_delayed", "tasks")
    op.drop_index("ix_tasks_batch_seq", "tasks")
    op.drop_column("tasks", "cancel_requested")

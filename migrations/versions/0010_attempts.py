"""Attempt history, and the slots of each scheduler instance.

- task_attempts: one row per attempt that ended, removed with its task. Tasks stored
  before this revision get a row for what their own row tells of their last attempt: a
  finished task's (COMPLETED, FAILED or CANCELLED), and a failed attempt waiting for its
  retry (QUEUED with failures). Earlier attempts left no trace to recover; the host and
  traceback of the last are unknown.
- scheduler_instances.slots: how many attempts an instance runs at once at most (NULL for
  an instance registered before this revision).

Stop the schedulers before upgrading.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO task_attempts
    (task_id, attempt, instance, started_at, finished_at, outcome, error, error_code)
SELECT id, attempts, worker, started_at, COALESCE(finished_at, updated_at),
       CASE WHEN status = 'QUEUED' THEN 'FAILED' ELSE status END, error, error_code
FROM tasks
WHERE attempts > 0
  AND (status IN ('COMPLETED', 'FAILED', 'CANCELLED') OR (status = 'QUEUED' AND failures > 0))
"""


def upgrade():
    op.create_table(
        "task_attempts",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("instance", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name="fk_task_attempts_task_id_tasks",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt", name="pk_task_attempts"),
    )
    op.execute(BACKFILL)
    op.add_column("scheduler_instances", sa.Column("slots", sa.Integer, nullable=True))


def downgrade():
    op.drop_column("scheduler_instances", "slots")
    op.drop_table("task_attempts")

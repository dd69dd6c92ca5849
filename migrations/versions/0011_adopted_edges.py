"""Edges a task adopted: task_dependencies.adopted.

When a task's completion adds tasks (dynamic fan-out), every task that depended on it
gains edges to the added ones. Those edges are the graph's doing, not the submitter's, so
a replay of the dependent's submission must not be compared with them: `adopted` marks
them. For the edges stored before this revision it is derived: a submission can only name
a task that already exists, so an edge whose dependency was created after its task was
adopted.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BACKFILL = """
UPDATE task_dependencies SET adopted = TRUE
WHERE EXISTS (
    SELECT 1 FROM tasks t, tasks d
    WHERE t.id = task_dependencies.task_id
      AND d.id = task_dependencies.dependency_id
      AND d.created_at > t.created_at
)
"""


def upgrade():
    # A plain ADD COLUMN: a batch copy would rewrite every edge.
    op.add_column(
        "task_dependencies",
        sa.Column("adopted", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute(BACKFILL)


def downgrade():
    op.drop_column("task_dependencies", "adopted")

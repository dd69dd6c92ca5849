"""Task events: each state change, written in its transaction, for GET /api/events.

An empty table: changes made before this revision are not recorded. Instances of the
previous version write no events, so stop every scheduler and API process, upgrade, then
start the new version; a stream would otherwise miss their changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "task_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_task_events"),
        sqlite_autoincrement=True,
    )


def downgrade():
    op.drop_table("task_events")

"""Schedules: recurring submissions, each firing at most once per instant.

A new table; nothing stored before changes. Downgrading drops it, and with it every
schedule (the tasks their firings created stay).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DUE = "next_fire_at IS NOT NULL"


def upgrade():
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(111), primary_key=True),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("interval_s", sa.Integer, nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("overlap", sa.String(8), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("anchor_at", sa.DateTime, nullable=False),
        sa.Column("next_fire_at", sa.DateTime, nullable=True),
        sa.Column("last_fire_at", sa.DateTime, nullable=True),
        sa.Column("last_batch_id", sa.String(128), nullable=True),
        sa.Column("last_outcome", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("fired", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
    )
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["next_fire_at"],
        sqlite_where=sa.text(DUE),
        postgresql_where=sa.text(DUE),
    )


def downgrade():
    op.drop_index("ix_schedules_due", "schedules")
    op.drop_table("schedules")

"""Tasks, their dependency edges, and scheduler instances.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
READY = "status = 'QUEUED' AND pending_deps = 0"
RUNNING = "status = 'RUNNING'"


def upgrade():
    op.create_table(
        "scheduler_instances",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", sa.String(32), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_instances")),
    )
    op.create_table(
        "tasks",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("trigger_rule", sa.String(16), nullable=False),
        sa.Column("max_attempts", sa.SmallInteger(), nullable=False),
        sa.Column("retry_backoff_ms", sa.Integer(), nullable=False),
        sa.Column("timeout_ms", sa.Integer(), nullable=True),
        sa.Column("run_at", sa.DateTime(), nullable=True),
        sa.Column("pending_deps", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("progress", sa.SmallInteger(), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_tasks")),
        sa.UniqueConstraint("id", name=op.f("uq_tasks_id")),
    )
    op.create_index(
        "ix_tasks_ready",
        "tasks",
        [sa.literal_column("priority DESC"), "seq"],
        sqlite_where=sa.text(READY),
        postgresql_where=sa.text(READY),
    )
    op.create_index(
        "ix_tasks_running",
        "tasks",
        ["worker"],
        sqlite_where=sa.text(RUNNING),
        postgresql_where=sa.text(RUNNING),
    )
    op.create_index("ix_tasks_status_seq", "tasks", ["status", "seq"])
    op.create_index("ix_tasks_type_seq", "tasks", ["type", "seq"])
    op.create_table(
        "task_dependencies",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("dependency_id", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dependency_id"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_dependency_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_dependencies_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "dependency_id", name=op.f("pk_task_dependencies")),
    )
    op.create_index(
        "ix_task_dependencies_dependency", "task_dependencies", ["dependency_id", "task_id"]
    )


def downgrade():
    op.drop_table("task_dependencies")
    op.drop_table("tasks")
    op.drop_table("scheduler_instances")

"""Queues: every task names one, each queue may be paused, limited and rate limited.

- tasks.queue: existing tasks go to `default`, whose row this revision creates.
- queues: one row per queue, with its pause, concurrency limit and rate limit.
- scheduler_instances.queues: the queues an instance serves (NULL: all of them).
- task_counts and task_count_deltas gain the queue: the counts are kept per queue and
  status. task_counts is filled again from a count of the stored tasks, in the same
  transaction that replaces the triggers (on PostgreSQL the trigger DDL locks out writers
  of tasks until the commit, so no change falls between the count and the triggers).
- The ready indexes are led by the queue (ix_tasks_ready, and ix_tasks_ready_type by queue
  and type): a claim walks each open queue's part, never a paused or full one's.

The trigger statements are copied here as they are at this revision: a later change of the
app's copy must come with a migration of its own. Stop the schedulers before upgrading.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

READY = {
    "sqlite": "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NULL",
    "postgresql": "(status || '') = 'QUEUED' AND pending_deps = 0 AND not_before IS NULL",
}
PRIORITY = sa.literal_column("priority DESC")

SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS task_counts_insert",
    "DROP TRIGGER IF EXISTS task_counts_update",
    "DROP TRIGGER IF EXISTS task_counts_delete",
)

SQLITE_CREATE = (
    """
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER task_counts_update AFTER UPDATE OF status, queue ON tasks
    WHEN OLD.status IS NOT NEW.status OR OLD.queue IS NOT NEW.queue
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (OLD.queue, OLD.status, -1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
        INSERT INTO task_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (OLD.queue, OLD.status, -1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
)

# The function the statement-level triggers of 0005 call, now grouping by queue too; the
# triggers themselves stay.
POSTGRESQL_FUNCTION = """
    CREATE OR REPLACE FUNCTION task_counts_delta() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO task_count_deltas (queue, status, n)
            SELECT queue, status, count(*) FROM new_rows GROUP BY queue, status;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO task_count_deltas (queue, status, n)
            SELECT queue, status, -count(*) FROM old_rows GROUP BY queue, status;
        ELSE
            INSERT INTO task_count_deltas (queue, status, n)
            SELECT queue, status, sum(change) FROM (
                SELECT queue, status, 1 AS change FROM new_rows
                UNION ALL
                SELECT queue, status, -1 AS change FROM old_rows
            ) AS changed
            GROUP BY queue, status
            HAVING sum(change) <> 0;
        END IF;
        RETURN NULL;
    END
    $$
"""

POSTGRESQL_FUNCTION_BEFORE = """
    CREATE OR REPLACE FUNCTION task_counts_delta() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO task_count_deltas (status, n)
            SELECT status, count(*) FROM new_rows GROUP BY status;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO task_count_deltas (status, n)
            SELECT status, -count(*) FROM old_rows GROUP BY status;
        ELSE
            INSERT INTO task_count_deltas (status, n)
            SELECT status, sum(change) FROM (
                SELECT status, 1 AS change FROM new_rows
                UNION ALL
                SELECT status, -1 AS change FROM old_rows
            ) AS changed
            GROUP BY status
            HAVING sum(change) <> 0;
        END IF;
        RETURN NULL;
    END
    $$
"""

SQLITE_CREATE_BEFORE = tuple(
    statement.replace("(queue, status, n)", "(status, n)")
    .replace("VALUES (NEW.queue, ", "VALUES (")
    .replace("VALUES (OLD.queue, ", "VALUES (")
    .replace("ON CONFLICT (queue, status)", "ON CONFLICT (status)")
    .replace("UPDATE OF status, queue", "UPDATE OF status")
    .replace(" OR OLD.queue IS NOT NEW.queue", "")
    for statement in SQLITE_CREATE
)


def _count_tables(with_queue: bool) -> None:
    queue = [sa.Column("queue", sa.String(64), nullable=False)] if with_queue else []
    op.create_table(
        "task_counts",
        *queue,
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*(["queue"] if with_queue else []), "status"),
    )
    op.create_table(
        "task_count_deltas",
        sa.Column("seq", SeqType, autoincrement=True, nullable=False),
        *[sa.Column("queue", sa.String(64), nullable=False)] * with_queue,
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )


def upgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table(
        "queues",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("concurrency_limit", sa.Integer, nullable=True),
        sa.Column("rate_limit_per_s", sa.Float, nullable=True),
        sa.Column("tokens", sa.Float, nullable=True),
        sa.Column("tokens_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_queues"),
    )
    now = sa.func.timezone("UTC", sa.func.now()) if dialect == "postgresql" else sa.func.now()
    queues = sa.table(
        "queues",
        sa.column("name", sa.String),
        sa.column("created_at", sa.DateTime),
        sa.column("updated_at", sa.DateTime),
    )
    op.execute(queues.insert().values(name="default", created_at=now, updated_at=now))
    # A default, so that PostgreSQL (11 and later) and SQLite add the column without
    # rewriting the table.
    op.add_column(
        "tasks",
        sa.Column("queue", sa.String(64), nullable=False, server_default="default"),
    )
    op.add_column("scheduler_instances", sa.Column("queues", sa.Text, nullable=True))

    if dialect != "postgresql":
        for statement in SQLITE_DROP:
            op.execute(statement)
    op.drop_table("task_count_deltas")
    op.drop_table("task_counts")
    _count_tables(with_queue=True)
    if dialect == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
    else:
        for statement in SQLITE_CREATE:
            op.execute(statement)
    op.execute(
        "INSERT INTO task_counts (queue, status, n)"
        " SELECT queue, status, count(*) FROM tasks GROUP BY queue, status"
    )

    for name, columns in (("ix_tasks_ready", []), ("ix_tasks_ready_type", ["type"])):
        op.drop_index(name, "tasks")
        _index(name, ["queue", *columns, PRIORITY, "seq"], READY[dialect])


def _index(name: str, columns: list, where: str) -> None:
    """Create a partial index of tasks, with the same condition on both backends."""
    op.create_index(
        name, "tasks", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
    )


def downgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    for name, columns in (("ix_tasks_ready", []), ("ix_tasks_ready_type", ["type"])):
        op.drop_index(name, "tasks")
        _index(name, [*columns, PRIORITY, "seq"], READY[dialect])
    if dialect != "postgresql":
        for statement in SQLITE_DROP:
            op.execute(statement)
    op.drop_table("task_count_deltas")
    op.drop_table("task_counts")
    _count_tables(with_queue=False)
    if dialect == "postgresql":
        op.execute(POSTGRESQL_FUNCTION_BEFORE)
    else:
        for statement in SQLITE_CREATE_BEFORE:
            op.execute(statement)
    op.execute(
        "INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status"
    )
    op.drop_column("scheduler_instances", "queues")
    op.drop_column("tasks", "queue")
    op.drop_table("queues")

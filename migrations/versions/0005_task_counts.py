"""Tasks per status kept by triggers, so that counting them never scans the tasks.

Two tables and the triggers on tasks that keep them (app/storage/count_triggers.py says
why they differ by backend):

- task_counts: one row per status and its number of tasks.
- task_count_deltas: on PostgreSQL, each statement's net change per status, appended by
  statement-level triggers and folded into task_counts by the schedulers every few
  seconds; always empty on SQLite, whose row-level triggers update task_counts directly.

task_counts is filled from a count of the stored tasks in the same transaction that
creates the triggers; on PostgreSQL CREATE TRIGGER locks out writers of tasks until the
commit, so no change falls between the count and the triggers.

The trigger statements are copied here, as they were at this revision: a later change of
the app's copy must come with a migration of its own.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_CREATE = (
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_insert AFTER INSERT ON tasks
    BEGIN
        INSERT INTO task_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_update AFTER UPDATE OF status ON tasks
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        INSERT INTO task_counts (status, n) VALUES (OLD.status, -1)
        ON CONFLICT (status) DO UPDATE SET n = n + excluded.n;
        INSERT INTO task_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_delete AFTER DELETE ON tasks
    BEGIN
        INSERT INTO task_counts (status, n) VALUES (OLD.status, -1)
        ON CONFLICT (status) DO UPDATE SET n = n + excluded.n;
    END
    """,
)

SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS task_counts_insert",
    "DROP TRIGGER IF EXISTS task_counts_update",
    "DROP TRIGGER IF EXISTS task_counts_delete",
)

POSTGRESQL_CREATE = (
    """
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
    """,
    """
    CREATE OR REPLACE FUNCTION task_counts_clear() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    BEGIN
        DELETE FROM task_count_deltas;
        DELETE FROM task_counts;
        RETURN NULL;
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS task_counts_insert ON tasks",
    """
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_delta()
    """,
    "DROP TRIGGER IF EXISTS task_counts_update ON tasks",
    """
    CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_delta()
    """,
    "DROP TRIGGER IF EXISTS task_counts_delete ON tasks",
    """
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_delta()
    """,
    "DROP TRIGGER IF EXISTS task_counts_truncate ON tasks",
    """
    CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_clear()
    """,
)

POSTGRESQL_DROP = (
    "DROP TRIGGER IF EXISTS task_counts_insert ON tasks",
    "DROP TRIGGER IF EXISTS task_counts_update ON tasks",
    "DROP TRIGGER IF EXISTS task_counts_delete ON tasks",
    "DROP TRIGGER IF EXISTS task_counts_truncate ON tasks",
    "DROP FUNCTION IF EXISTS task_counts_delta()",
    "DROP FUNCTION IF EXISTS task_counts_clear()",
)


def upgrade():
    op.create_table(
        "task_counts",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("status"),
    )
    op.create_table(
        "task_count_deltas",
        sa.Column("seq", SeqType, autoincrement=True, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRESQL_CREATE if postgresql else SQLITE_CREATE:
        op.execute(statement)
    op.execute(
        "INSERT INTO task_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status"
    )


def downgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRESQL_DROP if postgresql else SQLITE_DROP:
        op.execute(statement)
    op.drop_table("task_count_deltas")
    op.drop_table("task_counts")

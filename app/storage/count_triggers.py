"""The triggers that keep `task_counts` equal to the tasks per queue and status, on both
backends.

Every change of the tasks table goes through them, whatever statement made it (a
submission, a claim, a finish, a cascade, a cancel, a retry, a prune, a raw INSERT), so
no code path can forget a count. Migration 0005 creates them on an existing database and
0009 adds the queue; `attach` creates them with the tables for `metadata.create_all` (the
tests' schemas).

SQLite has one writer: a row-level trigger adds each row's change to one row per queue
and status. On PostgreSQL such a row would be a hot row every claim and finish of every
instance updates, serialising them and inviting deadlocks; there a statement-level
trigger appends the statement's net change per queue and status to `task_count_deltas`
(nothing when no status or queue changed), and `counts.fold` moves those deltas into
`task_counts` every few seconds. Readers add the two.
"""

from __future__ import annotations

from sqlalchemy import DDL, MetaData, event

SQLITE_CREATE = (
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_insert AFTER INSERT ON tasks
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_update AFTER UPDATE OF status, queue ON tasks
    WHEN OLD.status IS NOT NEW.status OR OLD.queue IS NOT NEW.queue
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (OLD.queue, OLD.status, -1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
        INSERT INTO task_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS task_counts_delete AFTER DELETE ON tasks
    BEGIN
        INSERT INTO task_counts (queue, status, n) VALUES (OLD.queue, OLD.status, -1)
        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
    END
    """,
)

SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS task_counts_insert",
    "DROP TRIGGER IF EXISTS task_counts_update",
    "DROP TRIGGER IF EXISTS task_counts_delete",
)

# Transition tables are allowed on one event per trigger, hence one trigger per event.
# The UPDATE trigger cannot name its column (PostgreSQL refuses a column list with
# transition tables): an update that leaves every status as it was nets zero and
# inserts nothing. Each function keeps the search_path it was created under, so that a
# session with another one (an operator's psql naming `schema.tasks`, a restore from
# pg_dump, which empties it) still finds the counts beside the tasks.
POSTGRESQL_CREATE = (
    """
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


def attach(metadata: MetaData) -> None:
    """Create the triggers after `metadata.create_all` made the tables, on each backend.

    On the metadata rather than a table: the triggers need `tasks` and the count tables,
    whatever order the tables were created in. The statements replace what exists, so a
    `create_all` over an existing schema leaves one copy of each.
    """
    for dialect, statements in (("sqlite", SQLITE_CREATE), ("postgresql", POSTGRESQL_CREATE)):
        for statement in statements:
            event.listen(metadata, "after_create", DDL(statement).execute_if(dialect=dialect))
    # The tables' triggers go with them; PostgreSQL's functions stay unless dropped.
    for statement in POSTGRESQL_DROP[-2:]:
        event.listen(metadata, "after_drop", DDL(statement).execute_if(dialect="postgresql"))

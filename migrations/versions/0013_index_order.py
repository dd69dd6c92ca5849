"""Indexes that a task's state changes move less: the pairs led by batch and type, and the
finish times of finished tasks only.

A task moves from QUEUED to RUNNING to a final status, and each move takes its entry out of
one part of every index led by the status and puts it into another. Led by the status, the
entries of one batch (or type) sit in as many distant places as it has statuses, so each
scheduler pass wrote a page in each of them. Led by the batch (or type), the batch's
finished and queued entries are neighbours, and a pass moves them within a page or two.
`ix_tasks_finished_at` held every unfinished task under NULL, so each claim and finish
rewrote that part too; it now holds finished tasks only, which is all pruning reads.

The list's filters are answered as before: a page of one batch (or type) in one status is
one walk of the new index, newest first.

Nothing stored changes and every version's statements run on either set of indexes. The
revision runs in one transaction that holds writes to `tasks` from its first index build
to its commit (on PostgreSQL reads too, from its first drop), a few seconds per million
stored tasks: stop the instances first, as for the revisions before it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

IN_A_BATCH = sa.text("batch_id IS NOT NULL")
FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade():
    _partial("ix_tasks_batch_status_seq", ["batch_id", "status", "seq"], IN_A_BATCH)
    op.create_index("ix_tasks_type_status_seq", "tasks", ["type", "status", "seq"])
    _replace(FINISHED, ["ix_tasks_status_batch_seq", "ix_tasks_status_type_seq"])


def downgrade():
    _partial("ix_tasks_status_batch_seq", ["status", "batch_id", "seq"], IN_A_BATCH)
    op.create_index("ix_tasks_status_type_seq", "tasks", ["status", "type", "seq"])
    _replace(None, ["ix_tasks_batch_status_seq", "ix_tasks_type_status_seq"])


def _partial(name, columns, where):
    op.create_index(name, "tasks", columns, sqlite_where=where, postgresql_where=where)


def _replace(finished, dropped):
    """Build `ix_tasks_finished_at` again over `finished` (None: every task), drop the
    indexes `dropped`, and measure the new ones where statistics are kept.

    On PostgreSQL every index is built before any is dropped, since a DROP INDEX holds
    even the readers of `tasks` until the commit; SQLite's readers never wait for it.
    """
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _partial("ix_tasks_finished_at_next", ["finished_at"], finished)
    for name in [*dropped, "ix_tasks_finished_at"]:
        op.drop_index(name, "tasks")
    if postgresql:
        op.execute("ALTER INDEX ix_tasks_finished_at_next RENAME TO ix_tasks_finished_at")
    else:
        _partial("ix_tasks_finished_at", ["finished_at"], finished)
    _statistics()


def _statistics():
    """On SQLite, where someone ran ANALYZE, measure the new indexes too.

    The service never runs it. Statistics of `tasks` that know the old indexes but not
    the new ones made the planner walk a type's or a batch's tasks through a new index
    and sort them all for one page; fresh ones, like none, keep each page a walk in order.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return  # PostgreSQL plans from the columns' statistics, which stay
    if context.is_offline_mode():
        return  # a script (`--sql`) cannot ask; run ANALYZE after it where statistics are kept
    stats = bind.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    ).first()
    if stats is not None:
        op.execute("ANALYZE tasks")

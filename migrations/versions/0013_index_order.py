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

Nothing stored changes and every version's statements run on either set of indexes, so
this revision may run while the previous version serves; each index build reads `tasks`
once and holds writes to it meanwhile.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

IN_A_BATCH = sa.text("batch_id IS NOT NULL")
FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade():
    _partial("ix_tasks_batch_status_seq", ["batch_id", "status", "seq"], IN_A_BATCH)
    op.drop_index("ix_tasks_status_batch_seq", "tasks")
    op.create_index("ix_tasks_type_status_seq", "tasks", ["type", "status", "seq"])
    op.drop_index("ix_tasks_status_type_seq", "tasks")
    op.drop_index("ix_tasks_finished_at", "tasks")
    _partial("ix_tasks_finished_at", ["finished_at"], FINISHED)


def downgrade():
    op.drop_index("ix_tasks_finished_at", "tasks")
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])
    op.create_index("ix_tasks_status_type_seq", "tasks", ["status", "type", "seq"])
    op.drop_index("ix_tasks_type_status_seq", "tasks")
    _partial("ix_tasks_status_batch_seq", ["status", "batch_id", "seq"], IN_A_BATCH)
    op.drop_index("ix_tasks_batch_status_seq", "tasks")


def _partial(name, columns, where):
    op.create_index(name, "tasks", columns, sqlite_where=where, postgresql_where=where)

"""PostgreSQL: the ready and delayed indexes say QUEUED as an expression no status index holds.

The scheduler's walks (the claim, the promotion of what fell due, the next due time) find
their rows through the partial indexes ix_tasks_ready, ix_tasks_ready_type and
ix_tasks_delayed. PostgreSQL chooses between those and the status indexes from its
statistics; taken while every stored task had finished, they make QUEUED look empty, and
the walks went through a status index over every queued task at each pass. From this
revision the walks and the three predicates write the status term as
`(status || '') = 'QUEUED'`, which only those partial indexes match.

The three indexes are built again on PostgreSQL (each from one read of the table, while
the schedulers are stopped for the upgrade). Nothing changes on SQLite, whose walks mark
the status term with likelihood() instead.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

READY = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NULL"
DELAYED = "status = 'QUEUED' AND pending_deps = 0 AND not_before IS NOT NULL"
INDEXES = {
    "ix_tasks_ready": ([sa.literal_column("priority DESC"), "seq"], READY),
    "ix_tasks_ready_type": (["type", sa.literal_column("priority DESC"), "seq"], READY),
    "ix_tasks_delayed": (["not_before"], DELAYED),
}


def upgrade():
    _build("(status || '') = 'QUEUED'")


def downgrade():
    _build("status = 'QUEUED'")


def _build(queued: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (columns, where) in INDEXES.items():
        op.drop_index(name, "tasks")
        condition = where.replace("status = 'QUEUED'", queued)
        op.create_index(name, "tasks", columns, postgresql_where=sa.text(condition))

"""Each scheduler instance's lease: scheduler_instances.lease_s.

An instance heartbeats every third of its own LEASE_S, and was judged by the judge's:
an instance run with a longer lease than another's was declared dead while it lived,
and its attempts ran a second time elsewhere. Each instance now stores its lease when it
registers, and is judged by it. Instances registered before this revision have none;
until they register again (a restart) they are judged by the judge's own LEASE_S, as
before.

A plain ADD COLUMN of a nullable column: it takes no time whatever the table holds, and
the previous version's instances keep running beside it (they write NULL).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("scheduler_instances", sa.Column("lease_s", sa.Integer(), nullable=True))


def downgrade():
    op.drop_column("scheduler_instances", "lease_s")

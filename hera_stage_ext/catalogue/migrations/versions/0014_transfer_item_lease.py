"""Transfer items: the receiver holding each and its lease (``holder``, ``lease_expires``), so
that replicas of a site sharing the catalogue never pull one item at once.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfer_item") as batch_op:
        batch_op.add_column(sa.Column("holder", sa.String(128), nullable=True))
        batch_op.add_column(sa.Column("lease_expires", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transfer_item") as batch_op:
        batch_op.drop_column("lease_expires")
        batch_op.drop_column("holder")

"""Stewardship: an instance's fixity (what its last re-hash found, and when).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch_op:
        batch_op.add_column(sa.Column("fixity", sa.String(length=16), nullable=False,
                                      server_default="unchecked"))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("fixity_detail", sa.Text(), nullable=False,
                                      server_default=""))
        batch_op.create_index("ix_instance_store_verified", ["store_id", "verified_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch_op:
        batch_op.drop_index("ix_instance_store_verified")
        batch_op.drop_column("fixity_detail")
        batch_op.drop_column("verified_at")
        batch_op.drop_column("fixity")

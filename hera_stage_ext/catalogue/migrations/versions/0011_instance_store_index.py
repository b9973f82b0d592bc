"""Instances: drop the index on store_id alone (the (store_id, path) and (store_id,
verified_at) indexes both begin with it and answer every query by store).

Each instance written kept a fifth index entry up to date: 71.5 against 76 us of PostgreSQL
server CPU a new file with its copy, medians of three (benchmarks/README.md, session 10); the
queries by store keep their plans, on the (store_id, verified_at) index instead.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch_op:
        batch_op.drop_index("ix_instance_store_id")


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch_op:
        batch_op.create_index("ix_instance_store_id", ["store_id"], unique=False)

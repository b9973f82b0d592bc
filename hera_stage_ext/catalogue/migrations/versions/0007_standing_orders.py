"""Standing orders: standing_order (a user's saved search kept in sync with a peer).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "standing_order",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("search", JSONType, nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_evaluated_at", sa.DateTime(), nullable=True),
        sa.Column("last_launched_at", sa.DateTime(), nullable=True),
        sa.Column("last_job_id", sa.Integer(), nullable=True),
        sa.Column("last_files", sa.Integer(), nullable=False),
        sa.Column("last_message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "name", name="uq_standing_order_owner_name"),
    )
    with op.batch_alter_table("standing_order") as batch_op:
        batch_op.create_index("ix_standing_order_owner", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_table("standing_order")

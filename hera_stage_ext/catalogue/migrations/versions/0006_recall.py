"""Cold-store recall: store.options (a cold store's buffer, cap, volume key) and recall_copy.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NameType = sa.String(length=256).with_variant(sa.String(length=256, collation="C"), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("store") as batch_op:
        batch_op.add_column(sa.Column("options", JSONType, nullable=False,
                                      server_default=sa.text("'{}'")))
    op.create_table(
        "recall_copy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", NameType, nullable=False),
        sa.Column("cold_store", sa.String(length=128), nullable=False),
        sa.Column("volume", sa.String(length=256), nullable=False),
        sa.Column("buffer", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("recalled_at", sa.DateTime(), nullable=True),
        sa.Column("reaped_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("recall_copy") as batch_op:
        batch_op.create_index("ix_recall_copy_job_id", ["job_id"], unique=False)
        batch_op.create_index("ix_recall_copy_buffer_state", ["buffer", "state"], unique=False)


def downgrade() -> None:
    op.drop_table("recall_copy")
    with op.batch_alter_table("store") as batch_op:
        batch_op.drop_column("options")

"""Transfer tables: transfer_item (receiving side), remote_instance (sending side).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NameType = sa.String(length=256).with_variant(sa.String(length=256, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "transfer_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transfer", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("name", NameType, nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksums", JSONType, nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("resumed_from", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("peer", "name", name="uq_transfer_item_peer_name"),
    )
    with op.batch_alter_table("transfer_item") as batch_op:
        batch_op.create_index("ix_transfer_item_transfer", ["transfer"], unique=False)
        batch_op.create_index("ix_transfer_item_state", ["state"], unique=False)
    op.create_table(
        "remote_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("transfer", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["file.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("file_id", "site", name="uq_remote_instance_file_site"),
    )
    with op.batch_alter_table("remote_instance") as batch_op:
        batch_op.create_index("ix_remote_instance_file_id", ["file_id"], unique=False)
        batch_op.create_index("ix_remote_instance_site", ["site"], unique=False)


def downgrade() -> None:
    op.drop_table("remote_instance")
    op.drop_table("transfer_item")

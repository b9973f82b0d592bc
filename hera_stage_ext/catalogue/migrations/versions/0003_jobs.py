"""Job tables: job, job_item (the staging engine; later transfer, upload and recall jobs).

Revision ID: 0003
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NameType = sa.String(length=256).with_variant(sa.String(length=256, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.String(length=4096), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("search", JSONType, nullable=True),
        sa.Column("options", JSONType, nullable=False),
        sa.Column("files_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("files_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("files_failed", sa.BigInteger(), nullable=False),
        sa.Column("files_skipped", sa.BigInteger(), nullable=False),
        sa.Column("missing", JSONType, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("log_path", sa.String(length=4096), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("lease_expires", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index("ix_job_state_lease", ["state", "lease_expires"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_destination"), ["destination"], unique=False)

    op.create_table(
        "job_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", NameType, nullable=False),
        sa.Column("store", sa.String(length=128), nullable=False),
        sa.Column("source_path", sa.String(length=4096), nullable=False),
        sa.Column("dest_path", sa.String(length=4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("is_directory", sa.Boolean(), nullable=False),
        sa.Column("checksums", JSONType, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_item", schema=None) as batch_op:
        batch_op.create_index("ix_job_item_job_state", ["job_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_item", schema=None) as batch_op:
        batch_op.drop_index("ix_job_item_job_state")
    op.drop_table("job_item")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_destination"))
        batch_op.drop_index(batch_op.f("ix_job_owner"))
        batch_op.drop_index("ix_job_state_lease")
    op.drop_table("job")

"""Job items: the (job_id, state) index replaced by one on job_id and partial indexes of the
queued, waiting and failed items (``jobs/models.py``'s ``JOB_ITEM_INDEXES``).

Each item row is written twice as a job runs it (claimed, then recorded), and each write moved
its entry in the (job_id, state) index: now a claim only takes the row out of the queued
items' index and a done or skipped result touches no index (SQLite: a claim and its record
5.7 -> 3.3 us an item; benchmarks/README.md, session 11). Building the indexes reads the
table once: 0.7 s (SQLite) and 0.9 s (PostgreSQL) for 1,000,000 item rows.

Revision ID: 0012
Revises: 0011
"""

from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The partial indexes as this revision made them (not imported from the models, which may change).
_PARTIAL = (("ix_job_item_queued", ["job_id", "id"], "queued"),
            ("ix_job_item_waiting", ["job_id"], "waiting"),
            ("ix_job_item_failed", ["job_id"], "failed"))


def upgrade() -> None:
    with op.batch_alter_table("job_item") as batch_op:
        batch_op.create_index("ix_job_item_job", ["job_id"], unique=False)
        for name, columns, state in _PARTIAL:
            where = text(f"state = '{state}'")
            batch_op.create_index(name, columns, unique=False, sqlite_where=where,
                                  postgresql_where=where)
        batch_op.drop_index("ix_job_item_job_state")


def downgrade() -> None:
    with op.batch_alter_table("job_item") as batch_op:
        batch_op.create_index("ix_job_item_job_state", ["job_id", "state"], unique=False)
        for name, _columns, _state in _PARTIAL:
            batch_op.drop_index(name)
        batch_op.drop_index("ix_job_item_job")

"""Catalogue tables: store, session, observation, file, event, instance.

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 15:17:46.658218
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('session',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('start_time_jd', sa.Float(), nullable=False),
    sa.Column('stop_time_jd', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('store',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('path', sa.String(length=4096), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('available', sa.Boolean(), nullable=False),
    sa.Column('ssh_host', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('observation',
    sa.Column('obsid', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('start_time_jd', sa.Float(), nullable=False),
    sa.Column('stop_time_jd', sa.Float(), nullable=False),
    sa.Column('start_lst_hr', sa.Float(), nullable=False),
    sa.Column('session_id', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['session_id'], ['session.id'], ),
    sa.PrimaryKeyConstraint('obsid')
    )
    with op.batch_alter_table('observation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_observation_session_id'), ['session_id'], unique=False)

    op.create_table('file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256).with_variant(sa.String(length=256, collation='C'), 'postgresql'), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('is_directory', sa.Boolean(), nullable=False),
    sa.Column('checksums', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('create_time', sa.DateTime(), nullable=False),
    sa.Column('obsid', sa.BigInteger(), nullable=True),
    sa.Column('source', sa.String(length=256), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['obsid'], ['observation.obsid'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_create_time'), ['create_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_obsid'), ['obsid'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_source'), ['source'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_type'), ['type'], unique=False)

    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['file.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_file_id'), ['file_id'], unique=False)
        batch_op.create_index('ix_event_type_file', ['type', 'file_id'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=4096), nullable=False),
    sa.Column('available', sa.Boolean(), nullable=False),
    sa.Column('deletion_policy', sa.String(length=16), nullable=False),
    sa.Column('create_time', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['file.id'], ),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('store_id', 'path', name='uq_instance_store_path')
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_file_id'), ['file_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_store_id'), ['store_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_store_id'))
        batch_op.drop_index(batch_op.f('ix_instance_file_id'))

    op.drop_table('instance')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_type_file')
        batch_op.drop_index(batch_op.f('ix_event_file_id'))

    op.drop_table('event')
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_type'))
        batch_op.drop_index(batch_op.f('ix_file_source'))
        batch_op.drop_index(batch_op.f('ix_file_obsid'))
        batch_op.drop_index(batch_op.f('ix_file_create_time'))

    op.drop_table('file')
    with op.batch_alter_table('observation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_observation_session_id'))

    op.drop_table('observation')
    op.drop_table('store')
    op.drop_table('session')

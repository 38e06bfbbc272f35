"""lifecycle core: a batch's chunks are jobs (jobs.batch_id), jobs of kinds without a model, no batch_chunks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.String(length=40), nullable=True))
        batch_op.alter_column('model', existing_type=sa.String(length=200), nullable=True)
        batch_op.create_index(batch_op.f('ix_jobs_batch_id'), ['batch_id'], unique=False)
        batch_op.create_foreign_key('fk_jobs_batch_id', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')
    with op.batch_alter_table('batch_chunks', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_chunks_status')
    op.drop_table('batch_chunks')


def downgrade() -> None:
    op.create_table('batch_chunks',
    sa.Column('batch_id', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker_id', sa.String(length=255), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('batch_id', 'seq')
    )
    with op.batch_alter_table('batch_chunks', schema=None) as batch_op:
        batch_op.create_index('ix_batch_chunks_status', ['status', 'sent_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_batch_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_batch_id'))
        batch_op.alter_column('model', existing_type=sa.String(length=200), nullable=False)
        batch_op.drop_column('batch_id')

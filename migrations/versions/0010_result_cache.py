"""result cache: the table the embedded default keeps cached results in, and each job's cache key

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 08:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cache_key', sa.String(length=64), nullable=True))
    op.create_table(
        'result_cache',
        sa.Column('key', sa.String(length=64), primary_key=True),
        sa.Column('owner_id', sa.Integer(), sa.ForeignKey('owners.id', ondelete='CASCADE'), nullable=False),
        sa.Column('output', sa.JSON(), nullable=False),
        sa.Column('usage', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_result_cache_created_at', 'result_cache', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_result_cache_created_at', table_name='result_cache')
    op.drop_table('result_cache')
    with op.batch_alter_table('jobs') as b:
        b.drop_column('cache_key')

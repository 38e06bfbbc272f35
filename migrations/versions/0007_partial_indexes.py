"""partial indexes: jobs by open status and by batch, unsent outbox rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:05:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('queued', 'running', 'cancelling')"


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, unique=False, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


def upgrade() -> None:
    op.drop_index('ix_jobs_status', table_name='jobs')
    _partial('ix_jobs_status', 'jobs', ['status'], OPEN)
    op.drop_index('ix_jobs_batch_id', table_name='jobs')
    _partial('ix_jobs_batch_id', 'jobs', ['batch_id'], "batch_id IS NOT NULL")
    op.drop_index('ix_outbox_sent_at', table_name='outbox')
    _partial('ix_outbox_unsent', 'outbox', ['id'], "sent_at IS NULL")


def downgrade() -> None:
    op.drop_index('ix_outbox_unsent', table_name='outbox')
    op.create_index('ix_outbox_sent_at', 'outbox', ['sent_at'], unique=False)
    op.drop_index('ix_jobs_batch_id', table_name='jobs')
    op.create_index('ix_jobs_batch_id', 'jobs', ['batch_id'], unique=False)
    op.drop_index('ix_jobs_status', table_name='jobs')
    op.create_index('ix_jobs_status', 'jobs', ['status'], unique=False)

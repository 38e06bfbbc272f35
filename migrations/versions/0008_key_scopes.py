"""api keys: name, scopes, rate limit, expiry, last use

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 07:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_SCOPES = '["jobs:read", "jobs:write", "files", "finetune", "webhooks"]'


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as b:
        b.add_column(sa.Column('name', sa.String(length=200), nullable=True))
        b.add_column(sa.Column('scopes', sa.JSON(), nullable=False, server_default=sa.text(f"'{DEFAULT_SCOPES}'")))
        b.add_column(sa.Column('rate_limit', sa.String(length=64), nullable=True))
        b.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        b.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as b:
        for column in ('last_used_at', 'expires_at', 'rate_limit', 'scopes', 'name'):
            b.drop_column(column)

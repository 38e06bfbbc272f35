"""webhook signing secrets sealed at rest: the columns widen to hold `fernet:<token>`

Existing plaintext secrets are not touched here: the application reads a value without the `fernet:` prefix as
plaintext and seals it the first time it uses it (app.services.webhooks), and `llmos secrets reseal`
seals them all at once. Sealing here would need the key at migration time, and a migration that read the key
from a different place than the processes (another data dir, a missing environment variable) would seal every
secret under a key nobody has; the code that seals is the code that opens.

The downgrade opens sealed values with the key of the current settings (LLMOS_SECRET_KEY, or the data dir's
key file) so the older code can sign again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_settings') as b:
        b.alter_column('secret', existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=False)
        b.alter_column('previous_secret', existing_type=sa.String(length=128), type_=sa.Text(),
                       existing_nullable=True)


def downgrade() -> None:
    conn = op.get_bind()
    table = sa.table('webhook_settings', sa.column('owner_id', sa.Integer()), sa.column('secret', sa.Text()),
                     sa.column('previous_secret', sa.Text()))
    rows = conn.execute(sa.select(table.c.owner_id, table.c.secret, table.c.previous_secret)).all()
    if any((v or '').startswith('fernet:') for r in rows for v in (r.secret, r.previous_secret)):
        from app.secrets_box import box_for
        from app.settings import load_settings

        box = box_for(load_settings())
        for r in rows:
            conn.execute(table.update().where(table.c.owner_id == r.owner_id).values(
                secret=box.open(r.secret).value,
                previous_secret=None if r.previous_secret is None else box.open(r.previous_secret).value))
    with op.batch_alter_table('webhook_settings') as b:
        b.alter_column('secret', existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=False)
        b.alter_column('previous_secret', existing_type=sa.Text(), type_=sa.String(length=128),
                       existing_nullable=True)

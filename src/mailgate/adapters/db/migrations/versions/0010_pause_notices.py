"""oauth2_notices.kind: the tenant admins' notices also tell of a configuration paused by its
provider's quota or throttling (``paused``), beside broken OAuth2 authorizations (``oauth2``)

Revision ID: 0010_pause_notices
Revises: 0009_server_delivery
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_pause_notices"
down_revision = "0009_server_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth2_notices") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="oauth2")
        )


def downgrade() -> None:
    with op.batch_alter_table("oauth2_notices") as batch:
        batch.drop_column("kind")

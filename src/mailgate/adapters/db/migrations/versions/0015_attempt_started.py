"""messages.attempt_started_at: an attempt is marked started before it goes out, so that a
worker's crash in the middle of it leaves a trace (the attempt is then recorded as possibly
delivered instead of being sent again silently)

Revision ID: 0015_attempt_started
Revises: 0014_server_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_attempt_started"
down_revision = "0014_server_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("attempt_started_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("attempt_started_at")

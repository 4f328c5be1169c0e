"""message_attempts.possibly_delivered: an attempt whose outcome is unknown (no reply after
the end of the message, or the worker stopped during it) says that the server may have the
message, so that a repeat is visible in the attempt log

Revision ID: 0007_attempt_possibly_delivered
Revises: 0006_message_metadata
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_attempt_possibly_delivered"
down_revision = "0006_message_metadata"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message_attempts") as batch:
        batch.add_column(
            sa.Column("possibly_delivered", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("message_attempts") as batch:
        batch.drop_column("possibly_delivered")

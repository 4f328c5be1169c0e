"""message metadata: the caller's own keys and values on each message (JSON, NULL: none)

Revision ID: 0006_message_metadata
Revises: 0005_server_transport
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_message_metadata"
down_revision = "0005_server_transport"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: instant on both engines, whatever the table's size.
    op.add_column("messages", sa.Column("meta", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("meta")

"""message source: how a message came in (api or smtp; NULL: stored before, through the API)

Revision ID: 0012_message_source
Revises: 0011_processes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_message_source"
down_revision = "0011_processes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: instant on both engines, whatever the table's size.
    op.add_column("messages", sa.Column("source", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("source")

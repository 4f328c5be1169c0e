"""audit source: the client address of the request that made each change

Revision ID: 0013_audit_source
Revises: 0012_message_source
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_audit_source"
down_revision = "0012_message_source"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("source", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.drop_column("source")

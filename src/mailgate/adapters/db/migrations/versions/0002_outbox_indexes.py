"""outbox indexes: the claim order and the per-tenant list

Revision ID: 0002_outbox
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002_outbox"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Claims read ready rows in (priority, next_attempt_at) order; lists page by id per tenant.
    op.create_index("ix_messages_ready", "messages", ["status", "priority", "next_attempt_at"])
    op.create_index("ix_messages_tenant_id", "messages", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_messages_tenant_id", table_name="messages")
    op.drop_index("ix_messages_ready", table_name="messages")

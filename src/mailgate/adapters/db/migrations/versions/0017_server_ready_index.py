"""ix_messages_server_ready (status, server_id, priority, next_attempt_at): a claim that skips
full lanes' configurations finds the configurations with ready mail by a loose index scan and
seeks each one's next messages, instead of walking every ready row of a skipped one through
ix_messages_ready (1,000,000 queued for one configuration: 73 % of the worker's time)

Revision ID: 0017_server_ready_index
Revises: 0016_server_last_tests
"""

from __future__ import annotations

from alembic import op

revision = "0017_server_ready_index"
down_revision = "0016_server_last_tests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_server_ready",
        "messages",
        ["status", "server_id", "priority", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_messages_server_ready", table_name="messages")

"""drop ix_messages_claim: with it SQLite claimed through (status, next_attempt_at) and sorted
every ready row (12-16 ms per claim with 50,000 queued); ix_messages_ready serves the claim
in order (0.2 ms) and the per-status counts

Revision ID: 0003_claim_index
Revises: 0002_outbox
"""

from __future__ import annotations

from alembic import op

revision = "0003_claim_index"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_claim", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_claim", "messages", ["status", "next_attempt_at"])

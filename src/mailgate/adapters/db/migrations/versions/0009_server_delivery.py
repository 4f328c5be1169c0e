"""server_delivery: a configuration's pause after a provider's quota or throttling answer,
shared by every worker process (paused until, why, the last reply, the probe in flight)

Revision ID: 0009_server_delivery
Revises: 0008_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_server_delivery"
down_revision = "0008_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_delivery",
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pause_kind", sa.String(length=16), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("last_reply", sa.Text(), nullable=True),
        sa.Column("pauses", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("probe_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probe_message_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["email_servers.id"],
            name=op.f("fk_server_delivery_server_id_email_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_server_delivery")),
    )


def downgrade() -> None:
    op.drop_table("server_delivery")

"""Limits held across every worker process: the next send slot of messages_per_minute
(server_delivery.next_send_at), leased connection slots (server_connections) and recipients
per hour for recipients_per_day (server_recipient_counts)

Revision ID: 0014_server_limits
Revises: 0013_audit_source
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_server_limits"
down_revision = "0013_audit_source"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("server_delivery") as batch:
        batch.add_column(sa.Column("next_send_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "server_connections",
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["email_servers.id"],
            name=op.f("fk_server_connections_server_id_email_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", "slot", name=op.f("pk_server_connections")),
    )
    op.create_table(
        "server_recipient_counts",
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["email_servers.id"],
            name=op.f("fk_server_recipient_counts_server_id_email_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", "hour", name=op.f("pk_server_recipient_counts")),
    )


def downgrade() -> None:
    op.drop_table("server_recipient_counts")
    op.drop_table("server_connections")
    with op.batch_alter_table("server_delivery") as batch:
        batch.drop_column("next_send_at")

"""oauth2_notices: a tenant admin's notice of a broken OAuth2 authorization waits here until
the system e-mail server takes it (before, a notice that failed to send was lost)

Revision ID: 0004_oauth2_notices
Revises: 0003_claim_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_oauth2_notices"
down_revision = "0003_claim_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth2_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["email_servers.id"],
            name=op.f("fk_oauth2_notices_server_id_email_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth2_notices")),
    )
    op.create_index(op.f("ix_oauth2_notices_server_id"), "oauth2_notices", ["server_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_oauth2_notices_server_id"), table_name="oauth2_notices")
    op.drop_table("oauth2_notices")

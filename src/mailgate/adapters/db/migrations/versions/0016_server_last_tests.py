"""The last test of each configuration (server_last_tests), for the UI's status badges

Revision ID: 0016_server_last_tests
Revises: 0015_attempt_started
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_server_last_tests"
down_revision = "0015_attempt_started"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_last_tests",
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["email_servers.id"],
            name=op.f("fk_server_last_tests_server_id_email_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_server_last_tests")),
    )


def downgrade() -> None:
    op.drop_table("server_last_tests")

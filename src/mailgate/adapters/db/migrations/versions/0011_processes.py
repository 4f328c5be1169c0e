"""processes: every worker and API process registers with a heartbeat, so that a dead
worker's leases are taken over within seconds and /healthz can prove the write path

Revision ID: 0011_processes
Revises: 0010_pause_notices
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_processes"
down_revision = "0010_pause_notices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "processes",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processes")),
    )
    op.create_index(op.f("ix_processes_heartbeat_at"), "processes", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_processes_heartbeat_at"), table_name="processes")
    op.drop_table("processes")

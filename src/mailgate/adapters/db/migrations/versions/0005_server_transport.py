"""server transport: every configuration names how its mail leaves (smtp, microsoft_graph,
gmail_api); the ones made before the choice existed are SMTP configurations and say so

Revision ID: 0005_server_transport
Revises: 0004_oauth2_notices
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_server_transport"
down_revision = "0004_oauth2_notices"
branch_labels = None
depends_on = None

_servers = sa.table("email_servers", sa.column("id", sa.Integer()), sa.column("config", sa.JSON()))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(_servers.c.id, _servers.c.config)).all():
        config = dict(row.config or {})
        if "transport" in config:
            continue
        config["transport"] = "smtp"
        conn.execute(_servers.update().where(_servers.c.id == row.id).values(config=config))


def downgrade() -> None:
    # An older mailgate knows SMTP only: an API configuration cannot be carried back.
    conn = op.get_bind()
    for row in conn.execute(sa.select(_servers.c.id, _servers.c.config)).all():
        config = dict(row.config or {})
        if config.get("transport", "smtp") != "smtp":
            raise RuntimeError(
                f"e-mail server {row.id} uses transport {config['transport']!r}, which the "
                "older schema cannot hold; change it to smtp or delete it first"
            )
        config.pop("transport", None)
        conn.execute(_servers.update().where(_servers.c.id == row.id).values(config=config))

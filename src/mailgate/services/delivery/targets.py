"""Reading the configurations the dispatcher's lanes deliver for."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import EmailServer
from mailgate.services.delivery.dispatcher import Target, TargetLoader
from mailgate.services.email_servers import EmailServers


def target_loader(sessions: sessionmaker[Session], servers: EmailServers) -> TargetLoader:
    """Configurations by id, resolved (secrets decrypted), with their OAuth2 state."""

    def load(server_ids: Collection[int | None]) -> dict[int | None, Target]:
        ids = [i for i in server_ids if i]
        with sessions() as db:
            rows = {r.id: r for r in db.scalars(select(EmailServer).where(EmailServer.id.in_(ids)))}
            return {
                sid: Target(servers.resolve(rows[sid]), rows[sid].oauth2_state)
                if sid in rows
                else Target(None)
                for sid in server_ids
            }

    return load

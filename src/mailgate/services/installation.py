"""An installation's first start: the newest schema, then on a database without users the
system administrator ``admin``, the tenant ``home`` and the default system settings.

Only ``mailgate serve`` and ``mailgate init`` seed: they show a generated password. Every
other command only upgrades the schema, so no password is made where nobody sees it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.engine import migrate
from mailgate.adapters.db.locks import startup_lock
from mailgate.adapters.db.tables import SystemSetting, User
from mailgate.domain.clock import Clock
from mailgate.services.identity import Identity
from mailgate.services.tenants import HOME_TENANT, create_tenant

DEFAULT_SYSTEM_SETTINGS: dict[str, Any] = {"allow_remote_clients": False}


def say(message: str) -> None:
    # Flushed at once: under a service manager stdout is a pipe, and the one-time password
    # must reach the log now, not when the buffer fills.
    print(message, flush=True)


@dataclass(frozen=True)
class Seeded:
    """What a first start created: ``admin``, with the password if it was generated."""

    generated_password: str | None


class Installation:
    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        identity: Identity,
        clock: Clock,
        *,
        admin_password: str | None,
        public_base_url: str,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.identity = identity
        self.clock = clock
        self.admin_password = admin_password
        self.public_base_url = public_base_url

    def upgrade_schema(self) -> None:
        """Create or upgrade the schema, and nothing else."""
        with startup_lock(self.engine):
            migrate(self.engine)

    def first_start(self, echo: Callable[[str], None] = say) -> Seeded | None:
        """Migrate, then on a database without users create ``admin`` and the tenant
        ``home``; ``None`` when there were users already. A generated password is echoed
        once (and never logged)."""
        with startup_lock(self.engine):
            migrate(self.engine)
            seeded = self._seed()
        if seeded is None:
            return None
        if seeded.generated_password:
            echo(
                "\n  mailgate: created the system administrator 'admin' with the password\n\n"
                f"      {seeded.generated_password}\n\n"
                "  It is shown only this once. Change it after signing in.\n"
            )
        else:
            echo(
                "mailgate: created the system administrator 'admin' "
                "(password from MAILGATE_ADMIN_PASSWORD)"
            )
        return seeded

    def _seed(self) -> Seeded | None:
        with self.sessions.begin() as db:
            if db.scalar(select(User.id).limit(1)) is not None:
                return None
            generated = None
            password = self.admin_password
            if not password:
                password = generated = secrets.token_urlsafe(12)
            create_tenant(db, self.clock, HOME_TENANT, "Home")
            self.identity.create_user(db, username="admin", password=password, system_admin=True)
            for key, value in DEFAULT_SYSTEM_SETTINGS.items():
                if db.get(SystemSetting, key) is None:
                    db.add(SystemSetting(key=key, value=value))
            db.add(SystemSetting(key="public_base_url", value=self.public_base_url))
        return Seeded(generated)

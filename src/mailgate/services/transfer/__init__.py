"""Export and import of a tenant's configuration (README "Export and import a tenant"), one
module per job: ``document`` (the format, its versions, the checks that need no database),
``exporter`` and ``importer`` (dry run, all or nothing). Secrets are sealed and opened through
``ports.PassphraseEnvelope``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import Tenant
from mailgate.domain.clock import Clock
from mailgate.ports import PassphraseEnvelope
from mailgate.services.email_servers import EmailServers
from mailgate.services.transfer.exporter import Exporter
from mailgate.services.transfer.importer import Importer


class Transfer:
    """Both directions, built once by the composition root."""

    def __init__(self, servers: EmailServers, clock: Clock, envelope: PassphraseEnvelope) -> None:
        self._exporter = Exporter(servers, clock, envelope)
        self._importer = Importer(servers, clock, envelope)

    def export(
        self,
        db: Session,
        tenant: Tenant,
        *,
        resources: list[str],
        passphrase: str | None,
        actor: str,
    ) -> dict[str, Any]:
        """The export document; writes the audit entry in the same transaction."""
        return self._exporter.export(
            db, tenant, resources=resources, passphrase=passphrase, actor=actor
        )

    def import_(
        self,
        db: Session,
        tenant: Tenant,
        raw: Any,
        *,
        passphrase: str | None,
        dry_run: bool,
        actor: str,
    ) -> dict[str, Any]:
        """Validate all of ``raw``, then (unless ``dry_run``) apply it. Returns the report."""
        return self._importer.import_(
            db, tenant, raw, passphrase=passphrase, dry_run=dry_run, actor=actor
        )

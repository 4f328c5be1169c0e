"""Export of a tenant's configuration: its e-mail servers and remote clients as a document
(``document.py``), the secrets sealed under a passphrase when one is given, or listed as not
exported when not."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate import __version__
from mailgate.adapters.db.tables import AuditEntry, EmailServer, RemoteClient, SystemSetting, Tenant
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.oauth2 import REFRESH_CLAIM
from mailgate.ports import PassphraseEnvelope
from mailgate.schemas.email_server import SECRET_FIELDS
from mailgate.services.email_servers import EmailServers
from mailgate.services.transfer.document import (
    FORMAT,
    FORMAT_VERSION,
    SECRET_PATHS,
    associated_data,
)

INSTALLATION_ID_KEY = "installation_id"
AUDIT_EXPORT = "tenant.export"
_NOT_EXPORTED_REASON = "secret: export with a passphrase to include it encrypted"


def installation_identity(db: Session, public_base_url: str) -> dict[str, str]:
    """This installation's id (made once, kept in system settings) and its public URL."""
    row = db.get(SystemSetting, INSTALLATION_ID_KEY)
    if row is None:
        try:
            with db.begin_nested():
                db.add(SystemSetting(key=INSTALLATION_ID_KEY, value=str(uuid.uuid4())))
        except IntegrityError:  # another process made it first
            pass
        row = db.get(SystemSetting, INSTALLATION_ID_KEY)
    assert row is not None
    return {"installation_id": str(row.value), "public_base_url": public_base_url}


class Exporter:
    def __init__(self, servers: EmailServers, clock: Clock, envelope: PassphraseEnvelope) -> None:
        self.servers = servers
        self.clock = clock
        self.envelope = envelope

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
        now = self.clock()
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generator": f"mailgate {__version__}",
            "source": {
                **installation_identity(db, self.servers.public_base_url),
                "tenant": tenant.name,
            },
            "exported_at": isoformat(now),
            "exported_by": actor,
            "resources": resources,
        }
        secret_values: dict[str, dict[str, Any]] = {}
        not_exported: list[dict[str, str]] = []
        if "email-servers" in resources:
            doc["email_servers"] = []
            for row in self.servers.list(db, tenant.id):
                doc["email_servers"].append(
                    {"name": row.name, "is_default": row.is_default, **row.config}
                )
                values = self._secrets_of(row)
                if values:
                    secret_values[row.name] = values
                for key in values:
                    path = ".".join(SECRET_PATHS[key]) if key in SECRET_PATHS else "oauth2_tokens"
                    not_exported.append(
                        {
                            "resource": "email-servers",
                            "name": row.name,
                            "field": path,
                            "reason": _NOT_EXPORTED_REASON,
                        }
                    )
        if "remote-clients" in resources:
            clients = db.scalars(
                select(RemoteClient)
                .where(RemoteClient.tenant_id == tenant.id)
                .order_by(RemoteClient.name)
            )
            doc["remote_clients"] = []
            for client in clients:
                doc["remote_clients"].append({"name": client.name})
                not_exported.append(
                    {
                        "resource": "remote-clients",
                        "name": client.name,
                        "field": "token",
                        "reason": "stored only as a hash; the client needs a new token after "
                        "import",
                    }
                )
        with_secrets = passphrase is not None
        if with_secrets:
            not_exported = [n for n in not_exported if n["resource"] != "email-servers"]
        doc["not_exported"] = not_exported
        if passphrase is not None:
            plaintext = json.dumps({"email-servers": secret_values}).encode()
            doc["secrets"] = self.envelope.seal(passphrase, plaintext, associated_data(doc))
        else:
            doc["secrets"] = None
        db.add(
            AuditEntry(
                tenant_id=tenant.id,
                at=now,
                actor=actor,
                action=AUDIT_EXPORT,
                detail={
                    "with_secrets": with_secrets,
                    "resources": resources,
                    "email_servers": len(doc.get("email_servers", [])),
                    "remote_clients": len(doc.get("remote_clients", [])),
                },
            )
        )
        db.flush()
        return doc

    def _secrets_of(self, row: EmailServer) -> dict[str, Any]:
        stored = self.servers.secrets_of(row)
        values: dict[str, Any] = {
            k: getattr(stored, k) for k in SECRET_FIELDS if getattr(stored, k) is not None
        }
        tokens = self.servers.tokens_of(row)
        tokens.pop(REFRESH_CLAIM, None)  # a refresh in progress is this installation's affair
        if tokens:
            values["oauth2"] = {
                "tokens": tokens,
                "access_token_expires_at": isoformat(row.access_token_expires_at),
                "refresh_token_last_used_at": isoformat(row.refresh_token_last_used_at),
            }
        return values

"""Import of an export document into a tenant: validate everything with the API's rules
first, then create or overwrite by name in the caller's transaction, all or nothing; nothing
else is touched. A dry run validates and reports without writing."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import AuditEntry, EmailServer, RemoteClient, Tenant
from mailgate.domain.clock import Clock
from mailgate.domain.errors import Conflict, EnvelopeError, FieldError, ValidationFailed
from mailgate.ports import PassphraseEnvelope
from mailgate.schemas.email_server import (
    EmailServerIn,
    ServerSecrets,
    pydantic_field_errors,
    validate_semantics,
)
from mailgate.services.email_servers import (
    _OAUTH_IDENTITY,
    EmailServers,
    bound_secrets,
    kept_secrets,
)
from mailgate.services.remote_clients import remote_clients_allowed
from mailgate.services.transfer.document import (
    PASSPHRASE_HEADER,
    SECRET_PATHS,
    Document,
    RemoteClientDoc,
    SecretsLocked,
    associated_data,
    check_document,
    cleartext_secrets,
    parse_oauth2,
    secrets_layout,
    with_secrets,
)

AUDIT_IMPORT = "tenant.import"


class Importer:
    def __init__(self, servers: EmailServers, clock: Clock, envelope: PassphraseEnvelope) -> None:
        self.servers = servers
        self.clock = clock
        self.envelope = envelope

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
        doc = check_document(raw)
        report = _Report(dry_run=dry_run)
        secrets = self._open_secrets(raw, doc, passphrase, report)
        plan = _Plan()
        existing_clients = set(
            db.scalars(select(RemoteClient.name).where(RemoteClient.tenant_id == tenant.id))
        )
        errors: list[FieldError] = []
        if doc.remote_clients is not None:
            self._plan_clients(doc.remote_clients, existing_clients, plan, report, errors)
        if doc.email_servers is not None:
            known_clients = existing_clients | {c.name for c in doc.remote_clients or []}
            self._plan_servers(
                db,
                tenant,
                doc.email_servers,
                secrets,
                known_clients,
                remote_clients_allowed(db),
                plan,
                report,
                errors,
            )
        if errors:
            raise ValidationFailed(errors, detail="the document does not validate; nothing changed")
        if not dry_run:
            try:
                self._apply(db, tenant, plan)
            except IntegrityError:
                # Someone created a resource of the same name since the plan was made; the
                # caller's transaction rolls back, so nothing of this import remains.
                raise Conflict(
                    "the tenant changed while importing; nothing was changed, try again"
                ) from None
            db.add(
                AuditEntry(
                    tenant_id=tenant.id,
                    at=self.clock(),
                    actor=actor,
                    action=AUDIT_IMPORT,
                    detail={
                        "with_secrets": secrets is not None,
                        "source": doc.source,
                        "created": report.created,
                        "overwritten": report.overwritten,
                    },
                )
            )
            db.flush()
        return report.as_dict()

    def _open_secrets(
        self, raw: dict[str, Any], doc: Document, passphrase: str | None, report: _Report
    ) -> dict[str, dict[str, Any]] | None:
        if doc.secrets is None:
            if passphrase is not None:
                report.warn(
                    "import", "", "the document carries no secrets; the passphrase was not used"
                )
            return None
        if passphrase is None:
            raise SecretsLocked(
                "this export contains encrypted secrets: send its passphrase in the "
                f"{PASSPHRASE_HEADER} header (or remove the secrets section to import without)"
            )
        try:
            plaintext = self.envelope.open(passphrase, doc.secrets, associated_data(raw))
        except EnvelopeError as exc:
            raise SecretsLocked(f"{exc}; nothing changed") from None
        return secrets_layout(plaintext)

    def _plan_clients(
        self,
        clients: list[RemoteClientDoc],
        existing: set[str],
        plan: _Plan,
        report: _Report,
        errors: list[FieldError],
    ) -> None:
        seen: set[str] = set()
        for i, client in enumerate(clients):
            if client.name in seen:
                errors.append(FieldError(f"remote_clients.{i}.name", "duplicate name"))
                continue
            seen.add(client.name)
            if client.name in existing:
                report.unchanged.append(_ref("remote-clients", client.name))
                continue
            plan.new_clients.append(client.name)
            report.created.append(_ref("remote-clients", client.name))
            report.warn(
                "remote-clients",
                client.name,
                "created without a usable token (tokens are never exported): delete and "
                "re-create it to get a new token, and give that to its agent",
                "token",
            )

    def _plan_servers(
        self,
        db: Session,
        tenant: Tenant,
        entries: list[dict[str, Any]],
        secrets: dict[str, dict[str, Any]] | None,
        known_clients: set[str],
        allow_remote: bool,
        plan: _Plan,
        report: _Report,
        errors: list[FieldError],
    ) -> None:
        rows = {row.name: row for row in self.servers.list(db, tenant.id)}
        seen: set[str] = set()
        defaults = [i for i, e in enumerate(entries) if e.get("is_default") is True]
        for extra in defaults[1:]:
            errors.append(
                FieldError(f"email_servers.{extra}.is_default", "only one server can be default")
            )
        own_redirect = self.servers.public_base_url.rstrip("/") + "/settings/oauth2code"
        for i, entry in enumerate(entries):
            prefix = f"email_servers.{i}"
            bad = cleartext_secrets(entry)
            if bad:
                errors.extend(
                    FieldError(f"{prefix}.{p}", "secrets belong in the encrypted secrets section")
                    for p in bad
                )
                continue
            name = entry.get("name")
            given = (secrets or {}).get(name, {}) if isinstance(name, str) else {}
            try:
                cfg = EmailServerIn.model_validate(with_secrets(entry, given))
            except ValidationError as exc:
                errors.extend(pydantic_field_errors(exc, ("email_servers", i)))
                continue
            if cfg.name in seen:
                errors.append(FieldError(f"{prefix}.name", "duplicate name"))
                continue
            seen.add(cfg.name)
            cfg.is_default = bool(cfg.is_default)
            row = rows.get(cfg.name)
            stored = ServerSecrets()
            dropped: set[str] = set()
            if row is not None:
                # A stored secret stays only where it was entered (README "Security model").
                before = self.servers.secrets_of(row)
                stored = bound_secrets(row.config, cfg.public(), before)
                for key in SECRET_PATHS:
                    if key not in given and getattr(before, key) and not getattr(stored, key):
                        dropped.add(".".join(SECRET_PATHS[key]))
                        report.warn(
                            "email-servers",
                            cfg.name,
                            f"the stored {'.'.join(SECRET_PATHS[key])} is not kept: the "
                            "configuration now points elsewhere, and a secret stays bound to "
                            "where it was entered; set it again",
                            ".".join(SECRET_PATHS[key]),
                        )
            missing = _missing_secrets(cfg, stored)
            for err in validate_semantics(
                cfg, stored, public_base_url=self.servers.public_base_url
            ):
                if err.field in missing:
                    continue  # reported as a warning below
                errors.append(FieldError(f"{prefix}.{err.field}", err.message))
            ro = cfg.remote_output
            if ro.enabled and not allow_remote:
                errors.append(
                    FieldError(
                        f"{prefix}.remote_output.enabled",
                        "remote clients are not allowed on this installation "
                        "(system setting allow_remote_clients)",
                    )
                )
            elif ro.enabled and ro.remote_client and ro.remote_client not in known_clients:
                errors.append(
                    FieldError(
                        f"{prefix}.remote_output.remote_client", "no remote client of this name"
                    )
                )
            oauth2 = parse_oauth2(given.get("oauth2"), f"{prefix}: oauth2 tokens")
            for path in missing - dropped:
                report.warn(
                    "email-servers",
                    cfg.name,
                    f"{path} is not in the export (exported without a passphrase); "
                    "set it before this server can send",
                    path,
                )
            for key in SECRET_PATHS:
                if (
                    row is not None
                    and key not in given
                    and getattr(stored, key) is not None
                    and key in kept_secrets(cfg, stored)
                ):
                    report.warn(
                        "email-servers",
                        cfg.name,
                        f"{'.'.join(SECRET_PATHS[key])} is not in the export; "
                        "the stored value is kept",
                        ".".join(SECRET_PATHS[key]),
                    )
            auth = cfg.authentication
            if auth.method == "oauth2" and auth.grant == "authorization_code":
                if auth.redirect_uri and auth.redirect_uri != own_redirect:
                    report.warn(
                        "email-servers",
                        cfg.name,
                        f"redirect_uri is {auth.redirect_uri}, not this installation's "
                        f"{own_redirect}: register the new URI with the provider and update "
                        "the configuration before you authorize it here",
                        "authentication.redirect_uri",
                    )
                keeps_tokens = (
                    row is not None and row.tokens_enc and not _identity_changed(row, cfg)
                )
                if oauth2 is None and not keeps_tokens:
                    report.warn(
                        "email-servers",
                        cfg.name,
                        "no OAuth2 refresh token was imported: authorize it on this installation",
                        "oauth2_status",
                    )
            if oauth2 is not None and oauth2["tokens"].get("refresh_token"):
                report.warn(
                    "email-servers",
                    cfg.name,
                    "the OAuth2 refresh token is now in two installations; providers rotate "
                    "refresh tokens, so only one can keep using it: forget the tokens on the "
                    "source (DELETE .../oauth2) or authorize again here",
                    "oauth2_status",
                )
            action = _ServerAction(cfg=cfg, row=row, stored=stored, oauth2=oauth2)
            if row is None:
                report.created.append(_ref("email-servers", cfg.name))
            elif self._same(row, cfg, stored, oauth2, defaults != []):
                report.unchanged.append(_ref("email-servers", cfg.name))
                continue
            else:
                report.overwritten.append(_ref("email-servers", cfg.name))
            plan.servers.append(action)
        if not errors and not defaults and not any(r.is_default for r in rows.values()):
            # A tenant with servers always has one default: the first imported one.
            for action in plan.servers:
                action.cfg.is_default = True
                break

    def _same(
        self,
        row: EmailServer,
        cfg: EmailServerIn,
        stored: ServerSecrets,
        oauth2: dict[str, Any] | None,
        doc_has_default: bool,
    ) -> bool:
        will_be_default = bool(cfg.is_default) or (row.is_default and not doc_has_default)
        if row.config != cfg.public() or row.is_default != will_be_default:
            return False
        current = {k: v for k, v in vars(stored).items() if v is not None}
        if kept_secrets(cfg, stored) != current:
            return False
        if oauth2 is not None:
            return bool(
                oauth2["tokens"] == self.servers.tokens_of(row)
                and oauth2["access_token_expires_at"] == row.access_token_expires_at
                and oauth2["refresh_token_last_used_at"] == row.refresh_token_last_used_at
            )
        return True

    def _apply(self, db: Session, tenant: Tenant, plan: _Plan) -> None:
        now = self.clock()
        for name in plan.new_clients:
            # Not a usable token: the hash of random bytes nobody keeps (the column is
            # unique and required). The administrator issues a real one after the import.
            unusable = hashlib.sha256(os.urandom(32)).hexdigest()
            db.add(
                RemoteClient(tenant_id=tenant.id, name=name, token_hash=unusable, created_at=now)
            )
        db.flush()
        for action in plan.servers:
            self.servers.restore(db, tenant, action.row, action.cfg, action.stored, action.oauth2)


@dataclass
class _ServerAction:
    cfg: EmailServerIn
    row: EmailServer | None
    stored: ServerSecrets
    oauth2: dict[str, Any] | None


@dataclass
class _Plan:
    new_clients: list[str] = field(default_factory=list)
    servers: list[_ServerAction] = field(default_factory=list)


@dataclass
class _Report:
    dry_run: bool
    created: list[dict[str, str]] = field(default_factory=list)
    overwritten: list[dict[str, str]] = field(default_factory=list)
    unchanged: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def warn(self, resource: str, name: str, message: str, field_: str | None = None) -> None:
        item = {"resource": resource, "name": name, "message": message}
        if field_:
            item["field"] = field_
        self.warnings.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "created": self.created,
            "overwritten": self.overwritten,
            "unchanged": self.unchanged,
            "warnings": self.warnings,
        }


def _ref(resource: str, name: str) -> dict[str, str]:
    return {"resource": resource, "name": name}


def _missing_secrets(cfg: EmailServerIn, stored: ServerSecrets) -> set[str]:
    """Secret fields the configuration needs but neither the document nor the row has."""
    have = kept_secrets(cfg, stored)
    missing = set()
    if cfg.authentication.method == "password" and "password" not in have:
        missing.add("authentication.password")
    if cfg.authentication.method == "oauth2" and "client_secret" not in have:
        missing.add("authentication.client_secret")
    if cfg.tls.client_certificate_pem and "client_key_pem" not in have:
        missing.add("tls.client_key_pem")
    return missing


def _identity_changed(row: EmailServer, cfg: EmailServerIn) -> bool:
    old = row.config.get("authentication", {})
    new = cfg.public()["authentication"]
    return any(old.get(k) != new.get(k) for k in _OAUTH_IDENTITY)

"""Export and import of a tenant's configuration (API.md "Export and import").

The document (format version 1)::

    {
      "format": "mailgate-tenant-export", "format_version": 1, "generator": "mailgate 0.1.0",
      "source": {"installation_id": "...", "public_base_url": "...", "tenant": "acme"},
      "exported_at": "2026-01-01T00:00:00Z", "exported_by": "admin",
      "resources": ["email-servers", "remote-clients"],
      "email_servers": [{"name": "DEFAULT", "is_default": true, ...every public field...}],
      "remote_clients": [{"name": "plant-1"}],
      "secrets": null,            # or the passphrase envelope (adapters/passphrase.py)
      "not_exported": [{"resource": "email-servers", "name": "DEFAULT",
                        "field": "authentication.password", "reason": "..."}]
    }

Secrets (passwords, client secrets, client keys, OAuth2 tokens) travel only inside the
envelope, sealed with the rest of the document as associated data: with a passphrase, any edit
of the file is detected. Remote client tokens are stored as hashes and can never be exported.

An import validates the whole document with the rules of the API before it writes anything,
then creates or overwrites by name in the caller's transaction; nothing else is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate import __version__
from mailgate.adapters import passphrase as envelope
from mailgate.adapters.db.tables import (
    AuditEntry,
    EmailServer,
    RemoteClient,
    SystemSetting,
    Tenant,
)
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import BadRequest, Conflict, FieldError, ValidationFailed
from mailgate.schemas.common import ObjectName, StrictModel
from mailgate.schemas.email_server import (
    SECRET_FIELDS,
    EmailServerIn,
    ServerSecrets,
    pydantic_field_errors,
    validate_semantics,
)
from mailgate.services.email_servers import _OAUTH_IDENTITY, EmailServers, kept_secrets
from mailgate.services.remote_clients import remote_clients_allowed

FORMAT = "mailgate-tenant-export"
FORMAT_VERSION = 1
RESOURCES = ("email-servers", "remote-clients")
PASSPHRASE_HEADER = "X-Export-Passphrase"
INSTALLATION_ID_KEY = "installation_id"
AUDIT_EXPORT = "tenant.export"
AUDIT_IMPORT = "tenant.import"

# Where each secret sits in a configuration (for field names in warnings and errors).
SECRET_PATHS = {
    "password": ("authentication", "password"),
    "client_secret": ("authentication", "client_secret"),
    "client_key_pem": ("tls", "client_key_pem"),
}
_NOT_EXPORTED_REASON = "secret: export with a passphrase to include it encrypted"


class ImportRefused(BadRequest):
    title = "Import refused"


class SecretsLocked(BadRequest):
    title = "Secrets cannot be decrypted"


# ---- the document ----------------------------------------------------------------------------


class _RemoteClientDoc(StrictModel):
    name: ObjectName


class _Document(BaseModel):
    """Shape of a format-1 document. Server entries are checked one by one afterwards, so that
    their errors carry the API's field names."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mailgate-tenant-export"]
    format_version: Literal[1]
    generator: str | None = Field(default=None, max_length=200)
    source: dict[str, Any] | None = None
    exported_at: str | None = Field(default=None, max_length=64)
    exported_by: str | None = Field(default=None, max_length=200)
    resources: list[str] | None = None
    email_servers: list[dict[str, Any]] | None = Field(default=None, max_length=1000)
    remote_clients: list[_RemoteClientDoc] | None = Field(default=None, max_length=1000)
    secrets: dict[str, Any] | None = None
    not_exported: list[dict[str, Any]] | None = None


def parse_resources(value: str | None) -> list[str]:
    """``email-servers,remote-clients`` -> a list in canonical order; empty means all."""
    if value is None or not value.strip():
        return list(RESOURCES)
    wanted = {part.strip() for part in value.split(",") if part.strip()}
    unknown = sorted(wanted - set(RESOURCES))
    if unknown:
        raise ValidationFailed.one(
            "resources", f"unknown resource {unknown[0]!r}; choose from {', '.join(RESOURCES)}"
        )
    return [r for r in RESOURCES if r in wanted]


def check_passphrase(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) < envelope.MIN_PASSPHRASE_CHARS:
        raise ValidationFailed.one(
            PASSPHRASE_HEADER,
            f"use a passphrase of at least {envelope.MIN_PASSPHRASE_CHARS} characters",
        )
    return value


def _associated_data(document: dict[str, Any]) -> bytes:
    try:
        return envelope.canonical({k: v for k, v in document.items() if k != "secrets"})
    except ValueError:  # NaN or Infinity smuggled into the JSON
        raise ValidationFailed.one("body", "numbers must be finite") from None


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


# ---- export ----------------------------------------------------------------------------------


@dataclass
class Transfer:
    servers: EmailServers
    clock: Clock

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
            doc["secrets"] = envelope.seal(passphrase, plaintext, _associated_data(doc))
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
        if tokens:
            values["oauth2"] = {
                "tokens": tokens,
                "access_token_expires_at": isoformat(row.access_token_expires_at),
                "refresh_token_last_used_at": isoformat(row.refresh_token_last_used_at),
            }
        return values

    # ---- import ------------------------------------------------------------------------------

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
        doc = _check_document(raw)
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
        self, raw: dict[str, Any], doc: _Document, passphrase: str | None, report: _Report
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
            plaintext = envelope.open_sealed(passphrase, doc.secrets, _associated_data(raw))
        except envelope.EnvelopeError as exc:
            raise SecretsLocked(f"{exc}; nothing changed") from None
        try:
            opened = json.loads(plaintext)
            servers = opened["email-servers"]
            if not isinstance(servers, dict) or not all(
                isinstance(v, dict) for v in servers.values()
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ImportRefused("the secrets section has an unknown layout") from None
        return servers

    def _plan_clients(
        self,
        clients: list[_RemoteClientDoc],
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
            bad = _cleartext_secrets(entry)
            if bad:
                errors.extend(
                    FieldError(f"{prefix}.{p}", "secrets belong in the encrypted secrets section")
                    for p in bad
                )
                continue
            name = entry.get("name")
            given = (secrets or {}).get(name, {}) if isinstance(name, str) else {}
            try:
                cfg = EmailServerIn.model_validate(_with_secrets(entry, given))
            except ValidationError as exc:
                errors.extend(pydantic_field_errors(exc, ("email_servers", i)))
                continue
            if cfg.name in seen:
                errors.append(FieldError(f"{prefix}.name", "duplicate name"))
                continue
            seen.add(cfg.name)
            cfg.is_default = bool(cfg.is_default)
            row = rows.get(cfg.name)
            stored = self.servers.secrets_of(row) if row is not None else ServerSecrets()
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
            oauth2 = _parse_oauth2(given.get("oauth2"), f"{prefix}: oauth2 tokens")
            for path in missing:
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


# ---- helpers -----------------------------------------------------------------------------------


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


def _check_document(raw: Any) -> _Document:
    """Format and version first (so a newer file says so), then the shape."""
    if not isinstance(raw, dict):
        raise ValidationFailed.one("body", "an export document (a JSON object) is expected")
    if raw.get("format") != FORMAT:
        raise ValidationFailed.one("format", f"not a mailgate tenant export (expected {FORMAT!r})")
    version = raw.get("format_version")
    if type(version) is not int:
        raise ValidationFailed.one("format_version", "missing or not an integer")
    if version > FORMAT_VERSION:
        raise ValidationFailed.one(
            "format_version",
            f"this document has format version {version}, written by a newer mailgate; "
            f"this installation reads version {FORMAT_VERSION}. Upgrade mailgate first.",
        )
    if version != FORMAT_VERSION:
        raise ValidationFailed.one(
            "format_version",
            f"unknown format version {version}; this installation reads version {FORMAT_VERSION}",
        )
    try:
        return _Document.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(pydantic_field_errors(exc)) from None


def _cleartext_secrets(entry: dict[str, Any]) -> list[str]:
    found = []
    for section, key in SECRET_PATHS.values():
        part = entry.get(section)
        if isinstance(part, dict) and part.get(key) is not None:
            found.append(f"{section}.{key}")
    return found


def _with_secrets(entry: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The entry with its decrypted secrets in place, so the API's model validates them."""
    out = dict(entry)
    for key, (section, attr) in SECRET_PATHS.items():
        value = given.get(key)
        if value is None:
            continue
        part = out.get(section)
        if part is None:
            part = {}
        if isinstance(part, dict):
            out[section] = {**part, attr: value}
    return out


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


def _parse_oauth2(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        tokens = value["tokens"]
        if not isinstance(tokens, dict):
            raise TypeError
        out: dict[str, Any] = {"tokens": tokens}
        for key in ("access_token_expires_at", "refresh_token_last_used_at"):
            stamp = value.get(key)
            out[key] = datetime.fromisoformat(stamp) if stamp else None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ImportRefused(f"{what} have an unknown layout") from None
    return out


def _identity_changed(row: EmailServer, cfg: EmailServerIn) -> bool:
    old = row.config.get("authentication", {})
    new = cfg.public()["authentication"]
    return any(old.get(k) != new.get(k) for k in _OAUTH_IDENTITY)

"""Manage e-mail server configurations of a tenant (and the system server, tenant ``None``).

Public settings are stored as JSON; secrets are encrypted with the ``SecretCipher`` bound to the
row (``email-server:<id>``), never returned: views carry ``*_set`` flags instead.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Text, bindparam, cast, func, select
from sqlalchemy.orm import Session, object_session

from mailgate.adapters.db.pauses import resume as resume_delivery
from mailgate.adapters.db.tables import (
    EmailServer,
    RemoteClient,
    ServerDelivery,
    ServerLastTest,
    SystemSetting,
    Tenant,
)
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import (
    Conflict,
    FieldError,
    NotFound,
    SecretKeyError,
    ValidationFailed,
)
from mailgate.ports import SecretCipher
from mailgate.schemas.common import STORED
from mailgate.schemas.email_server import (
    DEFAULT_PORTS,
    EmailServerIn,
    ResolvedServer,
    ServerSecrets,
    parse_and_validate,
    validate_semantics,
)
from mailgate.services.caps import check_room

log = logging.getLogger("mailgate.servers")

SYSTEM_SERVER_NAME = "SYSTEM"
# Changing any of these makes stored OAuth2 tokens meaningless: they are forgotten.
_OAUTH_IDENTITY = (
    "method",
    "provider",
    "grant",
    "username",
    "directory_tenant_id",
    "client_id",
    "token_url",
    "scope",
)
_AUTH_FIELDS_BY_METHOD = {
    "none": ("method",),
    "password": ("method", "username"),
    "oauth2": (
        "method",
        "provider",
        "grant",
        "username",
        "directory_tenant_id",
        "client_id",
        "redirect_uri",
        "scope",
        "authorize_url",
        "token_url",
    ),
}


def oauth_identity_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether stored OAuth2 tokens stop fitting the configuration: another app, account or
    scope, or another transport (a Graph token is useless for SMTP and the other way round)."""
    old_auth = old.get("authentication", {})
    new_auth = new.get("authentication", {})
    if any(old_auth.get(k) != new_auth.get(k) for k in _OAUTH_IDENTITY):
        return True
    return bool(old) and old.get("transport", "smtp") != new.get("transport", "smtp")


class ServerRef(NamedTuple):
    """The columns of an e-mail server a submission needs (the settings as stored JSON)."""

    id: int
    name: str
    config_json: str


_REF = select(EmailServer.id, EmailServer.name, cast(EmailServer.config, Text).label("config_json"))
_DEFAULT_REF = _REF.where(
    EmailServer.tenant_id == bindparam("tenant_id"), EmailServer.is_default.is_(True)
)
_NAMED_REF = _REF.where(
    EmailServer.tenant_id == bindparam("tenant_id"), EmailServer.name == bindparam("name")
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class EmailServers:
    def __init__(
        self,
        box: SecretCipher,
        clock: Clock,
        public_base_url: str,
        *,
        max_per_tenant: int = 100,
    ) -> None:
        self.box = box
        self.clock = clock
        self.public_base_url = public_base_url
        self.max_per_tenant = max_per_tenant
        self._configs: dict[tuple[str, str], EmailServerIn] = {}

    # ---- reading ---------------------------------------------------------------------------

    def list(self, db: Session, tenant_id: int | None) -> list[EmailServer]:
        return list(
            db.scalars(
                select(EmailServer)
                .where(_tenant_clause(tenant_id))
                .order_by(EmailServer.is_default.desc(), EmailServer.created_at, EmailServer.id)
            )
        )

    def get(self, db: Session, tenant_id: int | None, name: str) -> EmailServer:
        row = db.scalar(
            select(EmailServer).where(_tenant_clause(tenant_id), EmailServer.name == name)
        )
        if row is None:
            what = "system e-mail server" if tenant_id is None else f"e-mail server {name!r}"
            raise NotFound(f"{what} not found")
        return row

    def get_default(self, db: Session, tenant_id: int) -> EmailServer:
        row = db.scalar(
            select(EmailServer).where(
                EmailServer.tenant_id == tenant_id, EmailServer.is_default.is_(True)
            )
        )
        if row is None:
            raise NotFound("this tenant has no e-mail server yet")
        return row

    def ref(self, conn: Connection, tenant_id: int, name: str | None) -> ServerRef:
        """``get`` (or ``get_default`` for ``name`` None) as one column query: what a
        submission needs, without the row's secrets and tokens."""
        if name is None:
            found = conn.execute(_DEFAULT_REF, {"tenant_id": tenant_id}).first()
        else:
            found = conn.execute(_NAMED_REF, {"tenant_id": tenant_id, "name": name}).first()
        if found is None:
            if name is None:
                raise NotFound("this tenant has no e-mail server yet")
            raise NotFound(f"e-mail server {name!r} not found")
        return ServerRef(found.id, found.name, found.config_json)

    def config_of(self, row: EmailServer | ServerRef) -> EmailServerIn:
        """The validated settings without the secrets (a submission needs only the message
        defaults and limits). For a ``ServerRef`` the result is kept, keyed by the stored
        JSON itself, so an edited configuration is never served from the cache; validating
        (addresses with email-validator) cost more than the rest of a submission."""
        if isinstance(row, EmailServer):
            return EmailServerIn.model_validate({**row.config, "name": row.name}, context=STORED)
        key = (row.name, row.config_json)
        cfg = self._configs.get(key)
        if cfg is None:
            cfg = EmailServerIn.model_validate(
                {**json.loads(row.config_json), "name": row.name}, context=STORED
            )
            if len(self._configs) >= 256:
                self._configs.clear()
            self._configs[key] = cfg
        return cfg

    def secrets_of(self, row: EmailServer) -> ServerSecrets:
        return ServerSecrets.from_dict(self.box.decrypt_json(row.secrets_enc, _ctx(row)))

    def readable_secrets(self, row: EmailServer) -> ServerSecrets | None:
        """The stored secrets, or ``None`` when no configured key opens them (a key was
        dropped from MAILGATE_SECRET_KEY before ``mailgate secrets rotate``): the
        configuration must stay readable and fixable by entering the secrets again."""
        try:
            return self.secrets_of(row)
        except SecretKeyError:
            log.error(
                "the secrets of e-mail server %s cannot be decrypted with the configured keys",
                row.id,
            )
            return None

    def resolve(self, row: EmailServer) -> ResolvedServer:
        return ResolvedServer(
            row.id, row.tenant_id, row.name, self.config_of(row), self.secrets_of(row)
        )

    def tokens_of(self, row: EmailServer) -> dict[str, Any]:
        return self.box.decrypt_json(row.tokens_enc, _ctx(row, "tokens"))

    def store_tokens(self, row: EmailServer, tokens: dict[str, Any]) -> None:
        row.tokens_enc = self.box.encrypt_json(tokens, _ctx(row, "tokens")) if tokens else None

    def view(self, row: EmailServer) -> dict[str, Any]:
        cfg = copy.deepcopy(row.config)
        readable = self.readable_secrets(row)
        secrets = readable or ServerSecrets()
        method = cfg["authentication"].get("method", "none")
        auth = {k: cfg["authentication"].get(k) for k in _AUTH_FIELDS_BY_METHOD[method]}
        if method == "password":
            auth["password_set"] = bool(secrets.password)
        if method == "oauth2":
            auth["client_secret_set"] = bool(secrets.client_secret)
        cfg["authentication"] = auth
        cfg["tls"]["client_key_set"] = bool(secrets.client_key_pem)
        cfg.setdefault("transport", "smtp")  # rows older than the transport choice
        out: dict[str, Any] = {"name": row.name, "is_default": row.is_default, **cfg}
        if readable is None:
            out["secrets_error"] = (
                "the stored secrets cannot be decrypted with the configured keys "
                "(MAILGATE_SECRET_KEY): restore the key they were made with, or enter the "
                "secrets again and save"
            )
        if method == "oauth2":
            out["oauth2_status"] = {
                "state": row.oauth2_state or "not_authorized",
                "access_token_expires_at": isoformat(row.access_token_expires_at),
                "refresh_token_last_used_at": isoformat(row.refresh_token_last_used_at),
                "last_error": row.oauth2_last_error,
                "warning": row.oauth2_warning,
            }
        out["delivery"] = self._delivery(row)
        out["last_test"] = self._last_test(row)
        out["created_at"] = isoformat(row.created_at)
        out["updated_at"] = isoformat(row.updated_at)
        if row.tenant_id is None:
            out.pop("name")
            out.pop("is_default")
            out.pop("remote_output", None)
        return out

    @staticmethod
    def _last_test(row: EmailServer) -> dict[str, Any] | None:
        """The last test of the configuration as saved now (an older one tested other
        settings), or ``None``."""
        db = object_session(row)
        test = db.get(ServerLastTest, row.id) if db is not None and row.id is not None else None
        if test is None or test.at < row.updated_at:
            return None
        return {
            "ok": test.ok,
            "at": isoformat(test.at),
            "mode": test.mode,
            "step": test.step,
            "detail": test.detail,
        }

    def record_test(
        self,
        db: Session,
        server_id: int,
        *,
        ok: bool,
        mode: str,
        steps: Sequence[Mapping[str, Any]],
    ) -> None:
        """Keep the outcome of a test of the stored configuration (one row per server)."""
        failed = next((s for s in steps if not s.get("ok")), None)
        test = db.get(ServerLastTest, server_id) or ServerLastTest(server_id=server_id)
        test.at = self.clock()
        test.ok = ok
        test.mode = mode
        test.step = str(failed["step"])[:32] if failed else None
        test.detail = str(failed.get("detail") or "")[:500] if failed else None
        if db.get(EmailServer, server_id) is not None:  # removed meanwhile: nothing to keep
            db.merge(test)

    @staticmethod
    def _delivery(row: EmailServer) -> dict[str, Any]:
        """Whether the configuration delivers or its provider paused it (README "Provider
        limits, pauses and fairness"); a paused one whose time has passed waits for its probe."""
        db = object_session(row)
        state = db.get(ServerDelivery, row.id) if db is not None and row.id is not None else None
        if state is None or state.paused_until is None:
            return {
                "state": "active",
                "paused_until": None,
                "reason": None,
                "last_reply": state.last_reply if state is not None else None,
            }
        return {
            "state": "paused",
            "paused_until": isoformat(state.paused_until),
            "reason": state.pause_reason,
            "last_reply": state.last_reply,
        }

    def resume(self, db: Session, row: EmailServer) -> bool:
        """End the configuration's pause now; its waiting mail is due at once. ``False``: it
        was not paused."""
        return resume_delivery(db.connection(), row.id, self.clock())

    # ---- writing ---------------------------------------------------------------------------

    def parse(self, data: Any, stored: ServerSecrets | None = None) -> EmailServerIn:
        return parse_and_validate(
            data, stored or ServerSecrets(), public_base_url=self.public_base_url
        )

    def check(self, cfg: EmailServerIn, stored: ServerSecrets | None = None) -> None:
        """Semantic checks for an already parsed model (POST/PUT bodies)."""
        errors = validate_semantics(
            cfg, stored or ServerSecrets(), public_base_url=self.public_base_url
        )
        if errors:
            raise ValidationFailed(errors)

    def create(self, db: Session, tenant: Tenant | None, cfg: EmailServerIn) -> EmailServer:
        tenant_id = tenant.id if tenant else None
        self.check(cfg)
        self._check_remote_output(db, tenant_id, cfg)
        name = SYSTEM_SERVER_NAME if tenant is None else cfg.name
        if tenant is not None:
            self.check_room(db, tenant.id)
        if db.scalar(
            select(EmailServer.id).where(_tenant_clause(tenant_id), EmailServer.name == name)
        ):
            raise Conflict(f"an e-mail server named {name!r} exists already")
        count = db.scalar(
            select(func.count()).where(_tenant_clause(tenant_id)).select_from(EmailServer)
        )
        now = self.clock()
        row = EmailServer(
            tenant_id=tenant_id,
            name=name,
            is_default=tenant is not None and (count == 0 or bool(cfg.is_default)),
            config=cfg.public(),
            created_at=now,
            updated_at=now,
        )
        if cfg.authentication.method == "oauth2":
            row.oauth2_state = "not_authorized"
        db.add(row)
        db.flush()
        if row.is_default:
            self._make_default(db, row)
        self._store_secrets(row, cfg, ServerSecrets())
        db.flush()
        return row

    def replace(self, db: Session, row: EmailServer, cfg: EmailServerIn) -> EmailServer:
        """Full replace (PUT). Omitted secrets keep their stored value."""
        readable = self.readable_secrets(row)
        stored = readable or ServerSecrets()  # unreadable: must be re-entered
        self.check(cfg, _for_validation(row, readable) if readable is not None else stored)
        self._check_remote_output(db, row.tenant_id, cfg)
        if row.tenant_id is not None and cfg.name != row.name:
            self._rename(db, row, cfg.name)
        if row.tenant_id is not None:
            self._apply_default_flag(db, row, cfg.is_default)
        old_config = row.config
        row.config = cfg.public()
        # Validated with the stored secrets (a re-pointed configuration is not refused);
        # stored with those that still belong to it: a dropped one shows as not set.
        self._store_secrets(row, cfg, bound_secrets(old_config, row.config, stored))
        new_auth = row.config["authentication"]
        if oauth_identity_changed(old_config, row.config):
            self._forget_tokens(row)
            row.oauth2_state = "not_authorized" if new_auth["method"] == "oauth2" else None
        elif (
            row.oauth2_state == "error"
            and cfg.secrets().get("client_secret", stored.client_secret) != stored.client_secret
        ):
            # A new client secret is the fix for invalid_client / an expired secret: let the
            # next token request try again instead of waiting for a manual refresh.
            row.oauth2_state = "authorized" if row.tokens_enc else "not_authorized"
            row.oauth2_last_error = None
            row.oauth2_warning = None
            row.oauth2_retry_at = None
        row.updated_at = self.clock()
        db.flush()
        return row

    def patch(self, db: Session, row: EmailServer, patch: Any) -> EmailServer:
        if not isinstance(patch, dict):
            raise ValidationFailed.one("body", "a JSON object (merge patch) is expected")
        if row.tenant_id is not None and "name" in patch and patch["name"] is None:
            # A merge-patch null removes the member, and the model would then fall back to
            # its default name "DEFAULT": a silent rename. A name cannot be removed.
            raise ValidationFailed.one("name", "a configuration keeps a name; send a new one")
        current = {"name": row.name, **copy.deepcopy(row.config)}
        merged = merge_patch(current, patch)
        if row.tenant_id is None:
            merged.pop("name", None)
        cfg = self.parse(
            merged, _for_validation(row, self.readable_secrets(row) or ServerSecrets())
        )
        if "is_default" not in patch:
            cfg.is_default = None
        return self.replace(db, row, cfg)

    def delete(self, db: Session, row: EmailServer) -> None:
        if row.is_default and row.tenant_id is not None:
            others = db.scalar(
                select(func.count())
                .select_from(EmailServer)
                .where(EmailServer.tenant_id == row.tenant_id, EmailServer.id != row.id)
            )
            if others:
                raise Conflict(
                    f"{row.name!r} is the tenant's default e-mail server; make another server "
                    "the default (is_default: true) before deleting it"
                )
        db.delete(row)
        db.flush()

    def restore(
        self,
        db: Session,
        tenant: Tenant,
        row: EmailServer | None,
        cfg: EmailServerIn,
        stored: ServerSecrets,
        oauth2: dict[str, Any] | None,
    ) -> EmailServer:
        """Create (``row`` None) or overwrite a configuration from a validated import.

        Unlike ``create``/``replace`` a missing secret is allowed: the import warns about it.
        ``oauth2`` (tokens and their timestamps from an export) replaces the stored tokens;
        without it tokens are kept unless the OAuth2 identity changed, as in ``replace``.
        """
        now = self.clock()
        old_config: dict[str, Any] = {}
        if row is None:
            self.check_room(db, tenant.id)
            row = EmailServer(
                tenant_id=tenant.id,
                name=cfg.name,
                is_default=False,
                config=cfg.public(),
                created_at=now,
                updated_at=now,
            )
            db.add(row)
            db.flush()
        else:
            old_config = row.config
            row.config = cfg.public()
            row.updated_at = now
        self._store_secrets(row, cfg, stored)
        new_auth = row.config["authentication"]
        if oauth2 is not None:
            self._forget_tokens(row)
            self.store_tokens(row, oauth2.get("tokens") or {})
            row.access_token_expires_at = oauth2.get("access_token_expires_at")
            row.refresh_token_last_used_at = oauth2.get("refresh_token_last_used_at")
        elif oauth_identity_changed(old_config, row.config):
            self._forget_tokens(row)
            row.oauth2_state = None
        if new_auth["method"] != "oauth2":
            row.oauth2_state = None
        elif oauth2 is not None or row.oauth2_state is None:
            row.oauth2_state = "authorized" if row.tokens_enc else "not_authorized"
        if cfg.is_default:
            self._make_default(db, row)
        db.flush()
        return row

    # ---- helpers ---------------------------------------------------------------------------

    def check_room(self, db: Session, tenant_id: int) -> None:
        check_room(
            db,
            EmailServer,
            tenant_id,
            self.max_per_tenant,
            "e-mail server configurations",
            "MAILGATE_MAX_SERVERS_PER_TENANT",
        )

    def _store_secrets(self, row: EmailServer, cfg: EmailServerIn, stored: ServerSecrets) -> None:
        keep = kept_secrets(cfg, stored)
        row.secrets_enc = self.box.encrypt_json(keep, _ctx(row)) if keep else None

    def _forget_tokens(self, row: EmailServer) -> None:
        row.tokens_enc = None
        row.access_token_expires_at = None
        row.refresh_token_last_used_at = None
        row.oauth2_last_error = None
        row.oauth2_warning = None
        row.oauth2_retry_at = None

    def _rename(self, db: Session, row: EmailServer, new_name: str) -> None:
        clash = db.scalar(
            select(EmailServer.id).where(
                EmailServer.tenant_id == row.tenant_id, EmailServer.name == new_name
            )
        )
        if clash is not None:
            raise Conflict(f"an e-mail server named {new_name!r} exists already")
        row.name = new_name

    def _apply_default_flag(self, db: Session, row: EmailServer, flag: bool | None) -> None:
        if flag is True and not row.is_default:
            self._make_default(db, row)
        elif flag is False and row.is_default:
            raise Conflict(
                "a tenant always has one default e-mail server; set is_default: true on "
                "another server instead"
            )

    def _make_default(self, db: Session, row: EmailServer) -> None:
        for other in db.scalars(
            select(EmailServer).where(
                EmailServer.tenant_id == row.tenant_id,
                EmailServer.id != row.id,
                EmailServer.is_default.is_(True),
            )
        ):
            other.is_default = False
        row.is_default = True

    def _check_remote_output(self, db: Session, tenant_id: int | None, cfg: EmailServerIn) -> None:
        ro = cfg.remote_output
        if not ro.enabled:
            return
        errors: list[FieldError] = []
        allowed = db.get(SystemSetting, "allow_remote_clients")
        if tenant_id is None:
            errors.append(FieldError("remote_output.enabled", "not available for system mail"))
        elif not (allowed and allowed.value is True):
            errors.append(
                FieldError(
                    "remote_output.enabled",
                    "remote clients are not allowed on this installation "
                    "(system setting allow_remote_clients)",
                )
            )
        elif ro.remote_client and not db.scalar(
            select(RemoteClient.id).where(
                RemoteClient.tenant_id == tenant_id, RemoteClient.name == ro.remote_client
            )
        ):
            errors.append(
                FieldError("remote_output.remote_client", "no remote client of this name")
            )
        if errors:
            raise ValidationFailed(errors)


def kept_secrets(cfg: EmailServerIn, stored: ServerSecrets) -> dict[str, str]:
    """The secrets a configuration keeps: those given in ``cfg``, else the stored ones, and
    only those its settings use (a password is dropped when the method becomes oauth2)."""
    given = cfg.secrets()
    method = cfg.authentication.method
    keep: dict[str, str] = {}
    if method == "password":
        value = given.get("password", stored.password)
        if value:
            keep["password"] = value
    if method == "oauth2":
        value = given.get("client_secret", stored.client_secret)
        if value:
            keep["client_secret"] = value
    if cfg.tls.client_certificate_pem:
        value = given.get("client_key_pem", stored.client_key_pem)
        if value:
            keep["client_key_pem"] = value
    return keep


_DROPPED = "(dropped: enter it again)"


def _for_validation(row: EmailServer, stored: ServerSecrets) -> ServerSecrets:
    """The secrets an update is validated with. A password or client secret the
    configuration's method needs but does not have was dropped when it was re-pointed (a
    new configuration cannot be saved without it): the update may go on (the answer says
    ``password_set: false``) and the stored value stays empty - this is never stored."""
    method = (row.config.get("authentication") or {}).get("method")
    return ServerSecrets(
        password=stored.password or (_DROPPED if method == "password" else None),
        client_secret=stored.client_secret or (_DROPPED if method == "oauth2" else None),
        client_key_pem=stored.client_key_pem,
    )


def smtp_destination(config: dict[str, Any]) -> tuple[str, str, str, int]:
    """Where a configuration's SMTP password and TLS client key go: transport, protocol,
    host (case-insensitive) and port (the protocol's default when unset)."""
    protocol = str(config.get("protocol") or "smtp")
    port = config.get("port") or DEFAULT_PORTS.get(protocol, 587)
    host = str(config.get("host") or "").strip().strip("[]").rstrip(".").lower()
    return str(config.get("transport") or "smtp"), protocol, host, int(port)


def oauth2_destination(config: dict[str, Any]) -> tuple[Any, ...]:
    """Where a configuration's OAuth2 client secret goes: the provider and its endpoints."""
    auth = config.get("authentication") or {}
    return tuple(
        auth.get(k) for k in ("provider", "directory_tenant_id", "authorize_url", "token_url")
    )


def bound_secrets(old: dict[str, Any], new: dict[str, Any], stored: ServerSecrets) -> ServerSecrets:
    """The stored secrets that still belong to ``new`` (both public configurations).

    A secret is bound to where it was entered: the password and the TLS client key to the
    SMTP server (protocol, host, port), the client secret to the OAuth2 provider and its
    endpoints. Re-pointing a configuration without sending the secret again drops it, so
    that nobody who may edit a configuration can make mailgate hand the secret to a server
    of their choosing (README "Security model")."""
    same_smtp = smtp_destination(old) == smtp_destination(new)
    same_oauth2 = oauth2_destination(old) == oauth2_destination(new)
    return ServerSecrets(
        password=stored.password if same_smtp else None,
        client_secret=stored.client_secret if same_oauth2 else None,
        client_key_pem=stored.client_key_pem if same_smtp else None,
    )


def secret_context(row: EmailServer, part: str = "secrets") -> str:
    """The associated data that binds a ciphertext to its row (and to its part of it)."""
    return f"email-server:{row.id}:{part}"


_ctx = secret_context


def _tenant_clause(tenant_id: int | None) -> Any:
    if tenant_id is None:
        return EmailServer.tenant_id.is_(None)
    return EmailServer.tenant_id == tenant_id

"""The configuration a test runs against: the stored one, or an unsaved one validated like a
save (README "Test an e-mail server": a body may carry a config to test before saving)."""

from __future__ import annotations

from typing import Any

from mailgate.domain.errors import FieldError, ValidationFailed
from mailgate.schemas.email_server import ResolvedServer, ServerSecrets
from mailgate.services.email_servers import EmailServers


def resolve_for_test(
    servers: EmailServers,
    stored: ResolvedServer | None,
    unsaved: Any,
    *,
    system: bool,
) -> ResolvedServer:
    """The server to test: the stored one, or an unsaved ``config`` validated like a save.

    Stored secrets fill in what the unsaved config omits, but only while it points at the
    same destination (transport, and for SMTP the host): a stored password is never sent to
    a different server.
    """
    if unsaved is None:
        if stored is None:
            raise ValidationFailed.one("config", "this server does not exist; send a config")
        return stored
    if not isinstance(unsaved, dict):
        raise ValidationFailed.one("config", "a JSON object (an e-mail server config) is expected")
    data = dict(unsaved)
    if system:
        data.pop("name", None)
    elif stored is not None:
        data.setdefault("name", stored.name)
    secrets = stored.secrets if stored is not None else ServerSecrets()
    same_host = (
        stored is not None
        and str(data.get("transport") or "smtp") == stored.config.transport
        and str(data.get("host") or "").strip().lower() == (stored.config.host or "").lower()
    )
    usable = secrets if same_host else ServerSecrets()
    try:
        cfg = servers.parse(data, usable)
    except ValidationFailed as exc:
        errors = [FieldError(f"config.{e.field}", e.message) for e in exc.errors]
        if not same_host and stored is not None:
            errors = [
                FieldError(
                    e.field,
                    e.message + " (stored secrets are only reused for the same host)"
                    if e.field.startswith("config.authentication.password")
                    or e.field.startswith("config.tls.client_key_pem")
                    else e.message,
                )
                for e in errors
            ]
        raise ValidationFailed(errors) from None
    given = cfg.secrets()
    merged = ServerSecrets(
        password=given.get("password", usable.password),
        client_secret=given.get("client_secret", usable.client_secret),
        client_key_pem=given.get("client_key_pem", usable.client_key_pem),
    )
    return ResolvedServer(
        stored.id if stored else 0,
        stored.tenant_id if stored else None,
        cfg.name,
        cfg,
        merged,
    )

"""The configuration a test runs against: the stored one, or an unsaved one validated like a
save (README "Test an e-mail server": a body may carry a config to test before saving)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mailgate.domain.errors import FieldError, ValidationFailed
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.services.email_servers import (
    EmailServers,
    bound_secrets,
    oauth2_destination,
    oauth_identity_changed,
    smtp_destination,
)


def resolve_for_test(
    servers: EmailServers,
    stored: ResolvedServer | None,
    unsaved: Any,
    *,
    system: bool,
) -> ResolvedServer:
    """The server to test: the stored one, or an unsaved ``config`` validated like a save.

    Stored secrets fill in what the unsaved config omits, but only for exactly the stored
    destination (``email_servers.bound_secrets``: the SMTP server's protocol, host and port;
    the OAuth2 provider and endpoints); stored tokens likewise: a stored secret or token is
    never sent to a different server.
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
    usable = ServerSecrets()
    if stored is not None:
        # Only for exactly the stored destination (README "Security model"): the password
        # and client key for the same SMTP server, the client secret for the same token
        # endpoint. Parsed once without secrets to learn where the unsaved config points.
        try:
            target: dict[str, Any] | None = EmailServerIn.model_validate(data).public()
        except ValidationError:
            target = None  # parse() below names what is wrong
        if target is not None:
            usable = bound_secrets(stored.config.public(), target, secrets)
    try:
        cfg = servers.parse(data, usable)
    except ValidationFailed as exc:
        errors = [FieldError(f"config.{e.field}", e.message) for e in exc.errors]
        if stored is not None and usable != secrets:
            errors = [
                FieldError(
                    e.field,
                    e.message + " (stored secrets are only used for the server they were "
                    "entered for)"
                    if e.field.startswith(
                        (
                            "config.authentication.password",
                            "config.authentication.client_secret",
                            "config.tls.client_key_pem",
                        )
                    )
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
    # The stored OAuth2 tokens (found by the id) only for the same destination and
    # authorization; otherwise the test runs as a new configuration would, without them.
    same = (
        stored is not None
        and smtp_destination(stored.config.public()) == smtp_destination(cfg.public())
        and not oauth_identity_changed(stored.config.public(), cfg.public())
        and oauth2_destination(stored.config.public()) == oauth2_destination(cfg.public())
    )
    return ResolvedServer(
        stored.id if stored is not None and same else 0,
        stored.tenant_id if stored else None,
        cfg.name,
        cfg,
        merged,
    )

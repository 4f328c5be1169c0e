"""The e-mail server configuration: its schema, validation, and the split into a
public part (stored as JSON, returned by the API) and secrets (encrypted, write-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import Field, SecretStr, model_validator

from mailgate.domain.errors import FieldError, ValidationFailed
from mailgate.schemas.common import (
    EmailAddress,
    HeaderName,
    HeaderText,
    Hostname,
    ObjectName,
    SingleLine,
    StrictModel,
)
from mailgate.schemas.tls import client_certificate_problem

Protocol = Literal["smtp", "smtps"]
TransportName = Literal["smtp", "microsoft_graph", "gmail_api"]
"""How a configuration's mail leaves (README "Delivery transports"): SMTP, or an HTTP mail
API for mailboxes where SMTP AUTH is off."""
StartTls = Literal["required", "opportunistic", "disabled"]
AuthMethod = Literal["none", "password", "oauth2"]
Provider = Literal["microsoft", "google", "custom"]
Grant = Literal["authorization_code", "client_credentials"]

DEFAULT_PORTS: dict[str, int] = {"smtp": 587, "smtps": 465}
API_TRANSPORTS: dict[str, str] = {"microsoft_graph": "microsoft", "gmail_api": "google"}
"""The HTTP mail API transports and the OAuth2 provider each one needs."""
SMTP_ONLY_FIELDS = ("protocol", "host", "port", "starttls", "tls", "helo_name")
"""Settings only the SMTP transport uses; the API transports ignore them."""
SECRET_FIELDS = ("password", "client_secret", "client_key_pem")
# Read-only fields a client may echo back from a GET; accepted and ignored on input.
_READ_ONLY = {
    "id",
    "created_at",
    "updated_at",
    "password_set",
    "client_secret_set",
    "client_key_set",
    "oauth2_status",
    "secrets_error",
    "delivery",
    "last_test",
}
MAX_PEM = 64 * 1024


def _drop_read_only(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in _READ_ONLY}
    return data


class TlsSettings(StrictModel):
    verify: bool = True
    ca_certificates_pem: str | None = Field(default=None, max_length=MAX_PEM)
    client_certificate_pem: str | None = Field(default=None, max_length=MAX_PEM)
    client_key_pem: SecretStr | None = Field(default=None, max_length=MAX_PEM)

    _strip = model_validator(mode="before")(_drop_read_only)


class Timeouts(StrictModel):
    connect_s: float = Field(default=15, gt=0, le=300)
    command_s: float = Field(default=60, gt=0, le=600)
    data_done_s: float = Field(
        default=600,
        gt=0,
        le=3600,
        description="How long to wait for the reply to the end of a message (the final "
        "dot): RFC 5321 4.5.3.2.6 gives it 10 minutes. No reply in time means the server "
        "may have the message: it is retried only after a long delay, flagged.",
    )


class Limits(StrictModel):
    """Held across every worker process of the installation (README "Provider limits, pauses
    and fairness"); ``LIMIT_PRESETS`` has the providers' numbers."""

    max_connections: int = Field(default=3, ge=1, le=50)
    messages_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    max_message_bytes: int | None = Field(default=None, ge=1024, le=1024 * 1024 * 1024)
    recipients_per_day: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="recipients in any 24 hours (Exchange Online: 10,000 per mailbox)",
    )


LIMIT_PRESETS: dict[str, dict[str, Any]] = {
    "microsoft_365": {
        "label": "Microsoft 365 / Exchange Online",
        "limits": {"max_connections": 3, "messages_per_minute": 30, "recipients_per_day": 10_000},
        "source": "https://learn.microsoft.com/en-us/office365/servicedescriptions/"
        "exchange-online-service-description/exchange-online-limits#sending-limits-1",
    },
    "google_workspace": {
        "label": "Google Workspace (Gmail)",
        "limits": {"max_connections": 3, "messages_per_minute": 60, "recipients_per_day": 10_000},
        "source": "https://support.google.com/a/answer/166852",
    },
    "gmail": {
        "label": "Gmail (personal account)",
        "limits": {"max_connections": 2, "messages_per_minute": 20, "recipients_per_day": 500},
        "source": "https://support.google.com/mail/answer/22839",
    },
}
"""Limits for well-known providers, one place for the UI and the documentation (served at
``GET /api/v1/limit-presets``). Microsoft's numbers are its documented per-mailbox limits
(30 messages a minute, 10,000 recipients a day, 3 concurrent SMTP connections); Google
documents recipients per day (10,000 for Workspace accounts, 500 for personal Gmail), not a
rate or a connection limit, so those two are conservative choices of ours."""


class Authentication(StrictModel):
    method: AuthMethod = "none"
    username: SingleLine | None = Field(default=None, max_length=320)
    password: SecretStr | None = Field(default=None, max_length=1024)
    provider: Provider | None = None
    grant: Grant | None = None
    directory_tenant_id: SingleLine | None = Field(default=None, max_length=200)
    client_id: SingleLine | None = Field(default=None, max_length=500)
    client_secret: SecretStr | None = Field(default=None, max_length=2048)
    redirect_uri: SingleLine | None = Field(default=None, max_length=2000)
    scope: SingleLine | None = Field(default=None, max_length=2000)
    authorize_url: SingleLine | None = Field(default=None, max_length=2000)
    token_url: SingleLine | None = Field(default=None, max_length=2000)

    _strip = model_validator(mode="before")(_drop_read_only)


class MessageDefaults(StrictModel):
    from_address: EmailAddress | None = None
    from_name: HeaderText | None = Field(default=None, max_length=200)
    reply_to: EmailAddress | None = None
    envelope_from: EmailAddress | None = None
    cc: list[EmailAddress] = Field(default_factory=list, max_length=100)
    bcc: list[EmailAddress] = Field(default_factory=list, max_length=100)
    subject: HeaderText | None = None
    body_text: str | None = Field(default=None, max_length=1024 * 1024)
    body_html: str | None = Field(default=None, max_length=1024 * 1024)
    headers: dict[HeaderName, HeaderText] = Field(default_factory=dict, max_length=50)


class RemoteOutput(StrictModel):
    enabled: bool = False
    remote_client: ObjectName | None = None


def _blank_host_of_api_transport(data: Any) -> Any:
    """An API transport has no SMTP host: a form's empty ``host`` means none."""
    if (
        isinstance(data, dict)
        and data.get("transport") in API_TRANSPORTS
        and isinstance(data.get("host"), str)
        and not data["host"].strip()
    ):
        return {**data, "host": None}
    return data


class EmailServerIn(StrictModel):
    """What a client sends (POST/PUT, or the merged document of a PATCH)."""

    name: ObjectName = "DEFAULT"
    is_default: bool | None = None
    transport: TransportName = "smtp"
    protocol: Protocol = "smtp"
    host: Hostname | None = None
    """Required for ``transport: smtp`` (``validate_semantics``)."""
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: StartTls = "required"
    tls: TlsSettings = Field(default_factory=TlsSettings)
    helo_name: Hostname | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: Limits = Field(default_factory=Limits)
    authentication: Authentication = Field(default_factory=Authentication)
    message_defaults: MessageDefaults = Field(default_factory=MessageDefaults)
    remote_output: RemoteOutput = Field(default_factory=RemoteOutput)

    _strip = model_validator(mode="before")(_drop_read_only)
    _no_host = model_validator(mode="before")(_blank_host_of_api_transport)

    @property
    def via_api(self) -> bool:
        """Sent through an HTTP mail API (Graph, Gmail) rather than SMTP."""
        return self.transport in API_TRANSPORTS

    def describe(self) -> str:
        """Where mail goes, for people: ``smtp://host:587 (STARTTLS required)`` or
        ``Microsoft Graph as sender@contoso.com``."""
        if self.via_api:
            return f"{_API_TITLES[self.transport]} as {self.authentication.username or '?'}"
        security = "implicit TLS" if self.protocol == "smtps" else f"STARTTLS {self.starttls}"
        port = self.port or DEFAULT_PORTS[self.protocol]
        return f"{self.protocol}://{self.host}:{port} ({security})"

    def secrets(self) -> dict[str, str]:
        """The write-only values present in this input (absent ones are not in the dict)."""
        out: dict[str, str] = {}
        if self.authentication.password is not None:
            out["password"] = self.authentication.password.get_secret_value()
        if self.authentication.client_secret is not None:
            out["client_secret"] = self.authentication.client_secret.get_secret_value()
        if self.tls.client_key_pem is not None:
            out["client_key_pem"] = self.tls.client_key_pem.get_secret_value()
        return out

    def public(self) -> dict[str, Any]:
        """The stored, returnable part: everything but secrets and ``name``/``is_default``."""
        data = self.model_dump(
            mode="json",
            exclude={
                "name": True,
                "is_default": True,
                "authentication": {"password", "client_secret"},
                "tls": {"client_key_pem"},
            },
        )
        if data["port"] is None:
            data["port"] = DEFAULT_PORTS[self.protocol]
        return data


@dataclass(frozen=True)
class ServerSecrets:
    password: str | None = None
    client_secret: str | None = None
    client_key_pem: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerSecrets:
        return cls(**{k: data.get(k) for k in SECRET_FIELDS})


@dataclass(frozen=True)
class ResolvedServer:
    """Everything a transport needs: the validated settings and the decrypted secrets."""

    id: int
    tenant_id: int | None
    name: str
    config: EmailServerIn
    secrets: ServerSecrets

    @property
    def remote_client(self) -> str | None:
        """The remote client (agent) that delivers this configuration's mail, if any.
        System mail never goes through an agent."""
        ro = self.config.remote_output
        return ro.remote_client if ro.enabled and self.tenant_id is not None else None


def _check_url(value: str | None, field: str, errors: list[FieldError]) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        errors.append(FieldError(field, "must be an absolute http(s) URL"))


def _load_certs(pem: str, field: str, errors: list[FieldError]) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        errors.append(
            FieldError(field, "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")
        )
        return []
    return certs


def validate_semantics(
    cfg: EmailServerIn, stored: ServerSecrets, *, public_base_url: str
) -> list[FieldError]:
    """Rules across fields that pydantic's per-field checks cannot express.

    ``stored`` are the secrets already saved (an update that omits one keeps it).
    """
    errors: list[FieldError] = []
    if cfg.transport == "smtp" and cfg.host is None:
        errors.append(FieldError("host", "required for transport smtp"))
    tls = cfg.tls
    if tls.ca_certificates_pem:
        _load_certs(tls.ca_certificates_pem, "tls.ca_certificates_pem", errors)
    key_pem = tls.client_key_pem.get_secret_value() if tls.client_key_pem else stored.client_key_pem
    if tls.client_certificate_pem:
        certs = _load_certs(tls.client_certificate_pem, "tls.client_certificate_pem", errors)
        if not key_pem:
            errors.append(FieldError("tls.client_key_pem", "a client certificate needs its key"))
        elif certs:
            try:
                key = serialization.load_pem_private_key(key_pem.encode(), password=None)
            except (ValueError, TypeError):
                errors.append(
                    FieldError("tls.client_key_pem", "not an unencrypted PEM private key")
                )
            else:
                cert_pub = (
                    certs[0]
                    .public_key()
                    .public_bytes(
                        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                )
                key_pub = key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                if cert_pub != key_pub:
                    errors.append(
                        FieldError("tls.client_key_pem", "the key does not match the certificate")
                    )
                elif problem := client_certificate_problem(tls.client_certificate_pem, key_pem):
                    # Exactly as delivery loads them (schemas/tls.py).
                    errors.append(FieldError("tls.client_key_pem", problem))
    elif tls.client_key_pem:
        errors.append(
            FieldError("tls.client_certificate_pem", "a client key needs its certificate")
        )

    auth = cfg.authentication
    if auth.method == "password":
        if not auth.username:
            errors.append(FieldError("authentication.username", "required for password login"))
        if auth.password is None and not stored.password:
            errors.append(FieldError("authentication.password", "required for password login"))
    elif auth.method == "oauth2":
        errors.extend(_validate_oauth2(auth, stored, public_base_url, cfg.transport))
    errors.extend(_validate_api_transport(cfg))

    ro = cfg.remote_output
    if ro.enabled and not ro.remote_client:
        errors.append(
            FieldError("remote_output.remote_client", "name the remote client that delivers")
        )
    return errors


_API_NAMES = {"microsoft_graph": "Microsoft Graph", "gmail_api": "the Gmail API"}
_API_TITLES = {"microsoft_graph": "Microsoft Graph", "gmail_api": "Gmail API"}


def _validate_api_transport(cfg: EmailServerIn) -> list[FieldError]:
    """An HTTP mail API takes only OAuth2 tokens of its own provider (README "Delivery
    transports"), and is reached directly: remote agents speak SMTP only."""
    provider = API_TRANSPORTS.get(cfg.transport)
    if provider is None:
        return []
    errors: list[FieldError] = []
    auth = cfg.authentication
    what = _API_NAMES[cfg.transport]
    if auth.method != "oauth2":
        errors.append(FieldError("authentication.method", f"{what} needs OAuth2 (method 'oauth2')"))
    elif auth.provider != provider:
        errors.append(FieldError("authentication.provider", f"{what} needs provider '{provider}'"))
    if cfg.remote_output.enabled:
        errors.append(
            FieldError(
                "remote_output.enabled",
                f"remote clients deliver over SMTP only; {what} is reached directly",
            )
        )
    return errors


def _validate_oauth2(
    auth: Authentication, stored: ServerSecrets, public_base_url: str, transport: str = "smtp"
) -> list[FieldError]:
    errors: list[FieldError] = []
    if auth.provider is None:
        errors.append(FieldError("authentication.provider", "choose microsoft, google or custom"))
    if auth.grant is None:
        errors.append(
            FieldError("authentication.grant", "choose authorization_code or client_credentials")
        )
    if not auth.username:
        errors.append(
            FieldError(
                "authentication.username",
                "the mailbox that XOAUTH2 authenticates as"
                if transport == "smtp"
                else "the mailbox that sends",
            )
        )
    if not auth.client_id:
        errors.append(FieldError("authentication.client_id", "required for OAuth2"))
    if auth.client_secret is None and not stored.client_secret:
        errors.append(FieldError("authentication.client_secret", "required for OAuth2"))
    if auth.provider == "microsoft" and not auth.directory_tenant_id:
        errors.append(
            FieldError(
                "authentication.directory_tenant_id",
                "the Entra ID (Azure AD) directory tenant id, or 'organizations'",
            )
        )
    if auth.provider == "google" and auth.grant == "client_credentials":
        errors.append(
            FieldError(
                "authentication.grant",
                "Google issues no Gmail tokens by client credentials; use authorization_code",
            )
        )
    if auth.provider == "custom":
        if not auth.token_url:
            errors.append(FieldError("authentication.token_url", "required for a custom provider"))
        if auth.grant == "authorization_code" and not auth.authorize_url:
            errors.append(
                FieldError("authentication.authorize_url", "required for a custom provider")
            )
        if not auth.scope:
            errors.append(FieldError("authentication.scope", "required for a custom provider"))
    for name in ("redirect_uri", "authorize_url", "token_url"):
        _check_url(getattr(auth, name), f"authentication.{name}", errors)
    if auth.grant == "authorization_code" and auth.redirect_uri is None:
        auth.redirect_uri = public_base_url.rstrip("/") + "/settings/oauth2code"
    return errors


def parse_and_validate(data: Any, stored: ServerSecrets, *, public_base_url: str) -> EmailServerIn:
    """Parse client input; raise ``ValidationFailed`` naming every bad field."""
    from pydantic import ValidationError

    try:
        cfg = EmailServerIn.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(pydantic_field_errors(exc)) from None
    errors = validate_semantics(cfg, stored, public_base_url=public_base_url)
    if errors:
        raise ValidationFailed(errors)
    return cfg


def pydantic_field_errors(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[FieldError]:
    """Turn pydantic errors into ``FieldError``s with dotted field names."""
    out: list[FieldError] = []
    for err in exc.errors():
        loc = [str(p) for p in (*prefix, *err["loc"]) if p not in ("body",)]
        # Annotated validators add a function name to the location; drop it.
        loc = [p for p in loc if not p.startswith("function-")]
        msg = err["msg"].removeprefix("Value error, ")
        out.append(FieldError(".".join(loc) or "body", msg))
    return out

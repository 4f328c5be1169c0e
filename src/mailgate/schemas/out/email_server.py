"""An e-mail server configuration as the API shows it, and the result of its test.

The view is the stored configuration without its secrets: each secret is replaced by a
``*_set`` flag, and ``authentication`` carries only the members of its ``method``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict
from pydantic.json_schema import SkipJsonSchema

from mailgate.domain.oauth2 import OAuth2State
from mailgate.schemas.email_server import Grant, Protocol, Provider, StartTls, TransportName
from mailgate.schemas.out.base import OutModel, Timestamp, sometimes


class TlsOut(OutModel):
    verify: bool
    ca_certificates_pem: str | None
    client_certificate_pem: str | None
    client_key_set: bool


class TimeoutsOut(OutModel):
    connect_s: float
    command_s: float
    data_done_s: float


class LimitsOut(OutModel):
    max_connections: int
    messages_per_minute: int | None
    max_message_bytes: int | None
    recipients_per_day: int | None = None


class PresetLimitsOut(OutModel):
    max_connections: int
    messages_per_minute: int | None
    recipients_per_day: int | None


class LimitPresetOut(OutModel):
    name: str
    label: str
    limits: PresetLimitsOut
    source: str = Field(description="the provider's document the numbers come from")


class LimitPresetsOut(OutModel):
    items: list[LimitPresetOut]


class NoAuthOut(OutModel):
    method: Literal["none"]


class PasswordAuthOut(OutModel):
    method: Literal["password"]
    username: str | None
    password_set: bool


class OAuth2AuthOut(OutModel):
    method: Literal["oauth2"]
    provider: Provider | None
    grant: Grant | None
    username: str | None
    directory_tenant_id: str | None
    client_id: str | None
    redirect_uri: str | None
    scope: str | None
    authorize_url: str | None
    token_url: str | None
    client_secret_set: bool


AuthenticationOut = Annotated[
    NoAuthOut | PasswordAuthOut | OAuth2AuthOut, Field(discriminator="method")
]


class MessageDefaultsOut(OutModel):
    from_address: str | None
    from_name: str | None
    reply_to: str | None
    envelope_from: str | None
    cc: list[str]
    bcc: list[str]
    subject: str | None
    body_text: str | None
    body_html: str | None
    headers: dict[str, str]


class RemoteOutputOut(OutModel):
    enabled: bool
    remote_client: str | None


class OAuth2StatusOut(OutModel):
    state: Annotated[OAuth2State, Strict(False)]
    access_token_expires_at: Timestamp | None
    refresh_token_last_used_at: Timestamp | None
    last_error: str | None
    warning: str | None


class DeliveryOut(OutModel):
    """Whether mail goes out, or the provider paused the configuration (README "Provider
    limits, pauses and fairness")."""

    state: Literal["active", "paused"]
    paused_until: Timestamp | None = Field(
        description="when one probe message tries again (paused only)"
    )
    reason: str | None = Field(description="why it is paused (paused only)")
    last_reply: str | None = Field(description="the provider's answer that paused it last")


class LastTestOut(OutModel):
    ok: bool
    at: Timestamp
    mode: Literal["send", "dry_run"]
    step: str | None = Field(description="The step that failed (null when the test passed).")
    detail: str | None


class EmailServerOut(OutModel):
    """A tenant's configuration, or the system e-mail server (which has no name, is_default
    or remote_output)."""

    name: str | SkipJsonSchema[None] = sometimes("absent on the system e-mail server")
    is_default: bool | SkipJsonSchema[None] = sometimes("absent on the system e-mail server")
    transport: TransportName
    protocol: Protocol
    host: str | None
    port: int
    starttls: StartTls
    tls: TlsOut
    helo_name: str | None
    timeouts: TimeoutsOut
    limits: LimitsOut
    authentication: AuthenticationOut
    message_defaults: MessageDefaultsOut
    remote_output: RemoteOutputOut | SkipJsonSchema[None] = sometimes(
        "absent on the system e-mail server"
    )
    secrets_error: str | SkipJsonSchema[None] = sometimes(
        "only when no configured key decrypts the stored secrets: enter them again"
    )
    oauth2_status: OAuth2StatusOut | SkipJsonSchema[None] = sometimes(
        "only with authentication method oauth2"
    )
    delivery: DeliveryOut
    last_test: LastTestOut | None = Field(
        description="The last test of the configuration as saved now (null: none since)."
    )
    created_at: Timestamp
    updated_at: Timestamp


class EmailServerList(OutModel):
    items: list[EmailServerOut]


# ---- the test ("Send test e-mail") -------------------------------------------------------------


class StepOut(OutModel):
    step: str
    ok: bool
    ms: int
    detail: str


class DiagnosisOut(OutModel):
    """Every step run, the redacted SMTP transcript, and a hint when a step failed."""

    ok: bool
    mode: Literal["send", "dry_run"]
    steps: list[StepOut]
    transcript: list[str]
    hint: str | None
    warnings: list[str]
    ms: int
    message_id: str | None
    remote_client: str | SkipJsonSchema[None] = sometimes(
        "the remote client that ran the test (remote output only)"
    )

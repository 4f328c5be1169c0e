"""How an application reaches this installation's SMTP submission listener."""

from __future__ import annotations

from pydantic import Field

from mailgate.schemas.out.base import OutModel


class SmtpSubmissionOut(OutModel):
    """What to enter in an application that sends over SMTP (README "SMTP submission")."""

    enabled: bool = Field(description="A listener is configured (MAILGATE_SMTP_LISTEN/SMTPS).")
    host: str | None = Field(description="The host name or address applications connect to.")
    port: int | None = Field(description="The submission port (plain, STARTTLS when offered).")
    starttls: bool = Field(description="STARTTLS is offered on `port`.")
    implicit_tls_port: int | None = Field(description="The port with implicit TLS, if any.")
    local_only: bool = Field(
        description="The listener accepts connections from this machine only (loopback)."
    )
    auth_requires_tls: bool = Field(
        description="AUTH needs TLS from other machines (from loopback it does not)."
    )
    mechanisms: list[str] = Field(description="AUTH mechanisms offered.")
    username: str = Field(description="The user name: the tenant's name.")
    password_hint: str = Field(description="What the password is (never a key itself).")
    running: bool | None = Field(
        description="Whether this API process's listener is listening now (null: the "
        "listener runs in another process, `mailgate smtp`, or this process has none)."
    )

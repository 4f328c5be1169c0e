"""Mail that mailgate itself sends (password reset links, alerts) through the system e-mail
server, the configuration without a tenant (``email_servers.tenant_id IS NULL``).
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib
from sqlalchemy.orm import Session

from mailgate.domain.errors import NotFound
from mailgate.services.email_servers import SYSTEM_SERVER_NAME, ResolvedServer

if TYPE_CHECKING:  # bootstrap imports the services; only the type is needed here
    from mailgate.bootstrap import Container


class SystemMailError(Exception):
    """The system mail could not be sent. The text never contains a secret."""


def system_sender(c: Container, db: Session) -> str | None:
    try:
        row = c.servers.get(db, None, SYSTEM_SERVER_NAME)
    except NotFound:
        return None
    return c.servers.resolve(row).config.message_defaults.from_address


def _tls_context(server: ResolvedServer) -> ssl.SSLContext:
    tls = server.config.tls
    context = ssl.create_default_context(cadata=tls.ca_certificates_pem or None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def send_system_mail(c: Container, message: EmailMessage) -> None:
    with c.session() as db:
        try:
            row = c.servers.get(db, None, SYSTEM_SERVER_NAME)
        except NotFound:
            raise SystemMailError("no system e-mail server is configured") from None
        server = c.servers.resolve(row)
    cfg = server.config
    if cfg.authentication.method == "oauth2":
        raise SystemMailError("the system e-mail server uses OAuth2, which system mail lacks yet")
    if message["From"] is None or "@" not in str(message["From"]):
        del message["From"]
        message["From"] = cfg.message_defaults.from_address or f"mailgate@{cfg.host}"
    starttls = {"required": True, "opportunistic": None, "disabled": False}[cfg.starttls]
    smtps = cfg.protocol == "smtps"
    auth = cfg.authentication
    try:
        await aiosmtplib.send(
            message,
            sender=cfg.message_defaults.envelope_from or None,
            hostname=cfg.host,
            port=cfg.port,
            use_tls=smtps,
            start_tls=None if smtps else starttls,
            tls_context=_tls_context(server),
            local_hostname=cfg.helo_name,
            username=auth.username if auth.method == "password" else None,
            password=server.secrets.password if auth.method == "password" else None,
            timeout=cfg.timeouts.command_s,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        # aiosmtplib's texts are server replies and socket errors, which hold no credentials.
        raise SystemMailError(f"{type(exc).__name__}: {exc}") from None

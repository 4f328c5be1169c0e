"""A running SMTP submission listener for tests (README "SMTP submission").

``submission_rig`` builds the same container as ``mailgate serve`` (tests/e2e/outbox_helpers
``rig``: an API client, a hand-driven clock, a worker run on demand), a tenant API key, an
e-mail server configuration pointing at a real aiosmtpd sink, and starts the listener on an
event loop of its own (a thread) on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.e2e.outbox_helpers import Rig, rig
from tests.smtp_fixtures import LoopThread, Pki, SmtpServer, SmtpServers

from mailgate.adapters.db.tables import Message, MessageContent
from mailgate.entrypoints.smtp.listener import SmtpListener, listener_config

KEY_NAME = "erp"


@dataclass
class SubmissionRig:
    rig: Rig
    listener: SmtpListener
    loop: LoopThread
    sink: SmtpServer
    key: str
    pki: Pki
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return next(p for _h, p, implicit in self.listener.addresses if not implicit)

    @property
    def tls_port(self) -> int:
        return next(p for _h, p, implicit in self.listener.addresses if implicit)

    def client(self, host: str = "127.0.0.1", timeout: float = 10) -> smtplib.SMTP:
        s = smtplib.SMTP(host, self.port, timeout=timeout)
        s.ehlo("client.example")
        return s

    def signed_in(self, tenant: str = "home", key: str | None = None) -> smtplib.SMTP:
        s = self.client()
        s.login(tenant, key or self.key)
        return s

    def client_tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.pki.ca.configure_trust(ctx)
        return ctx

    def messages(self) -> list[Message]:
        with self.rig.c.sessions() as db:
            return list(db.scalars(select(Message).order_by(Message.created_at, Message.id)))

    def raw(self, message_id: str) -> bytes:
        with self.rig.c.sessions() as db:
            content = db.get(MessageContent, message_id)
            assert content is not None
            return bytes(content.raw)

    def make_key(self, role: str = "web_service", tenant: str = "home", name: str = "") -> str:
        r = self.rig.api.request(
            "POST",
            f"/api/v1/tenants/{tenant}/api-keys",
            self.rig.admin,
            json={"name": name or f"{role}-{len(self.keys)}", "role": role},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        self.keys[r.json()["id"]] = token
        return token


def message(
    *,
    sender: str = "app@example.com",
    to: str = "to@example.org",
    subject: str = "Invoice 42",
    headers: dict[str, str] | None = None,
    body: str = "Hello over SMTP.\r\n",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def queued_id(reply: tuple[int, bytes]) -> str:
    code, text = reply
    assert code == 250, reply
    words = text.decode().split()
    assert words[:3] == ["2.0.0", "queued", "as"], reply
    return words[3]


def write_tls_files(pki: Pki, directory: Path, hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The listener's certificate (for 127.0.0.1 and localhost, or ``hosts``) and key."""
    leaf = pki.ca.issue_cert(*hosts) if hosts else pki.good
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert.write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


@contextmanager
def submission_rig(
    tmp_path: Path,
    database_url: str,
    smtp_servers: SmtpServers,
    *,
    tls: bool = False,
    implicit_tls: bool = False,
    listen: str = "127.0.0.1:0",
    tls_hosts: tuple[str, ...] = (),
    **settings: Any,
) -> Iterator[SubmissionRig]:
    pki = smtp_servers.pki
    values: dict[str, Any] = {
        "smtp_listen": listen,
        "smtp_command_timeout_s": 10,
        "smtp_data_timeout_s": 10,
    }
    if tls or implicit_tls:
        cert, key = write_tls_files(pki, tmp_path / "tls", tls_hosts)
        values.update(smtp_tls_cert_file=cert, smtp_tls_key_file=key)
    if implicit_tls:
        values["smtps_listen"] = "127.0.0.1:0"
    values.update(settings)
    sink = smtp_servers.start(name="sink")
    with rig(tmp_path, database_url, **values) as r:
        r.add_server(sink.config())
        r.add_server(sink.config(name="OTHER"))
        loop = LoopThread()
        config = listener_config(r.c.settings)
        listener = SmtpListener(r.c, config)
        loop.run(listener.start())
        sub = SubmissionRig(r, listener, loop, sink, "", pki)
        sub.key = sub.make_key(name=KEY_NAME)
        try:
            yield sub
        finally:
            loop.run(listener.stop(grace_s=1))
            loop.stop()


def with_config(sub: SubmissionRig, **changes: Any) -> None:
    """Change the running listener's configuration (new connections see it)."""
    sub.listener.config = replace(sub.listener.config, **changes)

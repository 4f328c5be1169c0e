"""SMTP submission (README "SMTP submission"): legacy applications hand mail to mailgate's
own SMTP listener with the tenant's name and an API key, and mailgate delivers it.

Real clients (smtplib, aiosmtplib) against the real listener, a real aiosmtpd sink behind
the tenant's configuration, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import smtplib
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import Engine, create_engine, text
from tests.smtp_fixtures import SmtpServers
from tests.smtp_submission import SubmissionRig, message, queued_id, submission_rig

from mailgate.adapters.db import batch_writer
from mailgate.domain.messages import PRIORITY_RANK, Priority
from mailgate.entrypoints.smtp.listener import connection_hints


def test_auth_plain_then_the_envelope_decides_the_recipients_and_it_is_delivered(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, database_url, smtp_servers) as sub:
        s = sub.signed_in()  # smtplib picks AUTH PLAIN
        assert s.has_extn("size") and s.has_extn("pipelining")
        assert s.esmtp_features["size"] == str(sub.rig.c.settings.max_message_bytes)
        raw = message(to="to@example.org", headers={"Cc": "cc@example.org"})
        assert s.mail("bounce@example.com")[0] == 250
        for rcpt in ("to@example.org", "cc@example.org", "hidden@example.org"):
            assert s.rcpt(rcpt)[0] == 250
        mid = queued_id(s.data(raw))
        s.quit()

        [row] = sub.messages()
        assert row.id == mid
        assert (row.status, row.source) == ("queued", "smtp")
        # Bcc: the third recipient is in the envelope only.
        assert row.rcpt_to == ["to@example.org", "cc@example.org", "hidden@example.org"]
        # The envelope sender follows the configuration, as for the raw MIME API.
        assert row.mail_from == "app@example.com"
        assert row.created_by == "apikey:erp"
        assert row.api_key_id is not None
        assert row.server_name == "DEFAULT"

        # The list and the message say it came in over SMTP; API submissions say api.
        api_id = sub.rig.send(to=["api@example.org"], subject="from the API", text="x")
        r = sub.rig.api.request("GET", "/api/v1/tenants/home/messages", sub.rig.admin)
        assert {m["id"]: m["source"] for m in r.json()["items"]} == {mid: "smtp", api_id: "api"}
        assert sub.rig.get(mid)["source"] == "smtp"

        assert sub.rig.run_once() == 2
        [got] = [m for m in sub.sink.wait_for(2) if m.message["Subject"] == "Invoice 42"]
        assert got.rcpt_tos == ["to@example.org", "cc@example.org", "hidden@example.org"]
        assert got.message["Subject"] == "Invoice 42"
        assert "hidden@example.org" not in got.content.decode()
        assert sub.rig.get(mid)["status"] == "sent"


def test_auth_login_and_a_bcc_header_is_removed(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        s = sub.client()
        s.user, s.password = "home", sub.key
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        raw = message(headers={"Bcc": "secret@example.org"})
        s.mail("app@example.com")
        s.rcpt("to@example.org")
        s.rcpt("secret@example.org")
        mid = queued_id(s.data(raw))
        s.quit()
        stored = sub.raw(mid)
        assert b"secret@example.org" not in stored
        assert sub.messages()[0].rcpt_to == ["to@example.org", "secret@example.org"]


def test_option_headers_choose_server_hold_and_priority_and_are_removed(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        s = sub.signed_in()
        raw = message(
            headers={
                "X-Mailgate-Server": "OTHER",
                # Folded (RFC 5322 2.2.3): the value is "yes".
                "X-Mailgate-Hold": "\r\n yes",
                "x-mailgate-priority": "HIGH",
                "X-Mailgate-Metadata-order": "42",
                "X-Order": "42",
            }
        )
        mid = queued_id(
            s.data(raw) if s.mail("a@example.com") and s.rcpt("to@example.org") else (0, b"")
        )
        s.quit()
        [row] = sub.messages()
        assert (row.server_name, row.status) == ("OTHER", "held")
        assert row.priority == PRIORITY_RANK[Priority.HIGH]
        assert sub.rig.get(mid)["metadata"] == {"order": "42"}
        stored = sub.raw(mid)
        assert b"mailgate" not in stored.lower().split(b"\r\n\r\n")[0]
        parsed = email.message_from_bytes(stored, policy=email.policy.default)
        assert parsed["X-Order"] == "42"
        # Held: not delivered until released.
        assert sub.rig.run_once() == 0
        r = sub.rig.post(f"/{mid}/release")
        assert r.status_code == 200, r.text
        assert sub.rig.run_once() == 1
        [got] = sub.sink.wait_for(1)
        assert "X-Mailgate-Hold" not in got.message
        assert got.message["X-Order"] == "42"


def send_one(s: smtplib.SMTP, raw: bytes, rcpt: str = "to@example.org") -> tuple[int, bytes]:
    code, text = s.mail("app@example.com")
    assert code == 250, text
    code, text = s.rcpt(rcpt)
    assert code == 250, text
    return s.data(raw)


def test_refusals_say_what_is_wrong_and_store_nothing(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(
        tmp_path, sqlite_url, smtp_servers, max_message_bytes=4096, login_max_failures=20
    ) as sub:
        # No AUTH: 530.
        s = sub.client()
        assert s.mail("app@example.com")[0] == 530
        s.quit()
        # Wrong key, another tenant's key, a key that may not send, a login token: 535.
        r = sub.rig.api.request("POST", "/api/v1/tenants", sub.rig.admin, json={"name": "acme"})
        assert r.status_code == 201, r.text
        acme_key = sub.make_key(tenant="acme")
        reader_key = sub.make_key(role="read_only")
        for tenant, key in (
            ("home", "mgk_wrong"),
            ("home", acme_key),
            ("nosuch", sub.key),
            ("home", reader_key),
            ("home", sub.rig.admin),
        ):
            s = sub.client()
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                s.login(tenant, key)
            assert err.value.smtp_code == 535
            assert err.value.smtp_error.startswith(b"5.7.8")
            s.close()

        s = sub.signed_in()
        # An unknown configuration: 550.
        code, text = send_one(s, message(headers={"X-Mailgate-Server": "NOPE"}))
        assert (code, text[:5]) == (550, b"5.3.5"), text
        assert b"NOPE" in text
        # The outbox's refusal, with its reason: 554.
        code, text = send_one(s, message(sender="not an address"))
        assert (code, text[:5]) == (554, b"5.6.0"), text
        assert b"From" in text
        code, text = send_one(s, message(headers={"X-Mailgate-Hold": "perhaps"}))
        assert (code, text[:5]) == (554, b"5.6.0") and b"X-Mailgate-Hold" in text, text
        code, text = send_one(s, message(headers={"X-Mailgate-Hlod": "yes"}))
        assert code == 554 and b"unknown header" in text, text
        # Too large: announced with SIZE, or found in DATA: 552 5.3.4.
        code, text = s.mail("app@example.com", ["SIZE=999999"])
        assert (code, text[:5]) == (552, b"5.3.4"), text
        s.rset()
        code, text = send_one(s, message(body="x" * 70 + "\r\n") * 80)
        assert (code, text[:5]) == (552, b"5.3.4"), text
        # A recipient that is not an address: 553 at RCPT.
        s.mail("app@example.com")
        code, text = s.rcpt("not-an-address")
        assert (code, text[:5]) == (553, b"5.1.3"), text
        s.rset()
        # The session still works.
        queued_id(send_one(s, message()))
        s.quit()
        assert len(sub.messages()) == 1
        assert metric(sub, 'mailgate_smtp_submissions_total{result="queued"}') == 1
        # 550, three 554s (aiosmtpd itself refuses what is too large, before mailgate).
        assert metric(sub, 'mailgate_smtp_submissions_total{result="refused"}') == 4
        # smtplib tries PLAIN, then LOGIN: five sign-ins, ten refusals.
        assert metric(sub, 'mailgate_smtp_auth_total{result="refused"}') == 10
        assert metric(sub, 'mailgate_smtp_auth_total{result="ok"}') == 1


def test_failed_auth_is_throttled_like_sign_ins(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers, login_max_failures=3) as sub:
        s = sub.client()
        for _ in range(3):
            code, text = s.docmd("AUTH", "PLAIN " + _plain("home", "mgk_guess"))
            assert (code, text[:5]) == (535, b"5.7.8"), text
        # Now even the right key waits: 454 4.7.0 with the time to wait.
        code, text = s.docmd("AUTH", "PLAIN " + _plain("home", sub.key))
        assert (code, text[:5]) == (454, b"4.7.0"), text
        s.close()
        # Another tenant name is its own counter.
        s = sub.client()
        code, text = s.docmd("AUTH", "PLAIN " + _plain("acme", "mgk_guess"))
        assert code == 535, text
        s.close()
        sub.rig.clock.advance(seconds=sub.rig.c.settings.login_window_s + 1)
        sub.signed_in().quit()


def test_a_key_revoked_after_auth_sends_no_more(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        s = sub.signed_in()
        queued_id(send_one(s, message()))
        key_id = next(iter(sub.keys))
        r = sub.rig.api.request("DELETE", f"/api/v1/tenants/home/api-keys/{key_id}", sub.rig.admin)
        assert r.status_code == 204, r.text
        code, text = send_one(s, message())
        assert (code, text[:5]) == (554, b"5.7.1"), text
        assert len(sub.messages()) == 1


def test_the_api_key_never_reaches_the_log(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        s = sub.signed_in()
        queued_id(send_one(s, message()))
        s.quit()
        s = sub.client()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("home", sub.key + "x")
        s.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    # Nothing of aiosmtpd's above INFO either (it warns at every AUTH about login_data).
    assert [r.getMessage() for r in caplog.records if r.name == "mail.log"] == []
    assert "SMTP submission" in text
    assert sub.key not in text
    assert _plain("home", sub.key) not in text


def test_aiosmtplib_with_starttls_and_with_implicit_tls(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers, implicit_tls=True) as sub:
        ctx = sub.client_tls_context()

        async def send(port: int, mechanism: str, **tls: bool) -> str:
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=port, tls_context=ctx, timeout=10, **tls
            )
            await client.connect()
            assert client.is_connected
            await client.ehlo()  # after STARTTLS, the extensions (AUTH) are asked again
            if mechanism == "LOGIN":
                await client.auth_login("home", sub.key)
            else:
                await client.auth_plain("home", sub.key)
            errors, reply = await client.sendmail(
                "app@example.com", ["to@example.org", "bcc@example.org"], message()
            )
            await client.quit()
            assert errors == {}
            return reply

        starttls = asyncio.run(send(sub.port, "LOGIN", start_tls=True))
        implicit = asyncio.run(send(sub.tls_port, "PLAIN", use_tls=True))
        for reply in (starttls, implicit):
            assert reply.startswith("2.0.0 queued as ")
        assert {m.id for m in sub.messages()} == {r.split()[-1] for r in (starttls, implicit)}
        assert all(m.rcpt_to == ["to@example.org", "bcc@example.org"] for m in sub.messages())


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_connection_limit_answers_421_and_frees_the_slot(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers, smtp_max_connections=2) as sub:
        first, second = sub.client(), sub.client()
        with pytest.raises(smtplib.SMTPConnectError) as err:
            sub.client()
        assert err.value.smtp_code == 421
        assert err.value.smtp_error.startswith(b"4.3.2")
        first.quit()
        wait_for(lambda: len(sub.listener.connections) == 1)
        third = sub.client()
        assert third.noop()[0] == 250
        second.quit()
        third.quit()


def test_one_client_address_cannot_take_every_connection(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(
        tmp_path,
        sqlite_url,
        smtp_servers,
        smtp_max_connections=10,
        smtp_max_connections_per_client=1,
    ) as sub:
        first = sub.client()
        with pytest.raises(smtplib.SMTPConnectError) as err:
            sub.client()
        assert (err.value.smtp_code, err.value.smtp_error[:5]) == (421, b"4.7.0")
        first.quit()
        wait_for(lambda: not sub.listener.per_client)
        sub.client().quit()


def test_a_stalled_client_is_disconnected_at_the_command_deadline(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(
        tmp_path,
        sqlite_url,
        smtp_servers,
        smtp_command_timeout_s=0.3,
        smtp_data_timeout_s=0.6,
    ) as sub:
        s = sub.signed_in()
        wait_for(lambda: not sub.listener.connections, timeout=5)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
        # The content after DATA has its own deadline: a client that sends part of a message
        # and stalls is cut off, and nothing is stored.
        s = sub.signed_in()
        s.mail("app@example.com")
        s.rcpt("to@example.org")
        assert s.docmd("DATA")[0] == 354
        s.send(b"Subject: half a message\r\n")
        wait_for(lambda: not sub.listener.connections, timeout=5)
        assert sub.messages() == []


def test_pipelined_commands_are_answered_in_order(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        s = sub.signed_in()
        assert s.has_extn("pipelining")
        # RFC 2920: MAIL, RCPTs and DATA in one write; one reply each, in order.
        s.send(
            b"MAIL FROM:<app@example.com>\r\n"
            b"RCPT TO:<a@example.org>\r\n"
            b"RCPT TO:<not an address>\r\n"
            b"RCPT TO:<b@example.org>\r\n"
            b"DATA\r\n"
        )
        replies = [s.getreply() for _ in range(5)]
        assert [code for code, _ in replies] == [250, 250, 553, 250, 354]
        s.send(message().replace(b"\r\n.", b"\r\n..") + b".\r\n")
        mid = queued_id(s.getreply())
        s.quit()
        [row] = sub.messages()
        assert (row.id, row.rcpt_to) == (mid, ["a@example.org", "b@example.org"])


def test_a_database_that_cannot_write_at_data_time_gets_451_and_nothing_is_lost(
    tmp_path: Path,
    database_url: str,
    smtp_servers: SmtpServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with submission_rig(tmp_path, database_url, smtp_servers) as sub:
        s = sub.signed_in()
        s.mail("app@example.com")
        s.rcpt("to@example.org")
        with database_cannot_write(sub.rig.c.engine, monkeypatch):
            code, text = s.data(message(subject="first try"))
        assert (code, text[:5]) == (451, b"4.3.0"), text
        assert sub.messages() == []
        assert metric(sub, 'mailgate_smtp_submissions_total{result="not_stored"}') == 1
        # The client sends again (451 says so); now it is stored, once, and delivered once.
        mid = queued_id(send_one(s, message(subject="second try")))
        s.quit()
        assert [m.id for m in sub.messages()] == [mid]
        assert sub.rig.run_once() == 1
        [got] = sub.sink.wait_for(1)
        assert got.message["Subject"] == "second try"


@contextmanager
def database_cannot_write(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """PostgreSQL: the database turns read-only (``default_transaction_read_only``, and every
    open session ends so that the setting applies). SQLite: another process holds the write
    lock for longer than the group commit waits for it (made short here)."""
    if engine.dialect.name == "postgresql":
        name = engine.url.database
        admin = create_engine(engine.url, isolation_level="AUTOCOMMIT")

        def turn(setting: str) -> None:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" {setting}'))
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )

        turn("SET default_transaction_read_only = on")
        try:
            yield
        finally:
            turn("RESET default_transaction_read_only")
            admin.dispose()
        return
    monkeypatch.setattr(batch_writer, "LOCK_TIMEOUT_S", 0.5)
    holder = sqlite3.connect(str(engine.url.database), timeout=5)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.rollback()
        holder.close()


def wait_for(check: Callable[[], object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def non_loopback_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no network interface besides loopback")
        address: str = probe.getsockname()[0]
    assert not address.startswith("127.")
    return address


def test_auth_needs_tls_except_from_loopback(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    address = non_loopback_address()
    with submission_rig(
        tmp_path, sqlite_url, smtp_servers, tls=True, listen="0.0.0.0:0", tls_hosts=(address,)
    ) as sub:
        # From loopback, AUTH works without TLS.
        local = sub.signed_in()
        queued_id(send_one(local, message()))
        local.quit()
        # From another address: no AUTH before STARTTLS, and no mail without AUTH.
        s = sub.client(host=address)
        assert s.has_extn("starttls") and not s.has_extn("auth")
        code, text = s.docmd("AUTH", "PLAIN " + _plain("home", sub.key))
        assert (code, text[:6]) == (538, b"5.7.11"), text
        assert s.mail("app@example.com")[0] == 530
        s.rset()
        s.starttls(context=sub.client_tls_context())
        s.ehlo("client.example")
        assert s.has_extn("auth")
        s.login("home", sub.key)
        queued_id(send_one(s, message()))
        s.quit()
        assert len(sub.messages()) == 2


def test_the_api_tells_how_to_reach_the_listener(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    from fastapi.testclient import TestClient

    from mailgate.entrypoints.api.app import create_app

    with submission_rig(tmp_path, sqlite_url, smtp_servers, implicit_tls=True) as sub:
        # The process that runs the listener reports its real ports (":0" became one). (The
        # rig runs it already: the app gets it without starting it a second time.)
        app = create_app(sub.rig.c)
        app.state.smtp = sub.listener
        with TestClient(app) as client:
            r = client.get(
                "/api/v1/tenants/home/smtp-submission",
                headers={"Authorization": f"Bearer {sub.rig.admin}"},
            )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "enabled": True,
            "host": "127.0.0.1",
            "port": sub.port,
            "starttls": True,
            "implicit_tls_port": sub.tls_port,
            "local_only": True,
            "auth_requires_tls": True,
            "mechanisms": ["PLAIN", "LOGIN"],
            "username": "home",
            "password_hint": "an API key of this tenant whose role may send (web_service, "
            "user, admin)",
            "running": True,
        }
    # A process without a listener reports the settings: a wildcard address means the
    # public host name.
    settings = sub.rig.c.settings.model_copy(
        update={
            "smtp_listen": "0.0.0.0:2525",
            "smtps_listen": "",
            "smtp_tls_cert_file": None,
            "smtp_tls_key_file": None,
        }
    )
    body = connection_hints(settings, None, "acme")
    assert (body["host"], body["port"], body["starttls"], body["local_only"]) == (
        "testserver",
        2525,
        False,
        False,
    )
    assert (body["running"], body["username"]) == (None, "acme")


def metric(sub: SubmissionRig, name: str) -> float:
    r = sub.rig.api.request("GET", "/metrics", sub.rig.admin)
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_the_usual_auth_only_reads(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """A valid key whose last use was recorded less than a minute ago, without failures on
    record, signs in without a write: on SQLite it does not wait for the write lock."""
    with submission_rig(tmp_path, sqlite_url, smtp_servers) as sub:
        sub.signed_in().quit()  # records last_used_at
        holder = sqlite3.connect(str(sub.rig.c.engine.url.database), timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process writes for a long time
            started = time.monotonic()
            s = sub.client()
            s.login("home", sub.key)
            assert time.monotonic() - started < 2
            s.quit()
        finally:
            holder.rollback()
            holder.close()
        # A failure on record takes the writing path: counted, then cleared by a success.
        s = sub.client()
        assert s.docmd("AUTH", "PLAIN " + _plain("home", "mgk_wrong"))[0] == 535
        assert s.docmd("AUTH", "PLAIN " + _plain("home", sub.key))[0] == 235
        s.quit()
        with sub.rig.c.read_engine.connect() as conn:
            assert not sub.rig.c.identity.has_sign_in_failures(conn, "smtp:home", "127.0.0.1")


def test_a_failed_tls_handshake_is_one_line_in_the_log(
    tmp_path: Path,
    sqlite_url: str,
    smtp_servers: SmtpServers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with submission_rig(tmp_path, sqlite_url, smtp_servers, tls=True) as sub:
        s = sub.client()
        assert s.docmd("STARTTLS")[0] == 220
        s.sock.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        wait_for(lambda: not sub.listener.connections)
        s.close()
        # The listener still works.
        sub.signed_in().quit()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("SMTP client dropped" in r.getMessage() for r in caplog.records)

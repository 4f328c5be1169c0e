"""End to end: through the API, the outbox and the worker into real aiosmtpd servers."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.e2e.outbox_helpers import rig
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import EmailServer, Message, MessageContent
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.entrypoints.worker import Worker


def test_content_headers_attachments_and_envelope(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start(tls="starttls", users={"alice": "s3cret"})
    with rig(tmp_path, database_url) as r:
        r.add_server(
            server.password_config(
                "alice",
                "s3cret",
                message_defaults={
                    "from_address": "noreply@example.com",
                    "from_name": "Example",
                    "bcc": ["archive@example.com"],
                    "headers": {"X-Default": "yes"},
                },
            )
        )
        data = bytes(range(256)) * 40
        mid = r.send(
            to=[{"address": "x@example.org", "name": "X Ø"}],
            cc=["c@example.org"],
            subject="Report ✓",
            text="Hello\n.\nstill here\n",  # a lone dot must survive (RFC 5321 4.5.2)
            html="<p>Hello</p>",
            attachments=[
                {
                    "filename": "data.bin",
                    "content_type": "application/octet-stream",
                    "content_base64": base64.b64encode(data).decode(),
                }
            ],
            headers={"X-Order": "42"},
        )
        assert r.run_once() == 1
        (got,) = server.wait_for(1)
        assert got.login == "alice" and got.tls
        assert got.mail_from == "noreply@example.com"
        assert sorted(got.rcpt_tos) == ["archive@example.com", "c@example.org", "x@example.org"]
        msg = got.message
        assert msg["Subject"] == "Report ✓" and msg["X-Order"] == "42"
        assert msg["X-Default"] == "yes" and msg["Bcc"] is None
        assert str(msg["To"]) == "X Ø <x@example.org>"
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert text == "Hello\n.\nstill here\n"
        (att,) = list(msg.iter_attachments())
        assert att.get_filename() == "data.bin" and att.get_content() == data

        view = r.get(mid)
        assert view["status"] == "sent" and view["last_error"] is None
        (attempt,) = view["attempts"]
        assert attempt["outcome"] == "delivered" and attempt["smtp_code"] == 250
        metrics = r.api.client.get("/metrics").text
        assert 'mailgate_smtp_replies_total{code_class="2xx"} 1.0' in metrics
        assert "mailgate_delivery_latency_seconds_count 1.0" in metrics


def test_hold_release_cancel(tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config())
        held = r.send(to=["a@example.org"], subject="held", hold=True)
        cancelled = r.send(to=["a@example.org"], subject="cancelled")
        assert r.post(f"/{cancelled}/cancel").status_code == 200
        assert r.run_once() == 0
        r.clock.advance(hours=1)
        assert r.run_once() == 0 and server.count == 0
        assert r.get(held)["status"] == "held"
        assert r.post(f"/{held}/release").json()["status"] == "queued"
        assert r.run_once() == 1
        assert [m.message["Subject"] for m in server.wait_for(1)] == ["held"]
        assert r.get(cancelled)["status"] == "cancelled"
        assert r.post(f"/{held}/cancel").status_code == 409


def test_scheduled_mail_waits_for_send_at(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config())
        send_at = (r.clock.now + timedelta(hours=1)).isoformat()
        mid = r.send(to=["a@example.org"], subject="later", send_at=send_at)
        assert r.get(mid)["status"] == "scheduled"
        assert r.run_once() == 0
        r.clock.advance(minutes=59)
        assert r.run_once() == 0 and server.count == 0
        r.clock.advance(minutes=1)
        assert r.run_once() == 1
        server.wait_for(1)
        assert r.get(mid)["status"] == "sent"


def _attempts(view: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(a["outcome"], a["smtp_code"]) for a in view["attempts"]]


def test_faults_temporary_permanent_disconnect_and_partial(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, retry_base_s=60) as r:
        r.add_server(server.config())

        # 4xx, then success: retried after the backoff, the timeline shows both.
        server.fail("DATA_END", "451 4.3.0 try again later")
        mid = r.send(to=["a@example.org"], subject="temp")
        r.run_once()
        view = r.get(mid)
        assert view["status"] == "deferred" and view["last_error"].startswith("451")
        assert view["next_attempt_at"] is not None
        assert r.run_once() == 0  # not before its time
        r.clock.advance(seconds=75)  # 60 s +- 20 % jitter
        assert r.run_once() == 1
        view = r.get(mid)
        assert view["status"] == "sent"
        assert _attempts(view) == [("deferred", 451), ("delivered", 250)]

        # 5xx: failed at once; a retry through the API sends it.
        server.fail("DATA_END", "554 5.7.1 message refused")
        mid = r.send(to=["a@example.org"], subject="perm")
        r.run_once()
        view = r.get(mid)
        assert view["status"] == "failed" and "554 5.7.1" in view["last_error"]
        assert r.post(f"/{mid}/retry").json()["status"] == "queued"
        r.run_once()
        assert _attempts(r.get(mid)) == [("failed", 554), ("delivered", 250)]

        # Disconnect in the middle of DATA, after the client wrote the whole message: the
        # client cannot know how much the server read, so the message may have arrived
        # (possibly delivered): retried only after MAILGATE_POSSIBLY_DELIVERED_RETRY_S.
        server.fail("DATA", "disconnect_mid_data")
        mid = r.send(to=["a@example.org"], subject="cut")
        r.run_once()
        view = r.get(mid)
        assert view["status"] == "deferred" and view["attempts"][0]["possibly_delivered"]
        r.clock.advance(seconds=75)
        assert r.run_once() == 0
        r.clock.advance(seconds=3600)
        r.run_once()
        assert [o for o, _c in _attempts(r.get(mid))] == ["deferred", "delivered"]

        # Some recipients refused: 5xx ones are dropped, a 4xx one is retried alone.
        before = server.count
        server.refuse("gone@example.org", "550 5.1.1 no such user")
        server.fail("RCPT", "450 4.2.1 mailbox busy")
        mid = r.send(to=["busy@example.org", "gone@example.org", "ok@example.org"], subject="p")
        r.run_once()
        view = r.get(mid)
        assert view["status"] == "deferred"
        # The attempt shows the reply that decided it (the busy recipient's 450), not the
        # 250 the other recipients' DATA got.
        assert (view["attempts"][-1]["outcome"], view["attempts"][-1]["smtp_code"]) == (
            "deferred",
            450,
        )
        assert {k: v["status"] for k, v in view["recipients"].items()} == {
            "busy@example.org": "pending",
            "gone@example.org": "refused",
            "ok@example.org": "delivered",
        }
        r.clock.advance(seconds=75)
        r.run_once()
        view = r.get(mid)
        assert (
            view["status"] == "sent"
            and view["recipients"]["busy@example.org"]["status"] == "delivered"
        )
        # Sent now, and the last error still names the recipient refused the first time.
        assert "gone@example.org: 550 5.1.1" in view["last_error"]
        received = server.wait_for(before + 2)[before:]
        assert [m.rcpt_tos for m in received] == [["ok@example.org"], ["busy@example.org"]]


def test_session_reused_within_max_connections(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(limits={"max_connections": 2}))
        for i in range(12):
            r.send(to=["a@example.org"], subject=f"m{i}")
        assert r.run_once() == 12
        server.wait_for(12)
        assert 1 <= len(server._protocols) <= 2


class _InstantSession:
    """Accepts every message at once: results arrive faster than a transaction takes."""

    usable = True

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        await asyncio.sleep(0)
        return AttemptResult(Outcome.DELIVERED, 250, "2.0.0 ok", 0)

    async def close(self) -> None:
        pass


def test_attempts_are_marked_started_before_they_go_out_and_recorded_by_group_commit(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, worker_batch=40) as r:
        r.add_server(server.config(limits={"max_connections": 4}))
        ids = [r.send(to=["a@example.org"], subject=f"m{i}") for i in range(40)]
        unmarked: list[bytes] = []

        class _Checking(_InstantSession):
            async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
                with r.c.sessions() as db:
                    mark = db.scalar(
                        select(Message.attempt_started_at)
                        .join(MessageContent, MessageContent.message_id == Message.id)
                        .where(MessageContent.raw == raw)
                    )
                if mark is None:
                    unmarked.append(raw)
                return await super().send(mail_from, rcpt_to, raw)

        async def checking(*_args: Any) -> _InstantSession:
            return _Checking()

        worker = Worker(r.c, checking, worker_id="test-worker")
        writes: list[tuple[int, int]] = []
        journal = worker.store.journal

        def counting(worker_id: str, start: Any, items: Any) -> Any:
            writes.append((len(start), len(items)))
            return journal(worker_id, start, items)

        worker.store.journal = counting  # type: ignore[method-assign]
        # On SQLite the journal is tried on the event loop first (written unless the lock
        # is taken): its writes count too.
        journal_now = worker.service.journal_now
        assert journal_now is not None

        def counting_now(worker_id: str, start: Any, items: Any) -> Any:
            done = journal_now(worker_id, start, items)
            if done is not None:
                writes.append((len(start), len(items)))
            return done

        worker.service.journal_now = counting_now
        assert asyncio.run(worker.run_once()) == 40
        assert not unmarked
        assert sum(n for n, _i in writes) == 40 and sum(i for _n, i in writes) == 40
        # Group commit: the marks and results of the 4 sessions share transactions (one
        # each would be 80).
        assert len(writes) <= 30, writes
        assert {r.get(mid)["status"] for mid in ids} == {"sent"}
        assert {r.row(mid).attempt_started_at for mid in ids} == {None}


class _Tokens:
    def __init__(self, token: str) -> None:
        self.token = token

    async def access_token(self, *, force_refresh: bool = False) -> str:
        return self.token


def test_oauth2_needing_reauthorization_waits(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start(
        tls="starttls", xoauth2=lambda user, token: token == "good-token", mechanisms=()
    )
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(
            server.config(
                authentication={
                    "method": "oauth2",
                    "provider": "microsoft",
                    "grant": "client_credentials",
                    "username": "sender@example.com",
                    "directory_tenant_id": "organizations",
                    "client_id": "cid",
                    "client_secret": "csecret",
                }
            )
        )
        with r.c.session() as db:
            row = db.query(EmailServer).one()
            row.oauth2_state = "needs_reauthorization"
        mid = r.send(to=["a@example.org"])
        r.run_once()
        view = r.get(mid)
        assert view["status"] == "deferred" and view["attempt_count"] == 0
        assert "authorization" in view["last_error"] and view["attempts"] == []

        # Re-authorized (by the OAuth2 code): the hook gives a token and the mail goes out.
        with r.c.session() as db:
            db.query(EmailServer).one().oauth2_state = "authorized"
        r.c.token_provider_for = lambda _server: _Tokens("good-token")  # type: ignore[method-assign,assignment,return-value]
        r.clock.advance(minutes=2)
        assert r.run_once() == 1
        (got,) = server.wait_for(1)
        assert got.login == "sender@example.com"
        assert r.get(mid)["status"] == "sent"

"""Reliability (issue 14): what a slow or lost reply after the final dot does, through the
API, the outbox and the worker into real aiosmtpd servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.outbox_helpers import rig
from tests.smtp_fixtures import SmtpServers


def _attempts(view: dict[str, Any]) -> list[tuple[str, int | None, bool]]:
    return [(a["outcome"], a["smtp_code"], a["possibly_delivered"]) for a in view["attempts"]]


def test_a_slow_reply_to_the_final_dot_is_awaited_past_the_command_timeout(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    # Before: the reply after the dot had the command timeout, so a server answering after
    # 65 s (command_s 60) received the message again and again.
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(timeouts={"command_s": 0.3, "data_done_s": 10}))
        server.delay_data_end(1.0)
        mid = r.send(to=["a@example.org"], subject="slow")
        assert r.run_once() == 1
        view = r.get(mid)
        assert view["status"] == "sent"
        assert _attempts(view) == [("delivered", 250, False)]
        assert server.count == 1


def test_no_reply_to_the_final_dot_is_possibly_delivered_retried_late_and_flagged(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, retry_base_s=60, possibly_delivered_retry_s=3000) as r:
        r.add_server(server.config(timeouts={"command_s": 5, "data_done_s": 0.5}))
        server.delay_data_end(3.0)
        mid = r.send(to=["a@example.org"], subject="late")
        assert r.run_once() == 1
        server.wait_for(1)  # the server took it; its 250 came too late
        view = r.get(mid)
        assert view["status"] == "deferred"
        assert view["last_error"].startswith("possibly delivered: no reply to the end of")
        assert "0.5 s" in view["last_error"]
        assert _attempts(view) == [("deferred", None, True)]
        # Not after the ordinary backoff (60 s +- 20 %) ...
        r.clock.advance(seconds=2000)
        assert r.run_once() == 0
        # ... but after the long delay for mail the server may have.
        r.clock.advance(seconds=1001)
        assert r.run_once() == 1
        view = r.get(mid)
        assert view["status"] == "sent"
        assert _attempts(view) == [("deferred", None, True), ("delivered", 250, False)]
        assert server.wait_for(2) and server.count == 2  # the repeat, and the log shows it
        metrics = r.api.client.get("/metrics").text
        assert "mailgate_delivery_possibly_delivered_total 1.0" in metrics


def test_a_connection_lost_after_the_final_dot_is_possibly_delivered(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with rig(tmp_path, sqlite_url) as r:
        for pipelining in (True, False):
            server = smtp_servers.start(pipelining=pipelining)
            name = f"P{pipelining}"
            r.add_server(server.config(name, timeouts={"data_done_s": 5}))
            server.delay_data_end(0.2, then="disconnect")
            mid = r.send(server=name, to=["a@example.org"], subject="cut")
            assert r.run_once() == 1
            view = r.get(mid)
            assert view["status"] == "deferred", pipelining
            assert view["last_error"].startswith("possibly delivered: no reply to the end of")
            assert _attempts(view) == [("deferred", None, True)]

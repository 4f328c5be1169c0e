"""Webhooks end to end (README "Webhooks"): the endpoints API, signed deliveries to a real
HTTP receiver that checks every signature, retries with backoff for 24 hours, order per
message, isolation of slow and dead receivers, redirects, and the address policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.e2e.outbox_helpers import Rig, rig
from tests.smtp_fixtures import SmtpServers
from tests.webhook_receiver import WebhookReceiver

from mailgate.adapters.db.tables import WebhookEvent
from mailgate.adapters.webhooks import HttpWebhookSender
from mailgate.domain.addresses import without_private
from mailgate.domain.outbound import OutboundPolicy
from mailgate.services.events import WebhookDispatcher

HOOKS = "/api/v1/tenants/{tenant}/webhooks"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def create_hook(r: Rig, url: str, tenant: str = "home", **body: Any) -> dict[str, Any]:
    resp = r.api.request("POST", HOOKS.format(tenant=tenant), r.admin, json={"url": url, **body})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


def dispatch(r: Rig, dispatcher: WebhookDispatcher | None = None) -> int:
    return asyncio.run((dispatcher or r.c.webhook_dispatcher("test-dispatcher")).run_once())


def deliveries(r: Rig, hook: str, tenant: str = "home") -> list[dict[str, Any]]:
    resp = r.api.request("GET", HOOKS.format(tenant=tenant) + f"/{hook}/deliveries", r.admin)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def test_endpoints_api_secret_once_and_test_event(
    tmp_path: Path, sqlite_url: str, receiver: WebhookReceiver
) -> None:
    with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
        base = HOOKS.format(tenant="home")
        created = create_hook(r, receiver.url, events=["message.sent", "message.failed"])
        assert created["secret"].startswith("whsec_") and created["enabled"] is True
        assert created["events"] == ["message.sent", "message.failed"]
        hook = created["id"]
        shown = r.api.request("GET", f"{base}/{hook}", r.admin).json()
        assert "secret" not in shown and shown["url"] == receiver.url
        listed = r.api.request("GET", base, r.admin).json()["items"]
        assert [h["id"] for h in listed] == [hook] and "secret" not in listed[0]
        assert created["secret"] not in r.api.request("GET", base, r.admin).text

        receiver.secret = created["secret"]
        test = r.api.request("POST", f"{base}/{hook}/test", r.admin)
        assert test.status_code == 200, test.text
        assert test.json()["ok"] is True and test.json()["status_code"] == 200
        (got,) = receiver.received
        assert (
            got.verified
            and got.type == "webhook.test"
            and got.webhook_id == test.json()["event_id"]
        )
        assert got.data == {"tenant": "home", "webhook": hook}

        receiver.fail(1, status=503)
        failed = r.api.request("POST", f"{base}/{hook}/test", r.admin).json()
        assert failed["ok"] is False and failed["status_code"] == 503
        assert "HTTP 503" in failed["error"]
        log = deliveries(r, hook)
        assert [(d["type"], d["status_code"], d["ok"]) for d in log] == [
            ("webhook.test", 503, False),
            ("webhook.test", 200, True),
        ]
        assert log[0]["event_status"] == "failed"  # a test event is not retried
        assert dispatch(r) == 0

        patched = r.api.request(
            "PATCH", f"{base}/{hook}", r.admin, json={"enabled": False, "events": ["message.held"]}
        )
        assert patched.status_code == 200 and patched.json()["enabled"] is False
        assert patched.json()["events"] == ["message.held"]
        assert r.api.request("DELETE", f"{base}/{hook}", r.admin).status_code == 204
        assert r.api.request("GET", f"{base}/{hook}", r.admin).status_code == 404

        # Another tenant's admin sees nothing of it; a user of the tenant may not manage.
        r.api.make_tenant(r.admin, "other")
        other_admin = r.api.make_user(r.admin, "oa", {"other": "admin"})
        mine = create_hook(r, receiver.url)["id"]
        assert r.api.request("GET", f"{base}/{mine}", other_admin).status_code == 404
        user = r.api.make_user(r.admin, "u1", {"home": "user"})
        assert r.api.request("GET", base, user).status_code == 403


def test_url_rules_name_the_field(tmp_path: Path, sqlite_url: str) -> None:
    with rig(tmp_path, sqlite_url) as r:  # MAILGATE_WEBHOOK_ALLOW_PRIVATE=false
        base = HOOKS.format(tenant="home")
        for url in (
            "ftp://example.com/hook",
            "file:///etc/passwd",
            "https://user:pw@example.com/hook",
            "http://127.0.0.1:8080/hook",
            "http://10.0.0.7/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest",
            "http://localhost:9000/hook",
            "https:///nohost",
            "not a url",
        ):
            resp = r.api.request("POST", base, r.admin, json={"url": url})
            assert resp.status_code == 422, (url, resp.text)
            assert [e["field"] for e in resp.json()["errors"]] == ["url"], url
        resp = r.api.request("POST", base, r.admin, json={"url": "https://example.com/h"})
        assert resp.status_code == 201
        hook = resp.json()["id"]
        resp = r.api.request(
            "PATCH", f"{base}/{hook}", r.admin, json={"url": "http://192.168.1.1/"}
        )
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "url"
        resp = r.api.request("POST", base, r.admin, json={"url": "https://e.com", "events": ["x"]})
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "events"
        assert len(r.api.request("GET", base, r.admin).json()["items"]) == 1


def test_private_addresses_are_refused_at_connect_time(receiver: WebhookReceiver) -> None:
    """A name that resolves to a loopback address is refused when connecting, whatever the
    URL looked like when it was saved; nothing reaches the receiver."""
    sender = HttpWebhookSender(lambda: without_private(OutboundPolicy.of([])), deadline_s=2)
    receiver.secret = "whsec_" + "A" * 43 + "="
    for url in (f"http://localhost:{receiver.port}/hook", receiver.url):
        got = asyncio.run(sender.send(url, receiver.secret, "evt_1", int(time.time()), b"{}"))
        assert got.status_code is None and "outbound policy denies" in (got.error or ""), got
    assert receiver.requests == []
    allowed = HttpWebhookSender(lambda: OutboundPolicy.of([]), deadline_s=2)
    got = asyncio.run(allowed.send(receiver.url, receiver.secret, "evt_2", int(time.time()), b"{}"))
    assert got.status_code == 200 and receiver.received[0].verified


def test_message_events_signed_in_order_with_retries_for_24_hours(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers, receiver: WebhookReceiver
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url, webhook_allow_private=True) as r:
        r.add_server(server.config())
        receiver.secret = create_hook(r, receiver.url)["secret"]
        hook = r.api.request("GET", HOOKS.format(tenant="home"), r.admin).json()["items"][0]["id"]

        held = r.send(to=["x@example.org"], text="t", hold=True, metadata={"order": "7"})
        sent = r.send(to=["x@example.org"], text="t", subject="Invoice", metadata={"order": "8"})
        assert r.run_once() == 1
        # The receiver is down at first: every event waits, in order.
        receiver.fail(1, status=500)
        assert dispatch(r) == 2  # both messages' first events are due; one fails
        assert len(receiver.received) == 1
        assert r.post(f"/{held}/cancel").status_code == 200
        dispatch(r)
        # held's cancel event waits until its held event (which failed above, or not) is
        # delivered: order per message.
        r.clock.advance(seconds=31)
        dispatch(r)
        by_message: dict[str, list[str]] = {}
        for got in receiver.received:
            assert got.verified
            by_message.setdefault(got.data["id"], []).append(got.type)
        assert by_message == {held: ["message.held", "message.cancelled"], sent: ["message.sent"]}
        event = next(g for g in receiver.received if g.type == "message.sent")
        assert event.data["metadata"] == {"order": "8"} and event.data["subject"] == "Invoice"
        assert event.data["status"] == "sent" and event.data["tenant"] == "home"
        assert event.data["attempt"]["smtp_code"] == 250 and event.body["timestamp"]
        log = deliveries(r, hook)
        assert sorted(d["status_code"] for d in log) == [200, 200, 200, 500]
        metrics = r.api.client.get("/metrics").text
        assert 'mailgate_webhook_events{state="delivered"} 3.0' in metrics
        assert 'mailgate_webhook_events{state="pending"} 0.0' in metrics
        assert "mailgate_webhook_oldest_pending_seconds 0.0" in metrics

        # A receiver that is gone: retried with backoff, failed after 24 hours.
        receiver.stop()
        r.send(to=["x@example.org"], text="t")
        assert r.run_once() == 1
        tries = 0
        for _ in range(60):
            tries += dispatch(r)
            r.clock.advance(hours=1)
        r.admin = r.api.admin_token()  # the sign-in of 60 hours ago has expired
        log = deliveries(r, hook)
        assert log[0]["status_code"] is None and log[0]["error"]
        assert log[0]["event_status"] == "failed"
        assert 10 <= tries <= 40, tries  # 30 s, 1, 2, 4 ... min, then hourly, for 24 h


def test_slow_and_dead_receivers_cost_only_themselves(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers, receiver: WebhookReceiver
) -> None:
    """A receiver that hangs until the deadline, and one that is gone, delay neither mail
    nor another tenant's events."""
    server = smtp_servers.start()
    slow = WebhookReceiver(hang_s=3.0).start()
    try:
        with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
            r.api.make_tenant(r.admin, "other")
            for tenant in ("home", "other"):
                r.add_server(server.config(), tenant=tenant)
            slow.secret = create_hook(r, slow.url)["secret"]
            create_hook(r, "http://127.0.0.1:9/dead")  # nothing listens on the discard port
            receiver.secret = create_hook(r, receiver.url, tenant="other")["secret"]
            for _ in range(8):
                r.send(to=["x@example.org"], text="t")
                r.send(tenant="other", to=["x@example.org"], text="t")
            assert r.run_once() == 16

            async def scenario() -> tuple[float, float]:
                sender = HttpWebhookSender(r.c.outbound_policy, deadline_s=2.0)
                dispatcher = WebhookDispatcher(
                    r.c.sessions, sender, r.c.box, r.c.clock, "d1", poll_s=0.05
                )
                stop = asyncio.Event()
                task = asyncio.create_task(dispatcher.run(stop))
                started = time.monotonic()
                while len(receiver.received) < 8:
                    await asyncio.sleep(0.01)
                others_done = time.monotonic() - started
                # Mail meanwhile: a worker on the same event loop delivers at once.
                await asyncio.to_thread(r.send, to=["y@example.org"], text="t")
                mail_started = time.monotonic()
                from mailgate.entrypoints.worker import Worker

                assert await Worker(r.c, worker_id="w").run_once() == 1
                mail_s = time.monotonic() - mail_started
                stop.set()
                await task
                return others_done, mail_s

            others_done, mail_s = asyncio.run(scenario())
            assert others_done < 1.5, others_done  # the slow one hangs 3 s, its deadline 2 s
            assert mail_s < 1.5, mail_s
            assert all(g.verified for g in receiver.received)
            assert {g.data["tenant"] for g in receiver.received} == {"other"}
            # The slow receiver got at most per_endpoint (4) requests at a time.
            assert len(slow.requests) <= 4
    finally:
        slow.stop()


def test_the_installations_denied_networks_apply_to_webhooks(
    tmp_path: Path, sqlite_url: str, receiver: WebhookReceiver
) -> None:
    """The system setting's denied networks hold for webhooks too, even where private
    addresses are allowed: the test event is refused at connect time, nothing is sent."""
    with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
        created = create_hook(r, receiver.url)
        receiver.secret = created["secret"]
        resp = r.api.request(
            "PUT",
            "/api/v1/system/settings",
            r.admin,
            json={"outbound_policy": {"deny_networks": ["127.0.0.0/8"]}},
        )
        assert resp.status_code == 200, resp.text
        test = r.api.request(
            "POST", HOOKS.format(tenant="home") + f"/{created['id']}/test", r.admin
        ).json()
        assert test["ok"] is False and test["status_code"] is None
        assert "127.0.0.0/8" in test["error"] and receiver.requests == []
        # A literal address in a denied network is refused when it is saved, too.
        resp = r.api.request(
            "POST", HOOKS.format(tenant="home"), r.admin, json={"url": "http://127.0.0.2/x"}
        )
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "url"


def test_redirects_are_not_followed(
    tmp_path: Path, sqlite_url: str, receiver: WebhookReceiver
) -> None:
    target = WebhookReceiver().start()
    try:
        with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
            created = create_hook(r, receiver.url)
            receiver.secret = target.secret = created["secret"]
            receiver.redirect_to = target.url
            resp = r.api.request(
                "POST", HOOKS.format(tenant="home") + f"/{created['id']}/test", r.admin
            ).json()
            assert resp["ok"] is False and resp["status_code"] == 302
            assert "redirect" in resp["error"]
            assert target.requests == [] and len(receiver.requests) == 1
    finally:
        target.stop()


def test_a_disabled_webhook_keeps_its_waiting_events_for_24_hours(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers, receiver: WebhookReceiver
) -> None:
    """Disabled: no new events, and nothing is sent; the events that were waiting stay and
    go out when it is enabled again within the day; a day later they are given up; finished
    events are deleted after 7 days."""
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
        r.add_server(server.config())
        created = create_hook(r, receiver.url, events=["message.sent"])
        receiver.secret = created["secret"]
        path = HOOKS.format(tenant="home") + f"/{created['id']}"
        first = r.send(to=["x@example.org"], text="1")
        assert r.run_once() == 1
        assert r.api.request("PATCH", path, r.admin, json={"enabled": False}).status_code == 200
        r.send(to=["x@example.org"], text="while disabled")
        assert r.run_once() == 1
        dispatcher = r.c.webhook_dispatcher("d")
        assert dispatch(r, dispatcher) == 0 and receiver.requests == []
        assert r.api.request("GET", path, r.admin).json()["pending"] == 1
        r.clock.advance(hours=2)
        assert r.api.request("PATCH", path, r.admin, json={"enabled": True}).status_code == 200
        assert dispatch(r, dispatcher) == 1
        assert [g.data["id"] for g in receiver.received] == [first]

        r.send(to=["x@example.org"], text="2")
        assert r.run_once() == 1
        r.api.request("PATCH", path, r.admin, json={"enabled": False})
        r.clock.advance(hours=25)
        dispatcher.prune()
        r.admin = r.api.admin_token()
        r.api.request("PATCH", path, r.admin, json={"enabled": True})
        assert dispatch(r, dispatcher) == 0  # given up: not sent a day late
        assert len(receiver.received) == 1
        with r.c.sessions() as db:
            states = sorted(e.status for e in db.scalars(select(WebhookEvent)))
        assert states == ["delivered", "failed"]
        r.clock.advance(days=8)
        assert dispatcher.prune() == 2


def test_concurrent_dispatchers_deliver_each_event_once_in_order_per_message(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers, receiver: WebhookReceiver
) -> None:
    """Three dispatchers at once (on PostgreSQL their claims race through SKIP LOCKED):
    every event arrives once, and a message's events arrive in the order they happened."""
    server = smtp_servers.start()
    receiver.hang_s = 0.005
    n = 40
    with rig(tmp_path, database_url, webhook_allow_private=True) as r:
        r.add_server(server.config())
        receiver.secret = create_hook(r, receiver.url, events=["message.held", "message.sent"])[
            "secret"
        ]
        ids = [r.send(to=["x@example.org"], text=str(i), hold=True) for i in range(n)]
        assert r.post("/release", json={"status": "held"}).json()["changed"] == n
        assert r.run_once() == n

        async def race() -> None:
            sender = HttpWebhookSender(r.c.outbound_policy, deadline_s=5)
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    WebhookDispatcher(
                        r.c.sessions, sender, r.c.box, r.c.clock, f"d{i}", poll_s=0.02
                    ).run(stop)
                )
                for i in range(3)
            ]
            deadline = time.monotonic() + 30
            while len(receiver.received) < 2 * n and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(race())
        got = receiver.received
        assert len(got) == 2 * n and all(g.verified for g in got)
        assert len({g.webhook_id for g in got}) == 2 * n  # none twice
        for mid in ids:
            assert [g.type for g in got if g.data["id"] == mid] == ["message.held", "message.sent"]


def test_a_failing_endpoint_gets_one_slot_until_it_answers_again(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers, receiver: WebhookReceiver
) -> None:
    """Four POSTs at a time to a healthy endpoint; one at a time after a failure, so a dead
    or slow receiver holds one slot of the process, not four; a 2xx gives it four again."""
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, webhook_allow_private=True) as r:
        r.add_server(server.config())
        receiver.secret = create_hook(r, receiver.url, events=["message.sent"])["secret"]
        for i in range(12):
            r.send(to=["x@example.org"], text=str(i))
        assert r.run_once() == 12
        dispatcher = r.c.webhook_dispatcher("d")
        first = dispatcher.claim()
        assert len(first) == 4  # per endpoint
        receiver.fail(1, status=500)
        asyncio.run(dispatcher.deliver(first[0]))
        r.clock.advance(minutes=2)  # past the lease of the other three
        (only,) = dispatcher.claim()  # failing: one slot
        asyncio.run(dispatcher.deliver(only))  # answered 200
        assert len(dispatcher.claim()) == 4  # healthy again
        r.clock.advance(minutes=2)
        asyncio.run(dispatcher.run_once())
        listed = r.api.request("GET", "/api/v1/tenants/home/messages", r.admin).json()["items"]
        assert len(listed) == 12
        assert {g.data["id"] for g in receiver.received} == {m["id"] for m in listed}

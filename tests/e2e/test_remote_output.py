"""Remote output end to end, with real processes: ``mailgate serve``, ``mailgate agent``
subprocesses, and aiosmtpd servers (in this process) that only the agents talk to.

One ``mailgate serve`` is shared by the module (each test uses its own tenant); retries are
left at their 60 s default, so mail that flows within seconds after an agent comes back
proves that the reconnect wakes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from tests.conftest import ADMIN_PASSWORD
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import MessageAttempt
from mailgate.adapters.secrets import generate_key

pytestmark = pytest.mark.slow


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(extra)
    env["MAILGATE_DATA_DIR"] = str(data_dir)
    return env


@dataclass
class Mailgate:
    """A running ``mailgate serve`` and an admin client for it."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    http: httpx.Client
    tmp: Path
    agents: list[Agent] = field(default_factory=list)

    def call(self, method: str, path: str, expect: int | None = 200, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if expect is not None:
            assert r.status_code == expect, r.text
        return r.json() if r.content else None

    def setup_tenant(self, tenant: str, client: str = "plant-1") -> str:
        """A tenant with a remote client; returns the client's token."""
        self.call("POST", "/api/v1/tenants", 201, json={"name": tenant})
        body = self.call(
            "POST", f"/api/v1/tenants/{tenant}/remote-clients", 201, json={"name": client}
        )
        token: str = body["token"]
        return token

    def add_server(self, tenant: str, smtp: SmtpServer, client: str = "plant-1", **kw: Any) -> None:
        body = smtp.password_config(
            "alice",
            "s3cret-pw",
            remote_output={"enabled": True, "remote_client": client},
            **kw,
        )
        self.call("POST", f"/api/v1/tenants/{tenant}/email-servers", 201, json=body)

    def send(self, tenant: str, subject: str) -> str:
        body = {"to": ["rcpt@example.org"], "subject": subject, "text": "hello"}
        mid: str = self.call("POST", f"/api/v1/tenants/{tenant}/messages", 202, json=body)["id"]
        return mid

    def message(self, tenant: str, mid: str) -> dict[str, Any]:
        view: dict[str, Any] = self.call("GET", f"/api/v1/tenants/{tenant}/messages/{mid}")
        return view

    def client_view(self, tenant: str, client: str = "plant-1") -> dict[str, Any]:
        view: dict[str, Any] = self.call("GET", f"/api/v1/tenants/{tenant}/remote-clients/{client}")
        return view

    def connected(self, tenant: str, client: str = "plant-1") -> bool:
        return bool(self.client_view(tenant, client)["connected"])

    def wait_status(
        self, tenant: str, mid: str, status: str, timeout: float = 20
    ) -> dict[str, Any]:
        view: dict[str, Any] = wait_until(
            lambda: (v := self.message(tenant, mid))["status"] == status and v,
            timeout,
            f"message {mid} to be {status}",
        )
        return view

    def start_agent(self, token: str, name: str, *args: str) -> Agent:
        log = self.tmp / f"agent-{name}-{len(self.agents)}.log"
        env = _env(
            self.tmp / f"agent-{name}",
            MAILGATE_AGENT_URL=self.url,
            MAILGATE_AGENT_TOKEN=token,
            MAILGATE_AGENT_BACKOFF_MAX_S="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate.entrypoints.cli", "agent", *args],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        agent = Agent(proc, log)
        self.agents.append(agent)
        return agent


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def mailgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailgate]:
    tmp = tmp_path_factory.mktemp("remote-e2e")
    log = tmp / "serve.log"
    env = _env(
        tmp / "data",
        MAILGATE_SECRET_KEY=generate_key(),
        MAILGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MAILGATE_WORKERS="1",
        MAILGATE_REMOTE_HEARTBEAT_S="1",
        # Mail an agent had when it vanished is possibly delivered: retried after 1 s here.
        MAILGATE_POSSIBLY_DELIVERED_RETRY_S="1",
        MAILGATE_PASSWORD_HASH_TIME_COST="1",
        MAILGATE_PASSWORD_HASH_MEMORY_KIB="64",
        MAILGATE_LOG_LEVEL="INFO",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", "serve", "--port", "0"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        found = wait_until(
            lambda: (
                re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
                or proc.poll() is not None
            ),
            30,
            "mailgate serve to listen",
        )
        assert proc.poll() is None, log.read_text()
        url = found.group(1)
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            http.headers["Authorization"] = f"Bearer {r.json()['token']}"
            mg = Mailgate(proc, url, log, http, tmp)
            mg.call("PUT", "/api/v1/system/settings", json={"allow_remote_clients": True})
            yield mg
            for agent in mg.agents:
                agent.stop(signal.SIGKILL)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_delivery_and_test_email_through_the_agent(
    mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    token = mailgate.setup_tenant("t-deliver")
    smtp = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"})
    mailgate.add_server("t-deliver", smtp)
    agent = mailgate.start_agent(token, "deliver")
    wait_until(lambda: mailgate.connected("t-deliver"), 20, "the agent to connect")
    view = mailgate.client_view("t-deliver")
    assert view["agent_address"] == "127.0.0.1" and view["agent_version"]

    mid = mailgate.send("t-deliver", "through the agent")
    sent = mailgate.wait_status("t-deliver", mid, "sent")
    (attempt,) = sent["attempts"]
    assert attempt["outcome"] == "delivered" and attempt["smtp_code"] == 250
    (got,) = smtp.wait_for(1)
    assert got.login == "alice" and got.tls
    assert got.message["Subject"] == "through the agent"

    r = mailgate.call(
        "POST",
        "/api/v1/tenants/t-deliver/email-servers/DEFAULT/test",
        json={"to": "check@example.org", "mode": "send"},
    )
    assert r["ok"] is True, r
    assert [s["step"] for s in r["steps"]] == [
        "resolve",
        "connect",
        "tls",
        "ehlo",
        "auth",
        "mail_from",
        "rcpt_to",
        "data",
    ]
    assert r["remote_client"] == "plant-1"
    assert not any("s3cret-pw" in line for line in r["transcript"])
    smtp.wait_for(2)

    log = agent.text()
    assert "connected as remote client plant-1 of tenant t-deliver" in log
    assert "delivering message" in log
    assert "s3cret-pw" not in log and token not in log
    assert "s3cret-pw" not in mailgate.log.read_text()
    assert agent.stop() == 0


def test_offline_agent_defers_then_delivers_and_sigkill_loses_nothing(
    mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    token = mailgate.setup_tenant("t-offline")
    smtp = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"})
    mailgate.add_server("t-offline", smtp, timeouts={"connect_s": 5, "command_s": 60})

    # No agent: the mail waits, deferred, saying why.
    first = mailgate.send("t-offline", "waiting")
    view = mailgate.wait_status("t-offline", first, "deferred")
    assert view["last_error"] == "remote client plant-1 is not connected"
    # The agent comes: the mail flows at once (not after the 60 s retry delay).
    agent = mailgate.start_agent(token, "offline")
    mailgate.wait_status("t-offline", first, "sent", timeout=20)

    # The SMTP server swallows the content and never answers: the agent holds the messages.
    smtp.fail("DATA", "hang", times=None)
    before = smtp.commands.count("DATA")  # the first message's
    held = [mailgate.send("t-offline", f"held {i}") for i in range(3)]
    wait_until(
        lambda: smtp.commands.count("DATA") >= before + 2,
        20,
        "the agent to have two of them in the middle of DATA",
    )
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    for mid in held:
        assert mailgate.wait_status("t-offline", mid, "deferred")["status"] == "deferred"
    smtp.faults.clear()
    mailgate.start_agent(token, "offline")
    flagged = 0
    for mid in held:
        view = mailgate.wait_status("t-offline", mid, "sent", timeout=30)
        assert view["attempts"][-1]["outcome"] == "delivered"
        flagged += any(a["possibly_delivered"] for a in view["attempts"])
    # The agent had the two in DATA when it was killed: it might have sent them.
    assert flagged >= 2
    subjects = {m.message["Subject"] for m in smtp.received}
    assert {"waiting", "held 0", "held 1", "held 2"} <= subjects


def test_each_agent_gets_only_its_own_tenants_mail(
    mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    # Two tenants, each with a client named plant-1 and its own SMTP server.
    token_a = mailgate.setup_tenant("t-alpha")
    token_b = mailgate.setup_tenant("t-beta")
    smtp_a = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"}, name="alpha")
    smtp_b = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"}, name="beta")
    mailgate.add_server("t-alpha", smtp_a)
    mailgate.add_server("t-beta", smtp_b)
    agent_a = mailgate.start_agent(token_a, "alpha")
    agent_b = mailgate.start_agent(token_b, "beta")
    wait_until(
        lambda: mailgate.connected("t-alpha") and mailgate.connected("t-beta"),
        20,
        "both agents",
    )
    ids_a = [mailgate.send("t-alpha", f"alpha {i}") for i in range(3)]
    ids_b = [mailgate.send("t-beta", f"beta {i}") for i in range(3)]
    for mid in ids_a:
        mailgate.wait_status("t-alpha", mid, "sent")
    for mid in ids_b:
        mailgate.wait_status("t-beta", mid, "sent")
    assert {m.message["Subject"] for m in smtp_a.received} == {"alpha 0", "alpha 1", "alpha 2"}
    assert {m.message["Subject"] for m in smtp_b.received} == {"beta 0", "beta 1", "beta 2"}
    # The agents' logs name every message they were given: none of the other tenant's.
    ids_in = {
        name: {m.message["Message-ID"] for m in server.received}
        for name, server in (("a", smtp_a), ("b", smtp_b))
    }
    log_a, log_b = agent_a.text(), agent_b.text()
    assert all(mid in log_a for mid in ids_in["a"])
    assert not any(mid in log_a for mid in ids_in["b"])
    assert not any(mid in log_b for mid in ids_in["a"])
    agent_a.stop()
    agent_b.stop()


def test_refused_when_switched_off_or_deleted(mailgate: Mailgate) -> None:
    token = mailgate.setup_tenant("t-refuse")
    agent = mailgate.start_agent(token, "refuse")
    wait_until(lambda: mailgate.connected("t-refuse"), 20, "the agent to connect")

    mailgate.call("PUT", "/api/v1/system/settings", json={"allow_remote_clients": False})
    try:
        assert not mailgate.connected("t-refuse")
        wait_until(lambda: "refused the connection (403" in agent.text(), 20, "a 403 refusal")
        assert agent.proc.poll() is None  # it keeps trying: the setting may come back
    finally:
        mailgate.call("PUT", "/api/v1/system/settings", json={"allow_remote_clients": True})
    wait_until(lambda: mailgate.connected("t-refuse"), 20, "the agent to reconnect")

    mailgate.call("DELETE", "/api/v1/tenants/t-refuse/remote-clients/plant-1", 204)
    assert agent.proc.wait(timeout=20) == 2
    assert "refused" in agent.text()
    # Started again with the deleted token, it stops at once.
    again = mailgate.start_agent(token, "refuse")
    assert again.proc.wait(timeout=20) == 2
    assert "refused the token (401" in again.text()


def test_worker_processes_deliver_direct_mail_and_serve_the_agents_mail(
    mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    """``mailgate serve`` delivers from its worker processes (MAILGATE_WORKERS), which leave
    remote output alone: that mail is handed to the agent by the one worker that runs in
    the serve process, where the agent's WebSocket ends. The attempt log names the worker
    (host:pid:n): the direct message's is a worker process, the remote one's is serve."""
    token = mailgate.setup_tenant("t-both")
    remote_smtp = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"})
    direct_smtp = smtp_servers.start(name="direct")
    mailgate.add_server("t-both", remote_smtp)
    direct = direct_smtp.config("DIRECT")
    mailgate.call("POST", "/api/v1/tenants/t-both/email-servers", 201, json=direct)
    mailgate.start_agent(token, "both")
    wait_until(lambda: mailgate.connected("t-both"), 20, "the agent to connect")

    remote_id = mailgate.send("t-both", "through the agent")
    body = {"server": "DIRECT", "to": ["rcpt@example.org"], "subject": "direct", "text": "hi"}
    direct_id = mailgate.call("POST", "/api/v1/tenants/t-both/messages", 202, json=body)["id"]
    mailgate.wait_status("t-both", remote_id, "sent")
    mailgate.wait_status("t-both", direct_id, "sent")
    assert [m.message["Subject"] for m in direct_smtp.wait_for(1)] == ["direct"]
    assert [m.message["Subject"] for m in remote_smtp.wait_for(1)] == ["through the agent"]

    engine = create_engine(f"sqlite:///{mailgate.tmp / 'data' / 'mailgate.db'}")
    try:
        with engine.connect() as conn:
            workers = dict(
                conn.execute(
                    select(MessageAttempt.message_id, MessageAttempt.worker).where(
                        MessageAttempt.message_id.in_([remote_id, direct_id])
                    )
                ).all()
            )
    finally:
        engine.dispose()
    pid_of = {mid: int(worker.split(":")[1]) for mid, worker in workers.items()}
    assert pid_of[remote_id] == mailgate.proc.pid
    assert pid_of[direct_id] != mailgate.proc.pid
    assert f"pid {pid_of[direct_id]}" not in mailgate.log.read_text()  # it did not die

"""SMTP submission with real processes (README "SMTP submission"): ``mailgate serve`` killed
with SIGKILL right after its ``250`` loses nothing (the message is delivered after the
restart), and ``mailgate smtp`` runs the listener alone and stops cleanly on SIGTERM. On
SQLite and PostgreSQL, to a real aiosmtpd sink."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.conftest import ADMIN_PASSWORD
from tests.e2e.test_serve_workers import wait_until
from tests.smtp_fixtures import SmtpServers
from tests.smtp_submission import message, queued_id

from mailgate.adapters.secrets import generate_key

pytestmark = pytest.mark.slow


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, what: str) -> re.Match[str]:
        found: re.Match[str] = wait_until(
            lambda: re.search(pattern, self.text()) or self.proc.poll() is not None, 60, what
        )
        assert self.proc.poll() is None, self.text()
        return found


@contextmanager
def mailgate(tmp_path: Path, env: dict[str, str], *args: str, name: str) -> Iterator[Proc]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    full.update(env)
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", *args],
        env=full,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield Proc(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def base_env(tmp_path: Path, database_url: str, secret_key: str) -> dict[str, str]:
    return {
        "MAILGATE_DATA_DIR": str(tmp_path / "data"),
        "MAILGATE_DATABASE_URL": database_url,
        "MAILGATE_SECRET_KEY": secret_key,
        "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MAILGATE_LOG_LEVEL": "INFO",
        "MAILGATE_PASSWORD_HASH_TIME_COST": "1",
        "MAILGATE_PASSWORD_HASH_MEMORY_KIB": "64",
    }


@contextmanager
def serve(tmp_path: Path, env: dict[str, str], name: str) -> Iterator[tuple[Proc, httpx.Client]]:
    with mailgate(tmp_path, env, "serve", "--port", "0", name=name) as p:
        url = p.wait_for(r"running on (http://127\.0\.0\.1:\d+)", "serve to listen").group(1)
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            http.headers["Authorization"] = f"Bearer {r.json()['token']}"
            yield p, http


def smtp_port(p: Proc) -> int:
    found = p.wait_for(r"SMTP submission listening on 127\.0\.0\.1:(\d+)", "the SMTP listener")
    return int(found.group(1))


def setup_tenant(http: httpx.Client, sink_config: dict[str, object]) -> str:
    r = http.post("/api/v1/tenants/home/email-servers", json=sink_config)
    assert r.status_code == 201, r.text
    r = http.post("/api/v1/tenants/home/api-keys", json={"name": "printer", "role": "web_service"})
    assert r.status_code == 201, r.text
    key: str = r.json()["token"]
    return key


def submit(port: int, key: str, subjects: list[str]) -> list[str]:
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login("home", key)
        for subject in subjects:
            s.mail("printer@example.com")
            s.rcpt("to@example.org")
            s.rcpt("bcc@example.org")
            ids.append(queued_id(s.data(message(subject=subject))))
    return ids


def test_serve_killed_after_250_delivers_the_message_after_restart(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    sink = smtp_servers.start(name="sink")
    env = base_env(tmp_path, database_url, generate_key())
    env["MAILGATE_SMTP_LISTEN"] = "127.0.0.1:0"
    # First run: no delivery workers, so the only copy of each message is the stored one.
    with serve(tmp_path, {**env, "MAILGATE_WORKERS": "0"}, "serve-1") as (p, http):
        key = setup_tenant(http, sink.config())
        ids = submit(smtp_port(p), key, ["one", "two", "three"])
        os.kill(p.proc.pid, signal.SIGKILL)  # at once after the last 250
        assert p.proc.wait(10) == -signal.SIGKILL
    with serve(tmp_path, {**env, "MAILGATE_WORKERS": "1"}, "serve-2") as (p, http):
        got = sink.wait_for(3, timeout=60)
        assert sorted(str(m.message["Subject"]) for m in got) == ["one", "three", "two"]
        assert all(m.rcpt_tos == ["to@example.org", "bcc@example.org"] for m in got)
        for mid in ids:
            status = wait_until(
                lambda mid=mid: (
                    http.get(f"/api/v1/tenants/home/messages/{mid}").json()["status"] == "sent"
                ),
                30,
                f"{mid} to be sent",
            )
            assert status


def test_mailgate_smtp_runs_the_listener_alone_and_stops_on_sigterm(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    sink = smtp_servers.start(name="sink")
    env = base_env(tmp_path, sqlite_url, generate_key())
    # The API process, without a listener of its own and without workers.
    api_env = {**env, "MAILGATE_SMTP_LISTEN": "", "MAILGATE_WORKERS": "0"}
    with serve(tmp_path, api_env, "serve") as (p, http):
        assert "SMTP submission listening" not in p.text()
        key = setup_tenant(http, sink.config())
        smtp_env = {**env, "MAILGATE_SMTP_LISTEN": "127.0.0.1:0"}
        with mailgate(tmp_path, smtp_env, "smtp", name="smtp") as listener:
            found = listener.wait_for(r"listening on 127\.0\.0\.1:(\d+)", "mailgate smtp")
            port = int(found.group(1))
            [mid] = submit(port, key, ["alone"])
            # A client still connected when it stops is told so (421), then disconnected.
            idle = smtplib.SMTP("127.0.0.1", port, timeout=30)
            idle.ehlo("client.example")
            listener.proc.send_signal(signal.SIGTERM)
            assert listener.proc.wait(30) == 0, listener.text()
            code, text = idle.getreply()
            assert (code, text[:5]) == (421, b"4.3.2"), text
            idle.close()
            assert "stopped after accepting 1 messages" in listener.text()
        r = http.get(f"/api/v1/tenants/home/messages/{mid}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "queued"


def test_a_configured_listener_that_cannot_listen_stops_serve(
    tmp_path: Path, sqlite_url: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **base_env(tmp_path, sqlite_url, generate_key()),
            "MAILGATE_WORKERS": "0",
            "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{port}",
        }
        with mailgate(tmp_path, env, "serve", "--port", "0", name="serve") as p:
            assert p.proc.wait(60) != 0
            assert "address already in use" in p.text().lower()
        # A bad setting is named before anything starts.
        env["MAILGATE_SMTPS_LISTEN"] = "127.0.0.1:0"
        with mailgate(tmp_path, env, "serve", "--port", "0", name="serve-2") as p:
            assert p.proc.wait(60) == 2
            assert "MAILGATE_SMTPS_LISTEN needs" in p.text()


def test_serve_runs_without_the_default_listener_when_its_port_is_taken(
    tmp_path: Path, sqlite_url: str
) -> None:
    import socket

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 2587))
            holder.listen()
        except OSError:
            pass  # taken already (another mailgate on this machine): the same situation
        env = {**base_env(tmp_path, sqlite_url, generate_key()), "MAILGATE_WORKERS": "0"}
        with serve(tmp_path, env, "serve") as (p, http):
            assert http.get("/healthz").status_code == 200
            p.wait_for(r"SMTP submission is off: 127\.0\.0\.1:2587 cannot be used", "warning")

"""``mailgate serve`` and the delivery worker processes it supervises (README "Sending
mail", Workers), with real processes: a worker killed with SIGKILL comes back and nothing is
lost, SIGTERM stops everything with status 0, a serve killed with SIGKILL leaves no worker
behind, and ``/metrics`` of serve counts what the worker processes delivered. On SQLite (the
workers are woken through the data directory's socket) and PostgreSQL (NOTIFY)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from tests.conftest import ADMIN_PASSWORD
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import Message
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


def children(pid: int) -> set[int]:
    """Live child processes (of every thread: a restart is spawned by the supervisor's)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return {p for p in found if alive(p)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    http: httpx.Client

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> set[int]:
        return children(self.proc.pid)


def _copy_lines(source: IO[bytes], sink: IO[bytes]) -> None:
    for line in source:
        sink.write(line)


@contextmanager
def serve(
    tmp_path: Path, database_url: str, workers: int, *, piped: bool = False
) -> Iterator[Serve]:
    """``piped``: serve's output reaches the log file through a pipe (serve itself writes no
    file, e.g. when a test limits the size of the files it may write)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(
        MAILGATE_DATA_DIR=str(tmp_path / "data"),
        MAILGATE_DATABASE_URL=database_url,
        MAILGATE_SECRET_KEY=generate_key(),
        MAILGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MAILGATE_WORKERS=str(workers),
        # A killed worker's messages come back after 5 s, not 2 minutes.
        MAILGATE_LEASE_S="5",
        # A message a killed worker had started is retried after 1 s, not an hour.
        MAILGATE_POSSIBLY_DELIVERED_RETRY_S="1",
        # An idle session frees its connection slot after 1 s, not 10: the restarted
        # worker, with the killed one's mail, waits for a slot otherwise.
        MAILGATE_IDLE_SESSION_S="1",
        MAILGATE_LOG_LEVEL="INFO",
        MAILGATE_PASSWORD_HASH_TIME_COST="1",
        MAILGATE_PASSWORD_HASH_MEMORY_KIB="64",
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE if piped else log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    if piped:
        sink = log.open("wb", buffering=0)
        assert proc.stdout is not None
        pipe = proc.stdout
        threading.Thread(target=_copy_lines, args=(pipe, sink), daemon=True).start()
    try:
        found = wait_until(
            lambda: (
                re.search(r"running on (http://127\.0\.0\.1:\d+)", log.read_text())
                or proc.poll() is not None
            ),
            60,
            "mailgate serve to listen",
        )
        assert proc.poll() is None, log.read_text()
        with httpx.Client(base_url=found.group(1), timeout=30) as http:
            r = http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            http.headers["Authorization"] = f"Bearer {r.json()['token']}"
            yield Serve(proc, log, found.group(1), http)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def started_workers(s: Serve, n: int, times: int = 1) -> None:
    """Until worker-1 ... worker-n each logged "started" (``times`` times: restarts)."""
    wait_until(
        lambda: all(
            len(
                re.findall(
                    rf"^worker-{i} \| .* mailgate\.worker worker \S+ started", s.text(), re.M
                )
            )
            >= times
            for i in range(1, n + 1)
        ),
        60,
        f"{n} worker processes to start",
    )


def sent_count(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).where(Message.status == "sent")) or 0
    finally:
        engine.dispose()


def send(s: Serve, smtp: SmtpServer, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        body = {"to": ["r@example.org"], "text": f"message {i}", "headers": {"X-Seq": str(i)}}
        r = s.http.post("/api/v1/tenants/home/messages", json=body)
        assert r.status_code == 202, r.text


def test_a_killed_worker_comes_back_and_nothing_is_lost(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start()
    with serve(tmp_path, database_url, workers=2) as s:
        started_workers(s, 2)
        assert "worker-1 | " in s.text() and "worker-2 | " in s.text()
        before = s.workers()
        assert len(before) == 2
        r = s.http.post(
            "/api/v1/tenants/home/email-servers",
            json=smtp.config(
                limits={"max_connections": 2}, timeouts={"connect_s": 30, "command_s": 60}
            ),
        )
        assert r.status_code == 201, r.text

        send(s, smtp, 60)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        send(s, smtp, 60, start=60)
        wait_until(
            lambda: re.search(r"worker-\d \(pid \d+\) ended .*killed by SIGKILL", s.text()),
            20,
            "the supervisor to notice",
        )
        after = wait_until(lambda: len(w := s.workers()) == 2 and w, 30, "a new worker")
        assert victim not in after and len(after & before) == 1
        restarted = re.search(r"worker-(\d) \(pid \d+\) ended", s.text())
        assert restarted is not None
        wait_until(
            lambda: (
                len(re.findall(rf"^worker-{restarted.group(1)} \| .* started$", s.text(), re.M))
                == 2
            ),
            60,
            "the new worker to start",
        )
        send(s, smtp, 30, start=120)

        # Nothing lost: every message is sent, each sequence number arrived (a message the
        # killed worker was sending may have arrived twice: at least once, never lost).
        wait_until(lambda: sent_count(database_url) == 150, 60, "all 150 messages sent")
        seqs = Counter(str(m.message["X-Seq"]) for m in smtp.received)
        assert set(seqs) == {str(i) for i in range(150)}

        # serve's /metrics adds up the counters of its worker processes (serve itself
        # delivered nothing: its own worker takes remote output only). A worker counts a
        # result just after recording it, so the count may trail the database a moment, and
        # the killed worker may not have counted what it recorded last.
        def sent_metric() -> float:
            metrics = s.http.get("/metrics").text
            found = re.search(
                r'^mailgate_delivery_attempts_total\{result="sent"\} (\S+)', metrics, re.M
            )
            return float(found.group(1)) if found else 0.0

        wait_until(lambda: sent_metric() >= 90, 20, "the workers' counts in /metrics")

        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0, s.text()
        text = s.text()
        assert "worker-1 stopped (exit status 0)" in text
        assert "worker-2 stopped (exit status 0)" in text
        assert not any(alive(pid) for pid in after)
        assert "Traceback" not in text


def test_workers_stop_when_serve_is_killed_and_api_only_has_none(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """A serve killed with SIGKILL cannot stop its workers: they notice the end of the pipe
    serve held and stop by themselves, gracefully. MAILGATE_WORKERS=0 starts no process."""
    (tmp_path / "one").mkdir()
    with serve(tmp_path / "one", sqlite_url, workers=1) as s:
        started_workers(s, 1)
        (worker,) = s.workers()
        s.proc.kill()
        s.proc.wait()
        wait_until(lambda: not alive(worker), 30, "the orphaned worker to stop")

    api_only = tmp_path / "api-only"
    api_only.mkdir()
    with serve(api_only, sqlite_url, workers=0) as s:
        time.sleep(1)
        assert s.workers() == set()
        assert "worker-" not in s.text()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
